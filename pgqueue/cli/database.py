"""The database a ``pgqueue`` command uses: ``--dsn``, else ``$PGQUEUE_DSN``, else the
app's own DSN, else the embedded server; and what a log line may say of it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from pgqueue import extras
from pgqueue.cli.errors import NO_DATABASE
from pgqueue.embedded import DATA_DIR_ENV, DSN_ENV, EmbeddedServer

if TYPE_CHECKING:
    from pathlib import Path

    from pgqueue.app import Queue

Source = Literal["flag", "env", "app", "embedded"]


class Database(NamedTuple):
    """The database a command uses, where its DSN came from, and the embedded server
    started for it (None unless ``source`` is ``embedded``)."""

    dsn: str
    source: Source
    server: EmbeddedServer | None = None


def select_database(
    dsn: str | None, app: Queue | None, *, data_dir: Path | None = None
) -> Database:
    """The database a command uses: ``dsn`` (``--dsn``), else ``$PGQUEUE_DSN``, else
    the app's own ``Queue(dsn=...)``, else the embedded server, started here on
    ``data_dir``, else ``$PGQUEUE_DATA_DIR``, else the app's ``Queue(data_dir=...)``,
    else the default. Without the ``embedded`` extra, that last step raises
    :class:`pgqueue.extras.NoDatabaseError`."""
    if dsn:
        return Database(dsn, "flag")
    from_env = os.environ.get(DSN_ENV)
    if from_env:
        return Database(from_env, "env")
    if app is not None and app.configured_dsn:
        # The database the app enqueues into: an embedded one would never see its jobs.
        return Database(app.configured_dsn, "app")
    if extras.missing("embedded"):
        raise extras.NoDatabaseError(NO_DATABASE)
    if data_dir is None and app is not None and not os.environ.get(DATA_DIR_ENV):
        data_dir = app.configured_data_dir
    server = EmbeddedServer.start(data_dir)
    return Database(server.dsn("postgres"), "embedded", server)


def describe_database(database: Database) -> dict[str, Any]:
    """What a log line may say about ``database``: where its DSN came from, host, port,
    database and user as libpq would resolve them (the ``PG*`` variables filling what the
    DSN leaves out), and whether it is the embedded server. Never the password."""
    fields: dict[str, Any] = {"source": database.source, "embedded": database.server is not None}
    try:
        params = conninfo_to_dict(database.dsn)
    except psycopg.ProgrammingError:
        # Said in full by the first connection attempt (its message has no password).
        return {**fields, "dsn_invalid": True}
    defaults = {
        opt.keyword.decode(): opt.val.decode() if opt.val is not None else None
        for opt in pq.Conninfo.get_defaults()
    }

    def resolved(key: str) -> str | None:
        value = params.get(key)
        return str(value) if value not in {None, ""} else defaults.get(key)

    user = resolved("user")
    fields.update(
        # No host: libpq's default, the local unix socket directory.
        host=resolved("host") or "default unix socket",
        port=resolved("port") or "5432",
        database=resolved("dbname") or user,
        user=user,
    )
    if resolved("hostaddr"):
        fields["hostaddr"] = resolved("hostaddr")
    if database.server is not None:
        fields["data_dir"] = str(database.server.data_dir)
    return fields
