"""A Docker engine of the tests' own, and a stand-in for the official Python base image.

No Docker engine runs on the development machines and no image registry is reachable
from them (/work/shared/design/docker-here.md), yet an engine can be started there:

- ``engine()`` starts a ``dockerd`` (installing Debian's docker.io when missing) with its
  own socket, pidfile, exec-root (a short temporary directory) and data-root (under
  .cache/docker/, kept so that images survive from one run to the next), without the
  default bridge or iptables: containers and builds use the host's network. It stops that
  dockerd, by its pid, when the block ends. A system Docker, if any, is never touched.
- ``standin_base_image()`` imports a Debian bookworm root filesystem (debootstrap,
  Python 3.11, pip) as a local image with ``python`` and ``pip`` on PATH, like the
  official ``python:*-slim-bookworm``, which users keep. Cached by a hash of its recipe.
- ``build_image()`` builds docker/Dockerfile on that base from a staged copy of what
  docker/Dockerfile.dockerignore lets through (the engine here has no BuildKit, which is
  what reads that file).

Every failure to provide an engine is ``DockerUnavailable``, whose message says why: the
tests skip with it.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "docker"
DATA_ROOT = CACHE / "data-root"
ROOTFS = CACHE / "rootfs"
ROOTFS_STAMP = CACHE / "rootfs.stamp"
ENGINE_LOG = CACHE / "dockerd.log"
ENGINE_LOCK = CACHE / "engine.lock"

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
INCLUDE = "python3,python3-venv,python3-pip,ca-certificates"
STANDIN_REPOSITORY = "pgqueue-test/python-standin"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# pip's settings that are worth carrying into an image: where packages come from. A local
# (file://) index is not: a build cannot mount it.
PIP_INDEX_KEYS = ("index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout")
PIP_CONFIG_FILES = [
    Path("/etc/pip.conf"),
    Path("/etc/xdg/pip/pip.conf"),
    Path.home() / ".config/pip/pip.conf",
    Path.home() / ".pip/pip.conf",
]
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")

ENGINE_START_TIMEOUT_S = 60
ENGINE_STOP_TIMEOUT_S = 30
ENGINE_LOCK_TIMEOUT_S = 900  # another session's engine on the same data-root: wait for it


class DockerUnavailable(Exception):  # noqa: N818 - a reason to skip, not an error
    """Why no engine (or no image) can be had here: the one-line reason to skip."""


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def _run(argv: list[str], what: str, *, timeout: float, env: dict[str, str] | None = None) -> str:
    try:
        result = subprocess.run(
            argv,
            check=False,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise DockerUnavailable(f"{what} took more than {timeout:.0f}s") from exc
    if result.returncode != 0:
        raise DockerUnavailable(f"{what} failed (exit {result.returncode}): {_tail(result.stdout)}")
    return str(result.stdout)


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``: a directory holding one must never be rm -rf'd."""
    prefix = str(path.resolve())
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


