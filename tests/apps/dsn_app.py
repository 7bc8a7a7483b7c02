"""A worker app whose Queue names its own database, from $PGQUEUE_TEST_APP_DSN (unset:
no DSN of its own), and its own embedded data directory, from
$PGQUEUE_TEST_APP_DATA_DIR. Imports only the core install: the bare-wheel tests run it."""

import os
from pathlib import Path

import pgqueue

_data_dir = os.environ.get("PGQUEUE_TEST_APP_DATA_DIR")
queue = pgqueue.Queue(
    os.environ.get("PGQUEUE_TEST_APP_DSN"), data_dir=Path(_data_dir) if _data_dir else None
)


@queue.task(name="dsn_app.add", queue="dsn_app")
async def add(a: int, b: int) -> int:
    return a + b
