"""The last release of pgqueue, which the rolling-deploy test runs against the current
schema (tests/test_rolling_deploy.py). Update all three together when releasing."""

from __future__ import annotations

VERSION = "0.1.0"
# The commit the release was cut from (git archive extracts its code from the checkout).
COMMIT = "cfa24bec4f663b57bab13d8fe8c62f7ed2de5d1f"
# The newest migration that release ships: a database it migrates ends there.
MIGRATION_HEAD = "0018"
