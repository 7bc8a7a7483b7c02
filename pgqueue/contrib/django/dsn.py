"""Where the backend's database is: a pgqueue DSN (a URL, as asyncpg wants) built from
Django's ``DATABASES`` entry, so that the worker and the schema migration reach the very
database the web process enqueues on through Django's own connection."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

# Keys of a PostgreSQL DATABASES entry's OPTIONS that are Django's or psycopg's own,
# not libpq connection parameters: never put in the DSN.
_NOT_LIBPQ = frozenset(
    {
        "assume_role",
        "context",
        "cursor_factory",
        "isolation_level",
        "pool",
        "prepare_threshold",
        "server_side_binding",
    }
)


def dsn_from_settings(settings: dict[str, Any]) -> str:
    """A ``postgresql://`` URL for a ``DATABASES`` entry (NAME, USER, PASSWORD, HOST,
    PORT, and the libpq parameters among its OPTIONS: sslmode, application_name...). A
    HOST that is a socket directory goes in the query, as libpq reads it."""
    if "postgresql" not in str(settings.get("ENGINE", "")):
        raise ValueError(
            f"pgqueue needs a PostgreSQL database, not ENGINE={settings.get('ENGINE')!r}"
        )
    options = settings.get("OPTIONS") or {}
    query = {
        key: str(value)
        for key, value in options.items()
        if key not in _NOT_LIBPQ and isinstance(value, str | int)
    }
    host = str(settings.get("HOST") or "")
    if host.startswith("/"):
        query["host"] = host
        host = ""
    user = quote(str(settings.get("USER") or ""), safe="")
    password = str(settings.get("PASSWORD") or "")
    userinfo = user + (f":{quote(password, safe='')}" if password else "")
    netloc = f"{userinfo}@" if userinfo else ""
    netloc += f"[{host}]" if ":" in host else host
    if settings.get("PORT"):
        netloc += f":{settings['PORT']}"
    name = quote(str(settings.get("NAME") or ""), safe="")
    suffix = f"?{urlencode(query, safe='/')}" if query else ""
    return f"postgresql://{netloc}/{name}{suffix}"
