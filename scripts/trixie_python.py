"""Build a Debian 13 (trixie) root filesystem whose Python runs Django 6.

Django 6 needs Python >= 3.12; this project's machines run Debian 12 (Python 3.11). The
test suite runs Django 6 inside this rootfs (tests/trixie.py), with the checkout
bind-mounted and imported through PYTHONPATH: pgqueue itself is never installed here,
only its runtime dependencies (read from pyproject.toml, so they never drift) and Django.

    python scripts/trixie_python.py     # idempotent: a warm call only reads a stamp

Layout under .cache/trixie/: rootfs/ (with the venv at /opt/venv), stamp (what the venv
holds), lock (one build at a time). Exit 0 when ready, else 1 with a one-line reason.
"""

from __future__ import annotations

import configparser
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "trixie"
ROOTFS = CACHE / "rootfs"
STAMP = CACHE / "stamp"
MIRROR = "http://deb.debian.org/debian"
INCLUDE = "python3,python3-venv,ca-certificates"
VENV = "/opt/venv"
TMP = "/tmp"  # noqa: S108  the host's, mounted in: the embedded server's socket lives there
DJANGO = "django>=6.0"
# The rootfs's own PATH: the venv first, so "python" and "pip" are the venv's.
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# pip's index configuration, copied in so the rootfs's pip finds what the host's finds.
PIP_CONFIG_FILES = [
    Path("/etc/pip.conf"),
    Path("/etc/xdg/pip/pip.conf"),
    Path.home() / ".config/pip/pip.conf",  # the home of root, like the rootfs's HOME
    Path.home() / ".pip/pip.conf",
]


class BuildError(Exception):
    """Why the rootfs cannot be built: printed as the one-line reason."""


def log(message: str) -> None:
    print(f"trixie: {message}", flush=True)


def requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [DJANGO, *project["dependencies"]]


