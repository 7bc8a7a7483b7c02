"""``pgqueue.__version__``: the installed distribution's version.

Read from the distribution's metadata (``pgqueue-jobs``); in a source checkout that was
never installed, from the ``pyproject.toml`` beside the package; else ``0+unknown``.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DISTRIBUTION = "pgqueue-jobs"


def _version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        pass
    try:
        with (Path(__file__).resolve().parent.parent / "pyproject.toml").open("rb") as file:
            project = tomllib.load(file).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return "0+unknown"
    if project.get("name") == DISTRIBUTION and isinstance(project.get("version"), str):
        return str(project["version"])
    return "0+unknown"


__version__ = _version()
