"""A PostgreSQL primary and its streaming standby, for the failover tests: two
throwaway clusters (tests/pgcluster.py) on loopback ports, the standby made by
``pg_basebackup -R`` through a replication slot, synchronous or not; a multi-host DSN
with ``target_session_attrs=read-write`` that reaches whichever of them is the primary;
and the failover itself (the primary stopped at once, the standby promoted).

Only the postmasters these clusters started are ever signalled, by the pid in their own
data directories, and the one walsender of the primary, by the pid the primary reports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
import pytest
from pgcluster import (
    Cluster,
    ClusterError,
    _pid_alive,
    binary_major,
    find_bin_dir,
    free_port,
)

from pgqueue.embedded import bundled_bin_dir

if TYPE_CHECKING:
    from pathlib import Path

STANDBY_NAME = "replica1"


def standby_bin_dir(server_kind: str, server_version_num: int) -> Path:
    """The binaries of the session server's major, with pg_basebackup (a standby of that
    server's data needs its own major); the test is skipped, saying why, without them."""
    major = server_version_num // 10000
    found: Path | None
    if server_kind != "external" or major == binary_major(bundled_bin_dir()):
        found = bundled_bin_dir()
    else:
        found = find_bin_dir(major)
    if found is None:
        pytest.skip(
            f"the session server is PostgreSQL {major}, and no PostgreSQL {major} binaries"
            f" (initdb, pg_ctl, postgres) were found in /usr/lib/postgresql/{major}/bin"
            " nor at pg_config's --bindir: install that major's server package"
        )
    if not (found / "pg_basebackup").is_file():
        pytest.skip(f"no pg_basebackup in {found}: a standby cannot be made")
    return found


@dataclass
class FailoverTimes:
    """Seconds each step of a failover took, and when the primary was stopped."""

    stopped_at: float = 0.0  # time.time() when the primary was told to stop
    stop: float = 0.0
    promote: float = 0.0


