"""Run commands under Python 3.13 with Django 6, in a Debian 13 (trixie) rootfs.

Django 6 needs Python >= 3.12 and the test machines have 3.11: scripts/trixie_python.py
builds (once, cached under .cache/trixie/) a trixie rootfs with a venv holding Django 6
and pgqueue's runtime dependencies. A command runs there in a private mount namespace
with this checkout mounted at its own absolute path and on PYTHONPATH (so ``import
pgqueue`` is the code under test), the host's /tmp (the embedded server's socket, temp
directories), /dev and /proc, and the host's network (127.0.0.1 is the host's).

    from trixie import runner

    def test_x(dsn, tmp_path):
        result = runner().run(["python", "-c", "..."], cwd=tmp_path, env={...}, timeout=60)

``runner()`` skips the test (with the build's one-line reason) when the rootfs cannot be
built or used, e.g. without root; PGQUEUE_TEST_TRIXIE=require makes that a failure.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "scripts" / "trixie_python.py"
REQUIRE_ENV = "PGQUEUE_TEST_TRIXIE"  # "require": no rootfs fails the test, not skips it
BUILD_TIMEOUT = 1800.0  # a cold build takes about a minute; a slow mirror, much longer


def _load_build_script() -> Any:
    spec = importlib.util.spec_from_file_location("trixie_python", BUILD_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_script()


@dataclass(frozen=True)
class TrixieRunner:
    """Runs commands in the rootfs; ``"python"`` as args[0] is its venv's Python 3.13."""

    root: Path
    python: str = f"{build.VENV}/bin/python"

    def command(self, args: list[str], cwd: Path) -> list[str]:
        """The host command running `args` in the rootfs (its pid is the pid of `args`)."""
        if args and args[0] == "python":
            args = [self.python, *args[1:]]
        binds = [str(REPO)]
        tmpdir = Path(tempfile.gettempdir()).resolve()
        if not tmpdir.is_relative_to(build.TMP):  # a TMPDIR elsewhere holds sockets too
            binds.append(str(tmpdir))
        command: list[str] = build.chroot_argv(self.root, args, cwd=str(cwd), binds=binds)
        return command

    def environ(self, env: dict[str, str]) -> dict[str, str]:
        """`env` with the rootfs's PATH and the checkout first on PYTHONPATH."""
        path = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return {**env, "PATH": build.PATH, "PYTHONPATH": path}

    def run(
        self, args: list[str], *, cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion, capturing text output; killed (the command itself) on timeout."""
        return subprocess.run(
            self.command(args, cwd),
            env=self.environ(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(
        self,
        args: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        stdout: int | IO[Any] | None,
        stderr: int | IO[Any] | None,
    ) -> subprocess.Popen[str]:
        """Start `args`; the Popen's pid is the command's own, so signals reach it directly."""
        return subprocess.Popen(
            self.command(args, cwd), env=self.environ(env), stdout=stdout, stderr=stderr, text=True
        )


@functools.cache
def _prepare() -> TrixieRunner | str:
    """The runner, or why there is none: built (or found up to date) once per session."""
    try:
        built = subprocess.run(
            [sys.executable, str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"trixie rootfs: the build took over {BUILD_TIMEOUT:.0f}s"
    if built.returncode != 0:
        lines = built.stderr.strip().splitlines() or [f"exit {built.returncode}"]
        return f"trixie rootfs: {lines[-1]}"
    trixie = TrixieRunner(build.ROOTFS)
    # Building needs root; running also needs mount namespaces (a container may forbid).
    probe = trixie.run(["python", "-c", "import django"], cwd=REPO, env={}, timeout=60)
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"]
        return f"trixie rootfs cannot run commands: {lines[-1]}"
    return trixie


def runner() -> TrixieRunner:
    """The runner of this session; skips the calling test when there can be none."""
    prepared = _prepare()
    if isinstance(prepared, str):
        if os.environ.get(REQUIRE_ENV) == "require":
            pytest.fail(prepared, pytrace=False)
        pytest.skip(prepared)
    return prepared
