"""Named SQL blocks, loaded once from the ``.sql`` files of this package (all but
``schema.sql``).

A block starts with ``-- name: NAME`` and runs to the next such line. Python code asks
for a statement by name (``query("claim_jobs")``) and never builds SQL from strings.

A block that takes a job's fields names them, in the order of its parameters, on a line
``-- params: name, name, ...`` (:func:`statement_params`): the caller passes the fields
by those names, so that no statement is tied to a field's position in Python.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME_LINE = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_PARAMS_LINE = re.compile(r"^-- params: (?P<names>.+)$", re.MULTILINE)


def parse_named_blocks(text: str) -> dict[str, str]:
    """Split a file into its named blocks; text before the first name is a preamble."""
    blocks: dict[str, str] = {}
    matches = list(_NAME_LINE.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        name = match["name"]
        if name in blocks:
            raise ValueError(f"SQL block {name!r} is defined twice")
        blocks[name] = body
    return blocks


@cache
def _queries() -> dict[str, str]:
    # Every .sql file but the schema holds named blocks (queries.sql the core's, one file
    # per feature beside it); a name is defined once across them all.
    blocks: dict[str, str] = {}
    for file in sorted(resources.files(__name__).iterdir(), key=lambda f: f.name):
        if not file.name.endswith(".sql") or file.name == "schema.sql":
            continue
        for name, body in parse_named_blocks(file.read_text("utf-8")).items():
            if name in blocks:
                raise ValueError(f"SQL block {name!r} is defined twice ({file.name})")
            blocks[name] = body
    return blocks


def query(name: str) -> str:
    """The SQL text of the block called ``name``."""
    return _queries()[name]


@cache
def statement_params(name: str) -> tuple[str, ...]:
    """The names of the block's parameters ($1, $2, ...), from its ``-- params:`` line."""
    found = _PARAMS_LINE.findall(query(name))
    if len(found) != 1:
        raise LookupError(f"SQL block {name!r} needs one '-- params:' line, has {len(found)}")
    return tuple(part.strip() for part in found[0].split(","))


def schema_sql() -> str:
    """The canonical schema at the head of the migration chain."""
    return resources.files(__name__).joinpath("schema.sql").read_text("utf-8")
