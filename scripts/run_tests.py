"""The test command behind `make test`: the suite on the embedded PostgreSQL, then again
on a second server of another major version, so that two majors are always covered.

The second server: $PGQUEUE_TEST_DSN, else the local server at 127.0.0.1:5432, when it
answers and its major differs from the embedded one. Otherwise this script starts one
itself: a throwaway cluster from installed PostgreSQL binaries of another major
(Debian's /usr/lib/postgresql/<major>/bin; installed with apt-get when none are there
and apt-get may be used), in a temporary directory, on a free loopback port; stopped
through its own pg_ctl and removed at the end. The machine's own servers are never
touched.

When no second major can be had, the run fails under CI=true (`.ci/run` sets it) and,
elsewhere, warns and tests the embedded server only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from pgcluster import (  # noqa: E402 - from tests/, on the path just above
    Cluster,
    ClusterError,
    binary_major,
    find_bin_dir,
    free_port,
    installed_majors,
)

from pgqueue.embedded import bundled_bin_dir  # noqa: E402

if TYPE_CHECKING:
    from types import FrameType

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
# The oldest major pgqueue's SQL is tested on when this script picks one to install.
OLDEST_MAJOR = 13


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def answering(dsn: str) -> tuple[int, str] | None:
    """(server_version_num, server_version) when the server answers within seconds."""
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            # "15.20 (Debian 15.20-0+deb12u1)": the number is enough for a label.
            version = str(conn.info.parameter_status("server_version")).split()[0]
            return conn.info.server_version, version
    except psycopg.Error:
        return None


def where(dsn: str) -> str:
    return dsn.rsplit("@", 1)[-1]


# --- getting binaries of another major ---------------------------------------------------


def apt_install_another_major(avoid: int) -> str | None:
    """Install Debian's PostgreSQL server of a major other than ``avoid``; None when
    done, else why not."""
    apt_cache = shutil.which("apt-cache")
    if shutil.which("apt-get") is None or apt_cache is None:
        return "apt-get is not available"
    if os.geteuid() == 0:
        sudo: list[str] = []
    elif shutil.which("sudo") is not None:
        sudo = ["sudo", "-n"]
    else:
        return "not root, and no sudo"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing PostgreSQL server binaries with apt-get", flush=True)
    update = subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=False)
    if update.returncode != 0:
        return f"apt-get update failed (exit {update.returncode})"
    # Debian's default major first (what `apt-get install postgresql` would bring);
    # when that is the embedded one, the highest other major on offer.
    depends = subprocess.run(
        [apt_cache, "depends", "postgresql"], capture_output=True, text=True, check=False
    ).stdout
    offered = subprocess.run(
        [apt_cache, "search", "--names-only", r"^postgresql-[0-9]+$"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    default = [int(m) for m in re.findall(r"Depends: postgresql-(\d+)\b", depends)]
    others = sorted(
        (int(m) for m in re.findall(r"^postgresql-(\d+) ", offered, flags=re.MULTILINE)),
        reverse=True,
    )
    choices = [m for m in [*default, *others] if m != avoid and m >= OLDEST_MAJOR]
    if not choices:
        return f"apt offers no PostgreSQL server of a major other than {avoid}"
    package = f"postgresql-{choices[0]}"
    install = subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        env=env,
        stdout=subprocess.DEVNULL,
        check=False,
    )
    if install.returncode != 0:
        return f"apt-get install {package} failed (exit {install.returncode})"
    return None


def start_second_server(avoid: int) -> tuple[Cluster | None, str]:
    """A throwaway cluster of a major other than ``avoid``, started; else None and why."""
    majors = [m for m in installed_majors() if m != avoid]
    if not majors:
        why_not = apt_install_another_major(avoid)
        if why_not is not None:
            return None, f"no PostgreSQL binaries of a major other than {avoid}: {why_not}"
        majors = [m for m in installed_majors() if m != avoid]
    bin_dir = next((b for b in map(find_bin_dir, majors) if b is not None), None)
    if bin_dir is None:
        return None, f"no usable PostgreSQL binaries of a major other than {avoid} found"
    # Same shortcuts as the embedded session server: nothing here needs durability.
    settings = {"synchronous_commit": "off", "full_page_writes": "off"}
    error: ClusterError | None = None
    for _ in range(3):  # the free port may be taken before the server binds it
        cluster = Cluster(bin_dir, port=free_port(), prefix="pgqueue-second-pg-", settings=settings)
        try:
            cluster.start()
        except ClusterError as exc:
            cluster.close()
            error = exc
            continue
        except BaseException:  # stopped while starting: leave nothing behind
            cluster.close()
            raise
        return cluster, f"throwaway, from {bin_dir}"
    return None, f"the throwaway server from {bin_dir} did not start: {error}"


# --- running -----------------------------------------------------------------------------


def run_suite(label: str, env: dict[str, str], extra: list[str], basetemp: Path) -> int:
    print(f"\n=== test suite on {label} ===", flush=True)
    if not any(arg.startswith("--basetemp") for arg in extra):
        # pytest otherwise keeps its last three temporary trees in /tmp.
        extra = [f"--basetemp={basetemp}", *extra]
    child = subprocess.Popen([sys.executable, "-m", "pytest", *extra], env=env)
    try:
        return child.wait()
    except BaseException as exc:
        # Stopped: let pytest tear its fixtures down (its servers, its temporary
        # directories) before this script removes the second server. A Ctrl-C reached
        # pytest too; a SIGTERM is passed on.
        if child.poll() is None and not isinstance(exc, KeyboardInterrupt):
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Unwind through the finally blocks: the throwaway server and directories go.
    raise SystemExit(128 + signum)


def second_server(embedded: int) -> tuple[str, str, Cluster | None] | str:
    """(DSN, label, the cluster started for it if any) of a server of another major than
    ``embedded``; else why there is none."""
    dsn = os.environ.get("PGQUEUE_TEST_DSN") or LOCAL_SERVER
    found = answering(dsn)
    if found is not None and found[0] // 10000 != embedded:
        return dsn, f"PostgreSQL {found[1]} ({where(dsn)})", None
    if found is None:
        print(f"no second server answers at {where(dsn)}", flush=True)
    else:
        print(f"{where(dsn)} runs PostgreSQL {found[1]}, the embedded major", flush=True)
    cluster, how = start_second_server(avoid=embedded)
    if cluster is None:
        return how
    dsn = cluster.dsn()
    found = answering(dsn)
    label = f"PostgreSQL {found[1] if found else '?'} ({how}, {where(dsn)})"
    print(f"started {label}", flush=True)
    return dsn, label, cluster


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    extra = sys.argv[1:]
    base_env = {k: v for k, v in os.environ.items() if k != "PGQUEUE_TEST_DSN"}
    embedded = binary_major(bundled_bin_dir())
    if embedded is None:
        print("the bundled PostgreSQL binaries do not run", file=sys.stderr)
        return 2
    # The second server is settled first: under CI, not having one fails at once.
    second = second_server(embedded)
    if isinstance(second, str):
        if in_ci():
            print(
                f"\nFAILED: CI needs a second PostgreSQL major and none could be had: {second}."
                "\nSet PGQUEUE_TEST_DSN to a server of another major, or install Debian's"
                " postgresql package.",
                file=sys.stderr,
                flush=True,
            )
            return 2
        print(f"\nWARNING: {second}; testing the embedded server only", flush=True)
    cluster = None if isinstance(second, str) else second[2]
    work = Path(tempfile.mkdtemp(prefix="pgqueue-run-tests-"))
    results: dict[str, int] = {}
    try:
        results[f"embedded PostgreSQL {embedded}"] = run_suite(
            "embedded PostgreSQL", base_env, extra, work / "embedded"
        )
        if not isinstance(second, str):
            dsn, label, _ = second
            env = {**base_env, "PGQUEUE_TEST_DSN": dsn}
            results[label] = run_suite(label, env, extra, work / "second")
    finally:
        if cluster is not None:
            cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    print("\n=== summary ===")
    for label, code in results.items():
        print(f"{label}: {'passed' if code == 0 else f'FAILED (exit {code})'}")
    if isinstance(second, str):
        print("second PostgreSQL major: not tested")
    return max(results.values())


if __name__ == "__main__":
    raise SystemExit(main())
