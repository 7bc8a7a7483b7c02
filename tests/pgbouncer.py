"""A real PgBouncer for tests: installed from Debian's packages when missing, started
with a config of its own in a temporary directory on a free loopback port, in front of
the test server, and stopped by its pid. A pgbouncer service already running on the
machine is never used or touched; the service an install made here enables is stopped
and disabled."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict

# Where Debian puts the binary (not on a non-root PATH).
_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
# pgbouncer refuses to run as root: it switches to one of these.
_UNPRIVILEGED_USERS = ("postgres", "nobody")


class PgBouncerUnavailableError(Exception):
    """pgbouncer is not installed and cannot be: the message says why."""


def find_binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((c for c in _CANDIDATES if os.access(c, os.X_OK)), None)


def ensure_installed() -> str:
    """The path of a pgbouncer binary, installing Debian's package (as
    scripts/run_tests.py installs a second PostgreSQL major) when there is none."""
    found = find_binary()
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise PgBouncerUnavailableError("pgbouncer is not installed and apt-get is not available")
    if os.geteuid() == 0:
        sudo: list[str] = []
    elif shutil.which("sudo") is not None:
        sudo = ["sudo", "-n"]
    else:
        raise PgBouncerUnavailableError("pgbouncer is not installed; not root, and no sudo")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    update = subprocess.run(
        [*sudo, "apt-get", "update", "-qq"], env=env, capture_output=True, check=False
    )
    if update.returncode != 0:
        raise PgBouncerUnavailableError(f"apt-get update failed (exit {update.returncode})")
    install = subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "pgbouncer"],
        env=env,
        capture_output=True,
        check=False,
    )
    if install.returncode != 0:
        raise PgBouncerUnavailableError(
            f"apt-get install pgbouncer failed (exit {install.returncode})"
        )
    _stop_packaged_service(sudo)
    found = find_binary()
    if found is None:
        raise PgBouncerUnavailableError("apt-get installed pgbouncer but no binary was found")
    return found


def _stop_packaged_service(sudo: list[str]) -> None:
    # The package enables a system service (and starts it where an init system runs and
    # no policy-rc.d refuses): stop and disable it, tests start their own pgbouncers.
    if shutil.which("systemctl"):
        running = Path("/run/systemd/system").is_dir()
        subprocess.run(
            [*sudo, "systemctl", "disable", *(["--now"] if running else []), "pgbouncer"],
            capture_output=True,
            check=False,
        )
    if Path("/etc/init.d/pgbouncer").exists():
        subprocess.run([*sudo, "/etc/init.d/pgbouncer", "stop"], capture_output=True, check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgBouncer:
    """One pgbouncer process in front of the server ``admin_dsn`` points at, in
    ``pool_mode`` with ``pool_size`` server connections per database and user."""

    def __init__(
        self,
        binary: str,
        admin_dsn: str,
        *,
        pool_mode: str = "transaction",
        pool_size: int = 4,
        extra: dict[str, str] | None = None,
    ) -> None:
        params = conninfo_to_dict(admin_dsn)
        self.user = str(params.get("user") or "postgres")
        self.password = str(params.get("password") or "")
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pgqueue-test-pgbouncer-"))
        host = str(params.get("host") or "127.0.0.1")
        server = f"host={host} port={params.get('port') or 5432}"
        if self.password:
            server += f" password={self.password}"
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.dir / "users.txt"),
            "pool_mode": pool_mode,
            "default_pool_size": str(pool_size),
            "min_pool_size": "0",
            "reserve_pool_size": "0",
            "max_client_conn": "500",
            # None: pgqueue's connections (psycopg/libpq, asyncpg, SQLAlchemy on psycopg)
            # send no startup parameter pgbouncer 1.18 refuses, so the tests run on
            # pgbouncer's default, as README's "Behind PgBouncer" says.
            "ignore_startup_parameters": "",
            "admin_users": self.user,
            "server_login_retry": "1",
            "logfile": "",
            "pidfile": "",
            **(extra or {}),
        }
        if os.geteuid() == 0:
            settings["user"] = _unprivileged_user(host)
        lines = ["[databases]", f"* = {server}", "", "[pgbouncer]"]
        lines += [f"{k} = {v}" for k, v in settings.items()]
        (self.dir / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        (self.dir / "users.txt").write_text(
            f"{_quote_ini_user(self.user)} {_quote_ini_user(self.password)}\n"
        )
        self.dir.chmod(0o755)
        for f in self.dir.iterdir():
            f.chmod(0o644)
        self.log_path = self.dir / "pgbouncer.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [binary, str(self.dir / "pgbouncer.ini")],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_listening(timeout=15)
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PgBouncerUnavailableError(
                    f"pgbouncer exited ({self.proc.returncode}): {self.log()[-2000:]}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.05)
        raise PgBouncerUnavailableError(
            f"pgbouncer did not listen within {timeout} s: {self.log()}"
        )

    def dsn_for(self, dbname: str) -> str:
        """A DSN to ``dbname`` through this pgbouncer."""
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGINT (a safe shutdown), then SIGKILL if it lingers; by pid."""
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _quote_ini_user(value: str) -> str:
    # auth_file: "name" "password", a double quote doubled.
    return '"' + value.replace('"', '""') + '"'


def _unprivileged_user(host: str) -> str:
    """Who pgbouncer runs as: behind a unix socket (the embedded server's, in its data
    directory, 0700), the directory's owner, who alone may reach it."""
    if host.startswith("/"):
        owner = Path(host).stat().st_uid
        if owner != 0:
            return pwd.getpwuid(owner).pw_name
    for name in _UNPRIVILEGED_USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PgBouncerUnavailableError(
        f"running as root (pgbouncer refuses) and none of the users {_UNPRIVILEGED_USERS} exists"
    )
