"""The README's runnable examples run: examples/from_celery.py (the "Coming from Celery"
table, each row against a real database and a real worker)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def test_every_row_of_the_celery_guide_does_what_it_says(dsn):
    spec = importlib.util.spec_from_file_location("from_celery", EXAMPLES / "from_celery.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["from_celery"] = module
    try:
        spec.loader.exec_module(module)
        done = await module.main(dsn)  # raises when a row did not do what it says
    finally:
        sys.modules.pop("from_celery", None)
    assert done["canvas"] == (10, 6)
    assert done["revoke"] == "cancelled"
