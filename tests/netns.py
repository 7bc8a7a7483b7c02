"""Hosts on one machine, for tests of workers on several hosts: Linux network namespaces.

:class:`Hosts` makes a namespace for the database and one per worker host, each host
joined to the database's namespace by a veth pair of its own (10.213.<k>.1 on the
database's side, 10.213.<k>.2 on host k's; both ends are made inside the namespaces,
so nothing is added to the machine's own network), and removes them all at the end,
by the names it chose. :meth:`Hosts.cut` takes a host's link down (on the database's
side: the host's packets are dropped without a word, as in a real partition) and
:meth:`Hosts.restore` brings it back. :class:`NamespacedCluster` is a throwaway
PostgreSQL (:class:`pgcluster.Cluster`) run inside the database's namespace, listening
on its side of every link; the test process itself reaches it through its unix socket,
a file, which knows no network namespace.

Needs root and ``ip netns``; :func:`unavailable` says why not, for a skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from typing import TYPE_CHECKING, Self
from urllib.parse import quote

from pgcluster import Cluster, ClusterError

if TYPE_CHECKING:
    from pathlib import Path

# Private addresses, used only inside the namespaces made here.
SUBNET = "10.213.{k}.{end}"
PORT = 5432  # the database's namespace is its own: its 5432 is free


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (a skip's reason), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"pgq-probe-{uuid.uuid4().hex[:8]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Hosts:
    """A database namespace and ``count`` host namespaces, each linked to it."""

    def __init__(self, count: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.db = f"pgq-{tag}-db"
        self.hosts = [f"pgq-{tag}-h{k}" for k in range(1, count + 1)]
        self._made: list[str] = []
        try:
            for name in (self.db, *self.hosts):
                _ip("netns", "add", name)
                self._made.append(name)
                _ip("-n", name, "link", "set", "lo", "up")
            for k, host in enumerate(self.hosts, start=1):
                # Both ends made in place: "h<k>" in the database's namespace, "db" in
                # the host's.
                _ip(
                    "-n", self.db, "link", "add", f"h{k}", "type", "veth",
                    "peer", "name", "db", "netns", host,
                )  # fmt: skip
                _ip("-n", self.db, "addr", "add", f"{self.db_address(k)}/24", "dev", f"h{k}")
                _ip("-n", host, "addr", "add", f"{self.host_address(k)}/24", "dev", "db")
                _ip("-n", self.db, "link", "set", f"h{k}", "up")
                _ip("-n", host, "link", "set", "db", "up")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def db_address(k: int) -> str:
        """The database's address on host ``k``'s link (hosts count from 1)."""
        return SUBNET.format(k=k, end=1)

    @staticmethod
    def host_address(k: int) -> str:
        return SUBNET.format(k=k, end=2)

    def listen_addresses(self) -> str:
        return ",".join(self.db_address(k) for k in range(1, len(self.hosts) + 1))

    def prefix(self, k: int) -> list[str]:
        """A command prefix that runs the rest on host ``k``: in its network namespace,
        with a host name of its own (``h<k>``, in a UTS namespace), the rest exec'd so
        that its pid is the one started."""
        return [
            "ip", "netns", "exec", self.hosts[k - 1],
            "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', f"h{k}",
        ]  # fmt: skip

    def cut(self, k: int) -> None:
        """Host ``k``'s link down, on the database's side: both directions drop."""
        _ip("-n", self.db, "link", "set", f"h{k}", "down")

    def restore(self, k: int) -> None:
        _ip("-n", self.db, "link", "set", f"h{k}", "up")

    def close(self) -> None:
        """Delete the namespaces made here (their veth ends go with them)."""
        for name in reversed(self._made):
            _ip("netns", "del", name, check=False)
        self._made.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NamespacedCluster(Cluster):
    """A :class:`Cluster` whose server runs in network namespace ``netns``, listening
    on ``listen`` (comma-separated addresses of that namespace) at :data:`PORT` and on
    its unix socket, which :meth:`dsn` gives."""

    def __init__(self, bin_dir: Path, *, netns: str, listen: str, **kwargs: object) -> None:
        self.netns = netns
        self.listen = listen
        super().__init__(bin_dir, port=PORT, **kwargs)  # type: ignore[arg-type]
        # initdb trusts local connections only; the hosts' come from their links.
        with (self.data_dir / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 10.213.0.0/16 trust\n")

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        # Entering a namespace takes root: enter it as root, then become the
        # unprivileged user that Cluster runs the tools as.
        command = [str(self.bin_dir / tool), *args]
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            command = [
                "setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                "--init-groups", "--", *command,
            ]  # fmt: skip
        try:
            subprocess.run(
                ["ip", "netns", "exec", self.netns, *command],
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

    def start(self) -> None:
        options = [f"-k {self.root}", f"-p {PORT}", f"-h {self.listen}"]
        options += [f"-c {name}={value}" for name, value in self._settings.items()]
        self.pg_ctl("-l", str(self.log), "-o", " ".join(options), "start")

    def dsn(self, database: str = "postgres") -> str:
        host = quote(str(self.root), safe="/")
        return f"postgresql://postgres@/{quote(database, safe='')}?host={host}&port={PORT}"

    def tcp_dsn(self, address: str, database: str = "postgres") -> str:
        """Through TCP to ``address``, one of the server's addresses in its namespace."""
        return f"postgresql://postgres@{address}:{PORT}/{quote(database, safe='')}"