class ReplicatedPair:
    """A primary and a streaming standby of it, both from the binaries in ``bin_dir``.

    ``synchronous``: the primary's commits wait for the standby
    (``synchronous_standby_names`` names it, ``synchronous_commit`` stays ``on``);
    otherwise they return before the standby has the WAL.
    """

    def __init__(self, bin_dir: Path, *, synchronous: bool, database: str) -> None:
        self.synchronous = synchronous
        self.database = database
        self.primary = Cluster(
            bin_dir,
            port=free_port(),
            prefix="pgqueue-test-primary-",
            settings={
                "wal_level": "replica",
                "max_wal_senders": "4",
                "max_replication_slots": "4",
                "synchronous_commit": "on",
            },
        )
        self.replica: Cluster | None = None
        try:
            self.primary.start()
            with psycopg.connect(self.primary.dsn(), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {database}")
            # cluster_name is the walreceiver's application_name, the name
            # synchronous_standby_names refers to.
            self.replica = Cluster(
                bin_dir,
                port=free_port(),
                prefix="pgqueue-test-replica-",
                standby_of=self.primary,
                slot=STANDBY_NAME,
                settings={"hot_standby": "on", "cluster_name": STANDBY_NAME},
            )
            self.replica.start()
            if synchronous:
                # Only now: until the standby is there, every commit would wait for it.
                with psycopg.connect(self.primary.dsn(), autocommit=True) as conn:
                    conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
                    conn.execute("SELECT pg_reload_conf()")
            self.wait_streaming()
        except BaseException:
            self.close()
            raise

    @property
    def standby(self) -> Cluster:
        assert self.replica is not None
        return self.replica

    def dsn(self) -> str:
        """The multi-host URL both drivers read: the primary first, then the standby;
        a connection goes to the first that accepts writes."""
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return f"postgresql://postgres@{hosts}/{self.database}?target_session_attrs=read-write"

    def conninfo(self) -> str:
        """The same in libpq's key=value form."""
        return (
            f"host=127.0.0.1,127.0.0.1 port={self.primary.port},{self.standby.port} "
            f"user=postgres dbname={self.database} target_session_attrs=read-write"
        )

    def primary_dsn(self) -> str:
        return self.primary.dsn(self.database)

    def standby_dsn(self) -> str:
        return self.standby.dsn(self.database)

    def _replication(self) -> tuple[int, str, str] | None:
        with psycopg.connect(self.primary.dsn(), connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT pid, state, sync_state FROM pg_stat_replication "
                "WHERE application_name = %s",
                (STANDBY_NAME,),
            ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]), str(row[2]))

    def wait_streaming(self, timeout: float = 60) -> None:
        """Until the standby streams from the primary, as a synchronous standby if the
        pair is synchronous."""
        wanted = "sync" if self.synchronous else "async"
        deadline = time.monotonic() + timeout
        while True:
            row = self._replication()
            if row is not None and row[1] == "streaming" and row[2] == wanted:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"the standby is not streaming ({wanted}): {row}")
            time.sleep(0.05)

    def primary_lsn(self) -> str:
        """Where the primary's WAL ends now."""
        with psycopg.connect(self.primary_dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])

    def _wait_standby(self, sql: str, lsn: str, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.standby_dsn(), autocommit=True) as conn:
            while True:
                row = conn.execute(sql, (lsn,)).fetchone()
                if row is not None and row[0]:
                    return
                if time.monotonic() > deadline:
                    raise ClusterError(f"the standby has not {what} {lsn} within {timeout} s")
                time.sleep(0.02)

    def wait_received(self, lsn: str | None = None, timeout: float = 30) -> None:
        """Until the standby has received the primary's WAL up to ``lsn`` (default:
        all of it now), replayed or not."""
        self._wait_standby(
            "SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn",
            lsn or self.primary_lsn(),
            "received",
            timeout,
        )

    def wait_replayed(self, lsn: str | None = None, timeout: float = 30) -> None:
        """Until the standby has replayed the primary's WAL up to ``lsn`` (default:
        all of it now): what a read there sees is what the primary had then."""
        self._wait_standby(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
            lsn or self.primary_lsn(),
            "replayed",
            timeout,
        )

    def pause_replay(self, timeout: float = 30) -> None:
        """Stop the standby replaying (it goes on receiving): it falls behind, visibly,
        until :meth:`resume_replay`."""
        deadline = time.monotonic() + timeout
        with (
            psycopg.connect(self.standby_dsn(), autocommit=True) as conn,
            psycopg.connect(self.primary_dsn(), autocommit=True) as primary,
        ):
            conn.execute("SELECT pg_wal_replay_pause()")
            # Asked, not yet done, until replay meets its next record: a commit on the
            # primary (an xid and nothing else) gives it one.
            while True:
                row = conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()
                if row is not None and row[0] == "paused":
                    return
                if time.monotonic() > deadline:
                    raise ClusterError(f"the standby's replay did not pause within {timeout} s")
                primary.execute("SELECT txid_current()")
                time.sleep(0.02)

    def resume_replay(self) -> None:
        with psycopg.connect(self.standby_dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")

    def walsender_pid(self) -> int:
        row = self._replication()
        if row is None:
            raise ClusterError("the primary has no walsender for the standby")
        return row[0]

    def fail_over(self, *, lag: float = 0.0) -> FailoverTimes:
        """Stop the primary at once (``-m immediate``, what a crash looks like to
        clients) and promote the standby.

        ``lag`` > 0: for that many seconds before the stop, the primary's walsender is
        paused (SIGSTOP), as a slow link to the standby would be: an asynchronous
        primary goes on committing what the standby never gets; a synchronous one holds
        its commits until then. The paused walsender cannot act on the shutdown signal:
        it is then killed (SIGKILL, by its pid) so that the shutdown completes.
        """
        times = FailoverTimes()
        postmaster = self.primary.postmaster_pid()
        if postmaster is None:
            raise ClusterError("the primary is not running")
        walsender = self.walsender_pid() if lag > 0 else None
        if walsender is not None:
            os.kill(walsender, signal.SIGSTOP)
            time.sleep(lag)  # the fault itself: how long the standby falls behind
        times.stopped_at = time.time()
        began = time.monotonic()
        # What pg_ctl stop -m immediate sends, to the postmaster this pair started.
        os.kill(postmaster, signal.SIGQUIT)
        if walsender is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(walsender, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _pid_alive(postmaster):
            if time.monotonic() > deadline:
                raise ClusterError("the primary did not stop within 30 s")
            time.sleep(0.01)
        times.stop = time.monotonic() - began
        began = time.monotonic()
        self.standby.promote()
        times.promote = time.monotonic() - began
        return times

    def close(self) -> None:
        try:
            if self.replica is not None:
                self.replica.close()
        finally:
            self.primary.close()
