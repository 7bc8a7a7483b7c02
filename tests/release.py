"""The last release of pgqueue, which the rolling-deploy test runs against the current
schema (tests/test_rolling_deploy.py). When releasing: put the release's wheel in
tests/releases/ (``pip wheel --no-deps`` of the release commit) and update every name
here together."""

from __future__ import annotations

from pathlib import Path

VERSION = "0.1.0"
# The commit the release was cut from.
COMMIT = "cfa24bec4f663b57bab13d8fe8c62f7ed2de5d1f"
# The newest migration that release ships: a database it migrates ends there.
MIGRATION_HEAD = "0018"
# The release's wheel, as shipped (its code and its migration chain, inside the package),
# and its SHA-256, so that the file the test runs is the one released.
WHEEL = Path(__file__).resolve().parent / "releases" / f"pgqueue_jobs-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "7b5c6bd9e64710a7a513356670ff5a0c555278d914372a339799c7e78f01f9ff"
