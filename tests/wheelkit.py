"""Build this checkout's wheel for the packaging and install tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_wheel(out: Path) -> Path:
    """The distribution's wheel, built from the working tree into ``out``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("pgqueue_jobs-*.whl")
    return built
