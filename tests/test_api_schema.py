"""The API against its own OpenAPI description, by schemathesis: generated requests to
every operation, through the ASGI app on a real PostgreSQL. No answer may be a 5xx, and
every answer must be one the description documents (status, content type, body schema:
errors as problem+json). Bounded for CI: a fixed number of examples per operation,
derandomized so that a run is the same every time."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import allow_header_conformance, positive_data_acceptance
from schemathesis.python import asgi

from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.auth import create_key

EXAMPLES = 50

# The description does not depend on the database: read it from an app that is never
# started. (schemathesis.pytest.from_fixture, which would load it from a started app,
# fails on pytest 9: it sets a node attribute that no longer exists.)
_DESCRIPTION = create_app(ServiceSettings(dsn="postgresql://unused")).openapi_schema.to_schema()
schema = schemathesis.openapi.from_dict(_DESCRIPTION)


@pytest.fixture
def admin_key(dsn):
    return create_key(dsn, name="schemathesis", scope="admin")[1]


@pytest.fixture
def app(dsn):
    # A short ?wait= limit: a generated wait must not hold a request for a minute.
    application = create_app(ServiceSettings(dsn=dsn, max_wait_seconds=0.2, key_cache_seconds=60))
    try:
        yield application
    finally:
        # schemathesis starts the app's lifespan on its first request and keeps it
        # running: stop it (closing its pool) before the test's database is dropped.
        asgi.shutdown_lifespans()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_answer_is_documented_and_none_is_a_server_error(case, app, admin_key):
    # This test's app (its own database), for the call and for the probes that some
    # checks send by themselves (the same request without its key must be refused).
    case.operation.app = case.operation.schema.app = app
    case.call_and_validate(
        headers={"Authorization": f"Bearer {admin_key}"},
        # The description gives types, not every rule: names, ranges and job ids that
        # decode but break a rule are a documented 422, not a failure to accept.
        # Litestar (2.25) answers OPTIONS /v1/jobs with "Allow: OPTIONS, POST", leaving
        # out GET: the automatic OPTIONS handler of a path whose methods were registered
        # one by one keeps the methods of the first registration.
        excluded_checks=[positive_data_acceptance, allow_header_conformance],
    )
