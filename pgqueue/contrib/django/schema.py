"""pgqueue's own schema in the databases of the ``TASKS`` backends, applied with
:func:`pgqueue.migrate.upgrade` (its Alembic chain), by Django's migration and by
``manage.py pgqueue_migrate``."""

from __future__ import annotations

from typing import Any

from pgqueue import migrate
from pgqueue.contrib.django import compat
from pgqueue.contrib.django.dsn import dsn_from_settings


def pgqueue_backends() -> list[Any]:
    """The configured ``TASKS`` backends that are pgqueue's."""
    from django.conf import settings  # noqa: PLC0415

    from pgqueue.contrib.django.backend import PgQueueBackend  # noqa: PLC0415

    backends = compat.task_backends()
    aliases = getattr(settings, "TASKS", {}) or {}
    found = [backends[alias] for alias in aliases]
    return [backend for backend in found if isinstance(backend, PgQueueBackend)]


def upgrade_database(connection: Any) -> bool:
    """Bring pgqueue's schema to head in the database of Django's ``connection`` (the
    one being migrated: a test database too) if a pgqueue backend uses its alias;
    returns whether one does. The database's own settings, never a backend's ``DSN``
    option: that one may name another server (the production one, under tests)."""
    if not any(backend.database == connection.alias for backend in pgqueue_backends()):
        return False
    migrate.upgrade(dsn_from_settings(connection.settings_dict))
    return True
