"""The sync face is generated from the async one (scripts/async_to_sync.py): a stale
generated file, or a hand edit to it, fails here, so the two faces cannot drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pgqueue import driver, driver_sync

ROOT = Path(__file__).resolve().parent.parent


def test_the_generated_sync_face_is_up_to_date():
    check = subprocess.run(
        [sys.executable, "scripts/async_to_sync.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_async_operation_has_its_sync_twin():
    def operations(module: object, *, coroutine: bool) -> set[str]:
        return {
            name
            for name, value in vars(module).items()
            if callable(value)
            and getattr(value, "__module__", None) == module.__name__  # type: ignore[attr-defined]
            and (value.__code__.co_flags & 0x80 != 0) == coroutine  # CO_COROUTINE
        }

    assert operations(driver, coroutine=True) == operations(driver_sync, coroutine=False) - (
        operations(driver, coroutine=False)
    )
