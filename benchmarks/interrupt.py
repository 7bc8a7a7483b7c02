"""Long benchmarks (``make soak-scale``, ``make soak-horizon``) stopped by a signal end in
order: SIGINT or SIGTERM ends the measuring, then the benchmark stops its worker
processes and its embedded server and prints what it measured so far.

Without this, a SIGTERM ended the process at once and left its workers and its
PostgreSQL running, and a SIGINT (asyncio's cancellation of the main task) could be
absorbed by a query in flight, so the run went on as if nothing had happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING

from pgqueue.worker.listener import first_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(say: Callable[[str], None] = print) -> Iterator[asyncio.Event]:
    """An event set by the first SIGINT or SIGTERM, for the duration of the block (on
    the running loop); the signals' usual effect comes back after it."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if not stopped.is_set():
            say(f"  {sig.name}: ending the measurement, then stopping the workers")
        stopped.set()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield stopped
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)


async def pause(stopped: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``, or less if ``stopped`` is set meanwhile; whether it is set."""
    await first_of(stopped, timeout=seconds)
    return stopped.is_set()
