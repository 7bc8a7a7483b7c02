"""The HTTP service is a client of the library's public admin API: nothing in service/
imports the statements, the driver or the executors, calls ``query(...)``, or names a
SQL statement (the names of pgqueue/sql/queries.sql)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pgqueue.admin import API_KEY_SCOPES

REPO = Path(__file__).resolve().parent.parent
SERVICE = REPO / "service"
INTERNAL = ("pgqueue.driver", "pgqueue.sql", "pgqueue.executors")


def _service_files() -> list[Path]:
    files = sorted(SERVICE.rglob("*.py"))
    assert len(files) > 10, files  # the service is there, and read
    return files


def _internal(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in INTERNAL)


def _statement_names() -> set[str]:
    text = (REPO / "pgqueue" / "sql" / "queries.sql").read_text()
    names = set(re.findall(r"^-- name: (\w+)", text, flags=re.MULTILINE))
    assert len(names) > 20, names
    # "enqueue" is also an API key's scope, which the service names in its guards.
    return names - set(API_KEY_SCOPES)


def _violations(path: Path, statements: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} imports {a.name}" for a in node.names if _internal(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(_internal(m) for m in modules):
                found.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name == "query":
                found.append(f"{where} calls query(...)")
        elif isinstance(node, ast.Constant) and node.value in statements:
            found.append(f"{where} names the statement {node.value!r}")
    return found


def test_the_service_uses_only_the_public_admin_api():
    statements = _statement_names()
    found = [v for path in _service_files() for v in _violations(path, statements)]
    assert found == []


def test_the_check_sees_what_it_forbids(tmp_path):
    # The checker itself: each kind of breach is caught (so a pass above means something).
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from pgqueue import driver\n"
        "import pgqueue.executors\n"
        "from pgqueue.sql import query\n"
        "query('get_job')\n"
        "x = 'list_jobs'\n"
    )
    found = _violations(bad, _statement_names())
    assert len(found) == 6, found
