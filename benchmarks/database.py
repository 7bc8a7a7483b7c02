"""The benchmark's database: a scratch database on a fresh embedded PostgreSQL, or on
a server the user names, created with durable commits, migrated, and dropped at the end."""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pgqueue import migrate
from pgqueue.embedded import EmbeddedServer

if TYPE_CHECKING:
    from collections.abc import Iterator


def dsn_for_database(dsn: str, dbname: str) -> str:
    """``dsn`` pointed at ``dbname``, as a URL: asyncpg, which pgqueue's async face and
    workers use, takes no other form. ``dsn`` may be a URL or a libpq key=value string."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        # A dbname parameter would override the path: drop it.
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "dbname"]
        path = "/" + quote(dbname, safe="")
        return urlunsplit(parts._replace(path=path, query=urlencode(query, safe="/")))
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if k != "dbname"}
    auth = quote(params.pop("user", ""), safe="")
    if "password" in params:
        auth += ":" + quote(params.pop("password"), safe="")
    at = f"{auth}@" if auth else ""
    return f"postgresql://{at}/{quote(dbname, safe='')}?{urlencode(params, safe='/')}"


@contextmanager
def scratch_database(server_dsn: str | None) -> Iterator[tuple[str, str]]:
    """A fresh, migrated database whose sessions commit durably: its DSN, and a word on
    where it lives. Without ``server_dsn``, on an embedded PostgreSQL of its own."""
    with ExitStack() as stack:
        if server_dsn is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgqbench-")))
            server = EmbeddedServer.start(data_dir / "pgdata")
            stack.callback(server.stop)
            server_dsn, where = server.dsn("postgres"), "embedded, fresh data directory"
        else:
            where = "the --dsn server, scratch database"
        dbname = f"pgqueue_bench_{os.getpid()}"
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        stack.callback(_drop_database, server_dsn, dbname)
        dsn = dsn_for_database(server_dsn, dbname)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(
                    sql.Identifier(dbname)
                )
            )
        migrate.upgrade(dsn)
        yield dsn, where


def _drop_database(server_dsn: str, dbname: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )


def psycopg_synchronous_commit(dsn: str) -> str:
    """``synchronous_commit`` as a new psycopg session of ``dsn`` sees it."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW synchronous_commit").fetchone()
    return "?" if row is None else str(row[0])
