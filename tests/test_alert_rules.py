"""docker/prometheus/pgqueue-alerts.yaml, checked by Prometheus' own promtool: the file
loads (``promtool check rules``); its unit tests pass (``promtool test rules``: each alert
fires on the series that should fire it and stays silent on the others); an alert whose
expression never fires, or always does, fails those unit tests (so they pin every
alert both ways); and every metric name the rules use is one that a real ``GET /metrics``
of the service, against a real database, answers with.

promtool comes from Debian's ``prometheus`` package (the Makefile installs it when
missing); without it the promtool tests are skipped, saying why, unless
PGQUEUE_TEST_PROMTOOL=require (CI), which makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
import yaml
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.auth import create_key

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "docker" / "prometheus"
RULES = RULES_DIR / "pgqueue-alerts.yaml"
RULE_TESTS = RULES_DIR / "pgqueue-alerts.test.yaml"
REQUIRE_ENV = "PGQUEUE_TEST_PROMTOOL"  # "require": what a skip would be fails the test
# An expression that never yields a sample, and one that always does.
NEVER = "vector(1) < 0"
ALWAYS = "vector(1)"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "no promtool on PATH (Debian: apt-get install prometheus)"
        if os.environ.get(REQUIRE_ENV) == "require":
            pytest.fail(f"{reason} (and {REQUIRE_ENV}=require)")
        pytest.skip(reason)
    return path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def alerts() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def metric_names() -> set[str]:
    """Every pgqueue metric name the rules' expressions use."""
    return {name for rule in alerts() for name in re.findall(r"\bpgqueue_\w+", rule["expr"])}


def test_promtool_checks_the_rules():
    result = run_promtool("check", "rules", str(RULES), cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_the_alerts_fire_when_they_should_and_only_then():
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested():
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert tested == {rule["alert"] for rule in alerts()}


@pytest.mark.parametrize("alert", [rule["alert"] for rule in alerts()])
@pytest.mark.parametrize("broken", [NEVER, ALWAYS], ids=["never-fires", "always-fires"])
def test_a_broken_expression_fails_the_unit_tests(alert, broken, tmp_path):
    # The same rules with this one alert's expression replaced: the unit tests must
    # notice, both ways (they expect it firing at some time, and silent at another).
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = broken
    (tmp_path / RULES.name).write_text(yaml.safe_dump(document, sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    assert run_promtool("check", "rules", RULES.name, cwd=tmp_path).returncode == 0
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert alert in result.stdout + result.stderr


@pytest.fixture
async def scraped_names(dsn) -> set[str]:
    """The sample names of a real /metrics answer, with jobs of every outcome in the
    database (a family without samples would prove nothing)."""
    key = create_key(dsn, name="prometheus", scope="read")[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO pgqueue.jobs (queue, task, state, attempts, started_at, finished_at)
            VALUES ('mail', 'send', 'succeeded', 1, now() - interval '1 s', now()),
                   ('mail', 'send', 'failed', 2, now() - interval '1 s', now()),
                   ('mail', 'send', 'cancelled', 0, NULL, now())
            """
        )
        conn.execute("INSERT INTO pgqueue.jobs (queue, task) VALUES ('mail', 'send')")
    settings = ServiceSettings(dsn=dsn, metrics_cache_seconds=0.0)
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return {
        sample.name
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


@pytest.mark.parametrize("name", sorted(metric_names()))
async def test_the_rules_use_metrics_that_metrics_exports(name, scraped_names):
    assert "pgqueue_metrics_database_up" in scraped_names  # the scrape itself worked
    assert name in scraped_names, sorted(scraped_names)
