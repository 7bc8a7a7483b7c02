"""The README's runnable examples run: examples/from_celery.py (the "Coming from Celery"
table, each row against a real database and a real worker)."""

from __future__ import annotations

from examplekit import loaded_example


async def test_every_row_of_the_celery_guide_does_what_it_says(dsn):
    with loaded_example("from_celery.py") as module:
        done = await module.main(dsn)  # raises when a row did not do what it says
    assert done["canvas"] == (10, 6)
    assert done["revoke"] == "cancelled"
