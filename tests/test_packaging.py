"""What installing the distribution puts in site-packages: the pgqueue package with its
SQL, its migration chain and py.typed, and no stray top-level package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
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
        # service/ ships inside the package (pgqueue/service is a symlink to it), never
        # as a top-level `service` package in the user's site-packages.
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
