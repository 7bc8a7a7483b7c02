"""What installing the distribution puts in site-packages: the pgqueue package with its
SQL, its migration chain, its HTTP service and py.typed, and no stray top-level package;
and that a source checkout (tests, editable installs) imports the same pgqueue.service
from the top-level service/, with no symlink in the tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from wheelkit import REPO, build_wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_only_the_pgqueue_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"pgqueue"}
    for needed in [
        "pgqueue/py.typed",
        "pgqueue/sql/schema.sql",
        "pgqueue/sql/queries.sql",
        "pgqueue/_migrations/env.py",
        "pgqueue/_migrations/versions/0001_initial.py",
        # service/ ships inside the package (force-include), never as a top-level
        # `service` package in the user's site-packages.
        "pgqueue/service/__init__.py",
        "pgqueue/service/app.py",
        # The dashboard's templates and assets are package data.
        "pgqueue/service/templates/base.html.j2",
        "pgqueue/service/templates/_queues.html.j2",
        "pgqueue/service/static/dashboard.js",
        "pgqueue/service/static/dashboard.css",
    ]:
        assert needed in names
    assert not any(n.startswith(("tests/", "service/", "benchmarks/", "examples/")) for n in names)
    # Every module of the service's source, and nothing compiled.
    shipped = {n.removeprefix("pgqueue/") for n in names if n.startswith("pgqueue/service/")}
    source = {str(p.relative_to(REPO)) for p in (REPO / "service").rglob("*.py")}
    assert source <= shipped
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_the_tree_has_no_symlink():
    # The service's one source is service/; nothing in the package points at it.
    assert not (REPO / "pgqueue" / "service").exists()
    links = [p for d in ("pgqueue", "service") for p in (REPO / d).rglob("*") if p.is_symlink()]
    assert links == []


def test_the_installed_wheel_migrates_from_its_own_files(wheel, tmp_path, empty_dsn):
    # Installed away from the source tree, `pgqueue migrate` must find the chain that
    # ships inside the package.
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys; sys.path.insert(0, sys.argv[1]); import pgqueue.cli as c; "
                "assert c.__file__.startswith(sys.argv[1]), c.__file__; "
                "from pgqueue.migrate import script_location; print(script_location()); "
                "raise SystemExit(c.main(['migrate', '--dsn', sys.argv[2]]))"
            ),
            str(target),
            empty_dsn,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert str(target) in result.stdout
    assert "database_migrated" in result.stderr
    # Its service is its own too: the one inside the package, with its templates, and
    # no reaching into a checkout (the finder of pgqueue/_checkout.py stays off).
    module, template, finders = _imports(
        sys.executable, tmp_path, SERVICE_PROBE, str(target)
    ).splitlines()
    assert module == str(target / "pgqueue" / "service" / "__init__.py")
    assert Path(template).is_file()
    assert template.startswith(str(target))
    assert "ServiceFinder" not in finders


def _imports(python: Path | str, cwd: Path, code: str, *path: str) -> str:
    result = subprocess.run(
        [str(python), "-c", code, *path],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


SERVICE_PROBE = (
    "import sys\n"
    "if len(sys.argv) > 1: sys.path.insert(0, sys.argv[1])\n"
    "import pgqueue.service, pgqueue.service.dashboard as d\n"
    "print(pgqueue.service.__file__)\n"
    "print(d.TEMPLATES / 'base.html.j2')\n"
    "print([type(f).__name__ for f in sys.meta_path])\n"
    "for name in ('pgqueue.tests', 'pgqueue.benchmarks', 'pgqueue.migrations'):\n"
    "    try:\n"
    "        __import__(name)\n"
    "    except ModuleNotFoundError:\n"
    "        continue\n"
    "    raise SystemExit(name + ' is importable')\n"
)


def test_an_editable_install_imports_the_service_from_the_source_tree(tmp_path):
    # A fresh venv that sees the project's dependencies (a path line, not their .pth
    # files: the project's own editable install must not leak in), then `pip install -e`.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = _imports(python, tmp_path, "import site; print(site.getsitepackages()[0])").strip()
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    (Path(site) / "project_deps.pth").write_text(f"{deps}\n")
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-e",
            str(REPO),
        ],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    module, template, finders = _imports(python, tmp_path, SERVICE_PROBE).splitlines()
    assert module == str(REPO / "service" / "__init__.py")
    assert Path(template) == REPO / "service" / "templates" / "base.html.j2"
    assert "ServiceFinder" in finders
    assert not (REPO / "pgqueue" / "service").exists()