# --- the engine ---------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    """A running dockerd of ours: ``docker()`` runs the CLI against it."""

    pid: int
    host: str  # unix:///...
    cli: str

    @property
    def env(self) -> dict[str, str]:
        # The classic builder: BuildKit would fetch the `# syntax=` frontend from a
        # registry, and the CLI here has no buildx.
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` against this engine; never raises on a failed command."""
        return subprocess.run(
            [self.cli, *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def image_exists(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, timeout=30).returncode == 0


def _binaries() -> tuple[str, str]:
    """dockerd and a docker CLI, installing Debian's docker.io (root, apt-get) if needed."""
    dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")
    if dockerd is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise DockerUnavailable(
                "dockerd is missing and cannot be installed (needs root and apt-get)"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-q"], "apt-get update", timeout=600, env=env)
        _run(
            ["apt-get", "install", "-y", "-q", "docker.io"],
            "apt-get install docker.io",
            timeout=900,
            env=env,
        )
        dockerd = shutil.which("dockerd", path="/usr/sbin:/usr/bin")
        if dockerd is None:
            raise DockerUnavailable("docker.io was installed but has no dockerd")
    # The CLI that came with this dockerd speaks its API version for sure.
    beside = Path(dockerd).parent.parent / "bin" / "docker"
    cli = str(beside) if beside.exists() else shutil.which("docker")
    if cli is None:
        raise DockerUnavailable("there is a dockerd but no docker CLI")
    return dockerd, cli


@contextlib.contextmanager
def _engine_lock() -> Iterator[None]:
    """One engine at a time on the shared data-root (concurrent test sessions wait)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with ENGINE_LOCK.open("w") as lock:
        deadline = time.monotonic() + ENGINE_LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DockerUnavailable(
                        f"another test session has held {ENGINE_LOCK} for {ENGINE_LOCK_TIMEOUT_S}s"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop our dockerd by its pid: SIGTERM (it stops its containers and its containerd),
    then SIGKILL to what is left of the session it leads, which is ours alone."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(ENGINE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    # The containerd it supervises is in its session: gone with it on a clean stop.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _remove_exec_root(exec_root: Path) -> None:
    """dockerd leaves the bind mount of its network namespace (exec/netns/default) behind
    when it exits: unmounted (ours, under our exec-root) before the directory goes."""
    for point in sorted(_mounts_under(exec_root), reverse=True):
        subprocess.run(["umount", point], check=False, capture_output=True, timeout=30)
    if not _mounts_under(exec_root):
        shutil.rmtree(exec_root, ignore_errors=True)


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    """A dockerd of our own for the duration of the block (see the module docstring)."""
    if os.geteuid() != 0:
        raise DockerUnavailable("starting a Docker engine needs root")
    dockerd, cli = _binaries()
    with _engine_lock():
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        # Short: the engine puts unix sockets under its exec-root (108-byte limit).
        exec_root = Path(tempfile.mkdtemp(prefix="pgq-dockerd-"))
        socket = exec_root / "docker.sock"
        argv = [
            dockerd,
            "--bridge=none",
            "--iptables=false",
            f"--data-root={DATA_ROOT}",
            f"--exec-root={exec_root / 'exec'}",
            f"--pidfile={exec_root / 'docker.pid'}",
            f"--host=unix://{socket}",
            # Apart from a system Docker's, should both share a system containerd.
            "--containerd-namespace=pgqueue-test",
            "--containerd-plugins-namespace=pgqueue-test-plugins",
        ]
        with ENGINE_LOG.open("wb") as log:
            process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            running = Engine(process.pid, f"unix://{socket}", cli)
            deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
            while running.docker("version", timeout=10).returncode != 0:
                if process.poll() is not None or time.monotonic() > deadline:
                    reason = _tail(ENGINE_LOG.read_text(errors="replace"), 3)
                    raise DockerUnavailable(f"dockerd did not start: {reason}")
                time.sleep(0.2)
            yield running
        finally:
            _stop(process)
            _remove_exec_root(exec_root)


# --- the stand-in base image ---------------------------------------------------------


def _rootfs() -> str:
    """A bookworm minbase rootfs with Python; returns the digest of its recipe."""
    digest = hashlib.sha256(json.dumps([SUITE, MIRROR, INCLUDE]).encode()).hexdigest()
    if ROOTFS_STAMP.is_file() and ROOTFS_STAMP.read_text() == digest:
        return digest
    if shutil.which("debootstrap") is None:
        if shutil.which("apt-get") is None:
            raise DockerUnavailable("debootstrap is missing and there is no apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(
            ["apt-get", "install", "-y", "-q", "debootstrap"],
            "apt-get install",
            timeout=600,
            env=env,
        )
    partial = CACHE / "rootfs.partial"
    for old in (partial, ROOTFS):
        if old.exists():
            if held := _mounts_under(old):
                raise DockerUnavailable(f"{old} has mounts inside: {', '.join(held)}")
            shutil.rmtree(old)
    ROOTFS_STAMP.unlink(missing_ok=True)
    # In a mount namespace of its own: the /proc it mounts in the target cannot outlive it.
    argv = ["unshare", "--mount", "--propagation", "private", "--", "debootstrap"]
    argv += ["--variant=minbase", f"--include={INCLUDE}", SUITE, str(partial), MIRROR]
    _run(argv, "debootstrap", timeout=1200)
    partial.rename(ROOTFS)
    ROOTFS_STAMP.write_text(digest)
    return digest


def pip_conf() -> str:
    """The pip.conf for the image: the host's package indexes when they are URLs (a local
    file:// index cannot be reached from a build), and the CA bundle copied in."""
    settings: dict[str, str] = {}
    for file in PIP_CONFIG_FILES:
        if file.is_file():
            parser = configparser.ConfigParser(interpolation=None)
            parser.read(file)
            for section in ("global", "install"):
                if parser.has_section(section):
                    settings.update(dict(parser[section]))
    for key in PIP_INDEX_KEYS:
        if value := os.environ.get("PIP_" + key.upper().replace("-", "_")):
            settings[key] = value
    lines = ["[global]", f"cert = {HOST_CA_BUNDLE}"]
    for key in PIP_INDEX_KEYS:
        if key not in settings:
            continue
        values = [v for v in settings[key].split() if not v.startswith("file:")]
        if values:
            lines.append(f"{key} = {' '.join(values)}")
    return "\n".join(lines) + "\n"


def _prepare_rootfs(pip_config: str) -> None:
    """What the official image has and Debian's lacks: `python` and `pip` on PATH and a pip
    that may install (no EXTERNALLY-MANAGED); plus this machine's CA bundle (a TLS proxy's
    certificate may be in it) and pip.conf. Idempotent."""
    local_bin = ROOTFS / "usr/local/bin"
    local_bin.mkdir(parents=True, exist_ok=True)
    for name, target in (("python", "/usr/bin/python3"), ("pip", "/usr/bin/pip3")):
        link = local_bin / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    for marker in (ROOTFS / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    bundle = Path(f"{ROOTFS}{HOST_CA_BUNDLE}")
    bundle.unlink(missing_ok=True)
    shutil.copyfile(HOST_CA_BUNDLE, bundle)
    (ROOTFS / "etc/pip.conf").write_text(pip_config)


def standin_base_image(running: Engine) -> str:
    """The tag of a local image standing in for python:*-slim-bookworm (built if needed)."""
    rootfs_digest = _rootfs()
    config = pip_conf()
    recipe = [rootfs_digest, config, hashlib.sha256(HOST_CA_BUNDLE.read_bytes()).hexdigest(), PATH]
    tag = f"{STANDIN_REPOSITORY}:{hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]}"
    if running.image_exists(tag):
        return tag
    if held := _mounts_under(ROOTFS):
        raise DockerUnavailable(f"{ROOTFS} has mounts inside: {', '.join(held)}")
    _prepare_rootfs(config)
    changes = [
        f"ENV PATH={PATH}",
        "ENV LANG=C.UTF-8",
        f"ENV PIP_CERT={HOST_CA_BUNDLE}",
        'CMD ["python3"]',
    ]
    argv = [running.cli, "import", *(a for c in changes for a in ("--change", c)), "-", tag]
    tar = subprocess.Popen(
        ["tar", "-C", str(ROOTFS), "--numeric-owner", "-c", "."],
        stdout=subprocess.PIPE,
    )
    try:
        imported = subprocess.run(
            argv,
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            env=running.env,
            timeout=600,
            check=False,
        )
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait(60)
    if imported.returncode != 0 or tar.returncode != 0:
        raise DockerUnavailable(f"docker import failed: {_tail(imported.stderr)}")
    return tag


# --- the image under test ------------------------------------------------------------


def _build_context(target: Path) -> None:
    """Copy what docker/Dockerfile.dockerignore lets through (its `!` lines), as BuildKit
    would send it, and the Dockerfile."""
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for line in ignore:
        if not line.startswith("!"):
            continue
        source = ROOT / line.removeprefix("!").rstrip("/")
        if source.is_dir():
            shutil.copytree(source, target / source.name, ignore=skip)
        else:
            shutil.copy2(source, target / source.name)
    (target / "docker").mkdir()
    shutil.copy2(ROOT / "docker" / "Dockerfile", target / "docker" / "Dockerfile")


def build_image(running: Engine, base: str, tag: str) -> None:
    """``docker build -f docker/Dockerfile --build-arg BASE_IMAGE=base`` on the host's
    network; raises AssertionError with the build's output when it fails."""
    with tempfile.TemporaryDirectory(prefix="pgq-docker-context-") as context:
        _build_context(Path(context))
        argv = ["build", "--network", "host", "-f", f"{context}/docker/Dockerfile"]
        argv += ["--build-arg", f"BASE_IMAGE={base}"]
        for name in PROXY_VARIABLES:  # predefined build arguments
            if name in os.environ:
                argv += ["--build-arg", f"{name}={os.environ[name]}"]
        # The build stage tagged too: untagged, it would be a dangling image, pruned with
        # the older builds' leftovers, and the next run would rebuild it.
        for target in (["--target", "build", "-t", f"{tag}-build"], ["-t", tag]):
            result = running.docker(*argv, *target, context, timeout=900)
            output = result.stdout[-4000:] + result.stderr[-4000:]
            assert result.returncode == 0, f"docker build failed:\n{output}"
    running.docker("image", "prune", "--force")