def chroot_argv(
    root: Path,
    argv: list[str],
    *,
    cwd: str = "/",
    binds: Sequence[str] = (),
    ro_binds: Sequence[str] = (),
) -> list[str]:
    """The command running `argv` in `root` inside a private mount namespace.

    /dev, /proc and /tmp are the host's; each directory in `binds`/`ro_binds` is mounted
    at the same absolute path (non-recursively: the rootfs's own mounts stay out). The
    mounts exist only in the namespace, so they vanish with the process and are never seen
    (or deleted through) outside. unshare, sh, chroot and env each exec the next, so the
    returned command's pid ends up being the one of `argv` itself: signals reach it.
    """
    r = shlex.quote(str(root))
    steps = [
        f"mount --rbind /dev {r}/dev",
        f"mount --rbind /proc {r}/proc",
        f"mount --rbind {TMP} {r}{TMP}",
    ]
    for path, ro in [*((p, False) for p in binds), *((p, True) for p in ro_binds)]:
        target = shlex.quote(f"{root}{path}")
        steps += [f"mkdir -p {target}", f"mount --bind {shlex.quote(path)} {target}"]
        if ro:
            steps.append(f"mount -o remount,bind,ro {target}")
    steps.append(f'exec chroot {r} /usr/bin/env --chdir={shlex.quote(cwd)} "$@"')
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-euc",
        " && ".join(steps),
        "sh",
        *argv,
    ]


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`: a directory holding one must never be rm -rf'd."""
    prefix = str(path.resolve())
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def remove_tree(path: Path) -> None:
    if not path.exists():
        return
    if held := mounts_under(path):
        raise BuildError(f"{path} has mounts inside ({', '.join(held)}); unmount them first")
    shutil.rmtree(path)


def run(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        argv, check=False, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if result.returncode != 0:
        tail = " | ".join(result.stdout.strip().splitlines()[-3:])
        raise BuildError(f"{what} failed (exit {result.returncode}): {tail}")


def ensure_debootstrap() -> None:
    if shutil.which("debootstrap"):
        return
    if not shutil.which("apt-get"):
        raise BuildError("debootstrap is missing and there is no apt-get to install it")
    log("installing debootstrap with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], "apt-get update", env)
    run(["apt-get", "install", "-y", "-q", "debootstrap"], "apt-get install debootstrap", env)


def debootstrap() -> None:
    """rootfs/ appears only complete: debootstrap writes a sibling that is renamed."""
    if os.path.lexists(ROOTFS / "usr/bin/python3"):  # links resolve inside it only
        return
    ensure_debootstrap()
    partial = CACHE / "rootfs.partial"
    remove_tree(partial)
    log(f"debootstrap trixie into {partial} (a few minutes)")
    # In its own mount namespace: the /proc it mounts in the target cannot outlive it.
    argv = ["unshare", "--mount", "--propagation", "private", "--"]
    argv += [
        "debootstrap",
        "--variant=minbase",
        f"--include={INCLUDE}",
        "trixie",
        str(partial),
        MIRROR,
    ]
    run(argv, "debootstrap")
    remove_tree(ROOTFS)
    partial.rename(ROOTFS)


def copy_in(path: Path) -> None:
    """Copy a host file to the same path in the rootfs (replacing a symlink there)."""
    target = Path(f"{ROOTFS}{path}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    shutil.copyfile(path, target)


def pip_config() -> tuple[dict[str, str], list[str]]:
    """Copy pip's configuration in, with the files it names (certificates, constraints);
    return the PIP_* environment and the directories it names (local indexes, wheels),
    which are mounted read-only for the install."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    files = [
        *PIP_CONFIG_FILES,
        *([Path(env["PIP_CONFIG_FILE"])] if "PIP_CONFIG_FILE" in env else []),
    ]
    values = list(env.values())
    for file in files:
        if file.is_file():
            copy_in(file)
            parser = configparser.ConfigParser(interpolation=None)
            parser.read(file)
            values += [v for section in parser.sections() for v in parser[section].values()]
    dirs = set()
    for token in " ".join(values).split():
        path = Path(token.removeprefix("file://"))
        if not path.is_absolute() or path.is_relative_to(TMP):  # mounted anyway
            continue
        if path.is_dir():
            # A local index's pages link to files beside it (simple/x/ -> ../../files/).
            dirs.add(str(path.parent if path.name == "simple" else path))
        elif path.is_file():
            copy_in(path)
    return env, sorted(dirs)


def install_venv(requirements: list[str]) -> None:
    copy_in(Path("/etc/resolv.conf"))
    copy_in(Path("/etc/hosts"))
    pip_env, ro_binds = pip_config()
    env = {**pip_env, "PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    log(f"creating {VENV} in the rootfs")
    run(chroot_argv(ROOTFS, ["python3", "-m", "venv", "--clear", VENV]), "python3 -m venv", env)
    log(f"pip install {' '.join(requirements)}")
    argv = chroot_argv(ROOTFS, ["pip", "install", "-q", *requirements], ro_binds=ro_binds)
    run(argv, "pip install", env)


def build() -> None:
    if os.geteuid() != 0:
        raise BuildError("needs root (debootstrap, mount namespaces and chroot)")
    if not shutil.which("unshare"):
        raise BuildError("unshare (util-linux) is missing")
    CACHE.mkdir(parents=True, exist_ok=True)
    reqs = requirements()
    digest = hashlib.sha256(json.dumps([INCLUDE, reqs]).encode()).hexdigest()
    with (CACHE / "lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another build is under way: waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)  # then finds the rootfs built
        if (
            STAMP.is_file()
            and STAMP.read_text() == digest
            and os.path.lexists(f"{ROOTFS}{VENV}/bin/python")
        ):
            log(f"up to date: {ROOTFS}")
            return
        started = time.monotonic()
        STAMP.unlink(missing_ok=True)
        debootstrap()
        install_venv(reqs)
        STAMP.write_text(digest)
        log(f"ready in {time.monotonic() - started:.0f}s: {ROOTFS}")


def main() -> int:
    try:
        build()
    except BuildError as error:
        print(f"trixie: cannot build: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
