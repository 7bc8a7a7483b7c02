"""In a source checkout, ``pgqueue.service`` is the repository's top-level ``service/``.

The HTTP service's source lives at the top of the repository, and the wheel installs it
inside the package, as ``pgqueue/service`` (``force-include`` in pyproject.toml, like the
migrations). Run from a checkout (the tests, an editable install, ``python -m pgqueue``
in the clone), the package is ``pgqueue/`` itself, which holds no ``service``: the finder
below gives them the same ``pgqueue.service``, loaded from ``service/``.

It answers for that one name only; the service's modules then load through the
package's own ``__path__`` (``service/``), so no other top-level directory (tests,
benchmarks, migrations) ever becomes part of ``pgqueue``. It is installed only when this
copy of pgqueue is a checkout: ``pyproject.toml`` and ``service/`` beside the package,
and no ``service`` inside it (an installed wheel has one).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from pathlib import Path
    from types import ModuleType

SERVICE_MODULE = "pgqueue.service"


class ServiceFinder:
    """A meta path finder for ``pgqueue.service`` alone, from ``source``."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        del path, target  # the finder protocol's; one name, one place
        if fullname != SERVICE_MODULE:
            return None
        return importlib.util.spec_from_file_location(
            SERVICE_MODULE,
            self.source / "__init__.py",
            submodule_search_locations=[str(self.source)],
        )

    def __repr__(self) -> str:
        return f"ServiceFinder({str(self.source)!r})"


def service_source(package_dir: Path) -> Path | None:
    """The checkout's ``service/`` when ``package_dir`` (pgqueue's directory) is in a
    checkout without the service inside it; else None."""
    root = package_dir.parent
    source = root / "service"
    if (package_dir / "service").exists():
        return None  # installed: the wheel put it there
    if not (root / "pyproject.toml").is_file() or not (source / "__init__.py").is_file():
        return None
    return source


def install_service_finder(package_dir: Path) -> None:
    source = service_source(package_dir)
    if source is None:
        return
    if any(isinstance(f, ServiceFinder) for f in sys.meta_path):
        return  # pgqueue imported again (a reload): one finder is enough
    # Last: the regular finders answer first, for everything else and for an installed
    # pgqueue.service should one appear on the package's path.
    sys.meta_path.append(ServiceFinder(source))
