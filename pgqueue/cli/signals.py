"""SIGTERM and SIGINT for the ``pgqueue`` command until an event loop takes them over:
a signal stops any command within moments, whatever it is waiting for."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")


class Interrupted(BaseException):
    """SIGTERM/SIGINT: stop the command. A BaseException, as KeyboardInterrupt, so that
    no ``except Exception`` on its way up takes it for a failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


class Signals:
    """SIGTERM/SIGINT until an event loop (the worker's, uvicorn's) takes them over.

    A signal is noted. While the main thread waits in :meth:`call` it is raised there
    as :class:`Interrupted` at once; elsewhere it is raised by the next :meth:`check`
    or :meth:`call`. Raised from the handler only during that wait: an exception raised
    from a signal handler surfaces inside whatever library call was running (SQLAlchemy
    wraps it), the wait is ours."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._waiting = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._note)

    def _note(self, signum: int, _frame: object) -> None:
        self.signum = signum
        if self._waiting:
            self._waiting = False
            raise Interrupted(signum)

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a daemon thread, the main thread waiting for it:
        a signal ends the wait at once, whatever ``fn`` is blocked in (a server that
        never answers). The thread dies with the process; a transaction it had open is
        rolled back by the server when its connection goes."""
        self.check()
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the main thread
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name="pgqueue-cli", daemon=True).start()
        self._waiting = True
        try:
            done.wait()
        finally:
            self._waiting = False
        if "error" in outcome:
            raise outcome["error"]
        value: T = outcome["value"]
        return value
