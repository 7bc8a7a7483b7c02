"""One benchmark case run on its own (``python -m benchmarks.flow``,
``python -m benchmarks.workflows``): a scratch database, the case, its figures."""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from benchmarks.run import Bench


async def _run(
    dsn: str, quick: bool, log_dir: Path, case: Callable[[Bench], Awaitable[None]]
) -> None:
    from rich.console import Console  # noqa: PLC0415

    from benchmarks.report import summary_table  # noqa: PLC0415
    from benchmarks.run import FULL, QUICK, Bench  # noqa: PLC0415

    bench = Bench(dsn, QUICK if quick else FULL, log_dir)
    await bench.open()
    try:
        await case(bench)
    finally:
        await bench.close()
    Console(width=160).print(summary_table(bench.figures))
    for text in bench.notes:
        print(f"note: {text}")


def run_alone(
    description: str, case: Callable[[Bench], Awaitable[None]], argv: list[str] | None = None
) -> int:
    """Parse ``--dsn``/``--quick``, run ``case`` on a scratch database, print its figures."""
    from benchmarks.database import scratch_database  # noqa: PLC0415
    from pgqueue.embedded import DSN_ENV  # noqa: PLC0415
    from pgqueue.logs import configure_logging  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dsn", help="a server to run on (a scratch database is made there)")
    parser.add_argument("--quick", action="store_true", help="fewer jobs")
    args = parser.parse_args(argv)
    configure_logging("warning")
    started = time.perf_counter()
    with (
        scratch_database(args.dsn) as (dsn, _where),
        tempfile.TemporaryDirectory(prefix="pgqbench-logs-") as log_dir,
    ):
        os.environ[DSN_ENV] = dsn
        asyncio.run(_run(dsn, args.quick, Path(log_dir), case))
    print(f"the run took {time.perf_counter() - started:.0f} s")
    return 0
