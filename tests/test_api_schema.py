"""The API against its own OpenAPI description, by schemathesis: the `schemathesis run`
command, every check on, against the app served by a real uvicorn on a real PostgreSQL
with an admin key. No answer may be a 5xx or undocumented; a request the description
allows must be accepted, one it forbids refused (so the description is exactly as strict
as the server). Bounded for CI: a fixed number of examples per operation and a fixed
seed, so that a run is the same every time; `make fuzz` is the long run."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from litestar.testing import AsyncTestClient
from servekit import serving

from pgqueue.limits import JOB_ID_MAX, MAX_SECONDS, QUEUE_NAME_RE, TASK_NAME_RE
from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.auth import create_key

EXAMPLES = 25
SEED = 7
RUN_TIMEOUT_S = 150
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFIG = Path(__file__).resolve().parent.parent / "scripts" / "schemathesis.toml"


async def test_schemathesis_finds_no_failure_in_any_check(dsn, tmp_path):
    key = create_key(dsn, name="schemathesis", scope="admin")[1]
    # A short ?wait= limit (the description says so): a generated wait must not hold a
    # request for a minute.
    settings = ServiceSettings(dsn=dsn, max_wait_seconds=0.2, key_cache_seconds=60)
    async with serving(create_app(settings)) as url:
        process = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS),
            f"--config-file={CONFIG}",
            "run",
            f"{url}/schema/openapi.json",
            "--checks=all",
            f"--max-examples={EXAMPLES}",
            f"--seed={SEED}",
            "--header",
            f"Authorization: Bearer {key}",
            "--request-timeout=10",
            "--suppress-health-check=all",
            "--workers=1",
            cwd=tmp_path,  # where it keeps its state (.hypothesis): removed with it
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-30_000:]
    assert "No issues found" in text or only_expected_warnings(text), text[-5_000:]


# A low rate of accepted requests is excused only where the refusals are answers about
# state a generated request cannot set up: 409 (a retry needs a failed job; the jobs a
# run creates are queued) and 404 (a limit's key, a schedule: names nothing created).
# How low the rate falls depends on the seed and on every other operation's share of the
# run; schemathesis's per-operation warning settings do not reach this warning (4.32). A
# refusal by validation (a 4xx the description should have prevented) is never excused.
EXCUSED_REFUSALS = frozenset({"conflicts", "not found"})
REFUSALS = re.compile(r"\((\d+)/(\d+), ([^)]*)\)\s*$")


def only_expected_warnings(text: str) -> bool:
    """Whether the run's only warnings are low valid-input rates whose refusals were all
    EXCUSED_REFUSALS."""
    if "WARNINGS" not in text:
        return False
    section = text.split("WARNINGS", 1)[1].split("SUMMARY", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip()]
    items = [line for line in lines if line.startswith("- ")]
    headings = [
        line for line in lines if not line.startswith(("- ", "\N{ELECTRIC LIGHT BULB}", "="))
    ]

    def excused(item: str) -> bool:
        found = REFUSALS.search(item)
        if found is None:
            return False
        kinds = {part.strip().split(" ", 1)[1] for part in found.group(3).split(",")}
        return kinds <= EXCUSED_REFUSALS

    return (
        bool(items)
        and all(h.startswith("Low valid-input rate") for h in headings)
        and all(excused(item) for item in items)
    )


def test_the_description_states_the_servers_rules():
    """The rules come from pgqueue's constants and this server's settings."""
    settings = ServiceSettings(
        dsn="postgresql://unused", max_wait_seconds=7, max_page_size=30, max_batch_jobs=9
    )
    described = create_app(settings).openapi_schema.to_schema()
    schemas, paths = described["components"]["schemas"], described["paths"]
    job_in = schemas["JobIn"]
    assert job_in["additionalProperties"] is False
    assert job_in["properties"]["queue"]["pattern"] == f"^{QUEUE_NAME_RE.pattern}$"
    assert job_in["properties"]["task"]["pattern"] == f"^{TASK_NAME_RE.pattern}$"
    assert job_in["properties"]["delay_seconds"]["maximum"] == MAX_SECONDS
    assert schemas["BatchIn"]["properties"]["jobs"]["maxItems"] == 9

    def parameter(path: str, method: str, name: str) -> dict:
        return next(p for p in paths[path][method]["parameters"] if p["name"] == name)["schema"]

    for path, method in [
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}/cancel", "post"),
        ("/v1/jobs/{job_id}/retry", "post"),
    ]:
        assert parameter(path, method, "job_id") == {
            "type": "integer",
            "minimum": 1,
            "maximum": JOB_ID_MAX,
            "description": "the job's id",
        }
    assert parameter("/v1/jobs", "get", "cursor")["maximum"] == JOB_ID_MAX
    assert parameter("/v1/jobs", "get", "limit")["maximum"] == 30
    assert parameter("/v1/jobs/{job_id}", "get", "wait")["maximum"] == 7


async def test_options_lists_every_method_the_description_gives(dsn):
    key = create_key(dsn, name="options", scope="read")[1]
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn))) as client:
        described = (await client.get("/schema/openapi.json")).json()["paths"]
        for path in ("/v1/jobs", "/v1/jobs/1", "/v1/jobs/batch", "/v1/queues"):
            response = await client.options(path, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 204, response.text
            allowed = {m.strip().lower() for m in response.headers["allow"].split(",")}
            template = path.replace("/1", "/{job_id}")
            assert allowed - {"options"} == set(described[template]), path


def test_only_refusals_about_state_excuse_a_low_valid_rate():
    def run(item: str, heading: str = "Low valid-input rate: 1 operation accepted few") -> str:
        return (
            "=== WARNINGS ===\n\n"
            f"{heading}\n\n  {item}\n\n"
            "\N{ELECTRIC LIGHT BULB} Most requests collided with existing resources\n\n"
            "=== SUMMARY ===\n"
        )

    retry = "- POST /v1/jobs/{job_id}/retry (fuzzing): 9% accepted (2/22, 18 conflicts)"
    assert only_expected_warnings(run(retry))
    key = "- DELETE /v1/limits/{queue}/keys/{key} (fuzzing): 8% accepted (1/12, 11 not found)"
    assert only_expected_warnings(run(key))
    both = "- POST /v1/x (fuzzing): 8% accepted (1/12, 6 conflicts, 5 not found)"
    assert only_expected_warnings(run(both))
    invalid = "- POST /v1/jobs (fuzzing): 9% accepted (2/22, 20 invalid)"
    assert not only_expected_warnings(run(invalid))
    mixed = "- POST /v1/jobs (fuzzing): 9% accepted (2/22, 10 conflicts, 10 invalid)"
    assert not only_expected_warnings(run(mixed))
    assert not only_expected_warnings(run(retry, heading="Schema validation mismatch: 1 op"))
    assert not only_expected_warnings("No warnings here")
