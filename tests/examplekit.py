"""Load the runnable examples of examples/ as modules, for the tests that run them."""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@contextmanager
def loaded_example(filename: str) -> Iterator[ModuleType]:
    """examples/``filename`` imported under its own name for the duration (some
    frameworks look their app up by module), then forgotten."""
    name = Path(filename).stem
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / filename)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


def signups_and_welcome_jobs(dsn: str) -> tuple[int, int]:
    """What the web-framework examples wrote: sign-ups, and the welcome jobs enqueued
    with them in the request's transaction."""
    with psycopg.connect(dsn) as conn:
        users = conn.execute("SELECT count(*) FROM example_signups").fetchone()
        jobs = conn.execute(
            "SELECT count(*) FROM pgqueue.jobs WHERE task = 'examples.send_welcome'"
        ).fetchone()
    assert users is not None
    assert jobs is not None
    return users[0], jobs[0]
