"""The trixie rootfs runner (tests/trixie.py): Python >= 3.12 with Django 6, importing
pgqueue from this checkout, reaching the session's PostgreSQL (unix socket or TCP), and
stoppable by signal. Run once with PGQUEUE_TEST_DSN (TCP) and once without (the embedded
server's socket under /tmp)."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from trixie import REPO, build, runner

ROOTFS_PYTHON = f"{build.VENV}/bin/python"


def test_runs_python_3_12_with_django_6_and_this_checkout(tmp_path: Path) -> None:
    code = (
        "import json, sys, django, pgqueue\n"
        "print(json.dumps([list(sys.version_info[:2]), django.VERSION[0], pgqueue.__file__]))"
    )
    result = runner().run(["python", "-c", code], cwd=tmp_path, env={}, timeout=120)
    assert result.returncode == 0, result.stderr
    version, django_major, pgqueue_file = json.loads(result.stdout)
    assert tuple(version) >= (3, 12)
    assert django_major == 6
    assert Path(pgqueue_file).is_relative_to(REPO)


def test_reaches_the_test_database(dsn: str, tmp_path: Path) -> None:
    # Written inside, read outside: the very database of this test, not a look-alike.
    token = uuid.uuid4().hex
    code = (
        "import sys, psycopg\n"
        "with psycopg.connect(sys.argv[1]) as conn:\n"
        "    conn.execute('CREATE TABLE trixie_probe (token text)')\n"
        "    conn.execute('INSERT INTO trixie_probe VALUES (%s)', [sys.argv[2]])\n"
        "    print(conn.execute('SELECT version_num FROM pgqueue.alembic_version').fetchone()[0])"
    )
    result = runner().run(["python", "-c", code, dsn, token], cwd=tmp_path, env={}, timeout=120)
    assert result.returncode == 0, result.stderr
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT token FROM trixie_probe").fetchall() == [(token,)]
        head = conn.execute("SELECT version_num FROM pgqueue.alembic_version").fetchone()
    assert head is not None
    assert result.stdout.strip() == head[0]


def test_popen_is_the_python_process_and_stops_at_sigterm(tmp_path: Path) -> None:
    code = "import time; print('ready', flush=True); time.sleep(300)"
    proc = runner().popen(
        ["python", "-c", code],
        cwd=tmp_path,
        env={},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"  # EOF ("") if it died instead
        # No shell in between: the pid is the rootfs's Python itself.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:2] == [ROOTFS_PYTHON.encode(), b"-c"]
        # Its mounts live in its own namespace: none is visible (or deletable) out here.
        assert build.mounts_under(build.ROOTFS) == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_timeout_kills_the_command(tmp_path: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        runner().run(
            ["python", "-c", "import time; time.sleep(300)"], cwd=tmp_path, env={}, timeout=3
        )
