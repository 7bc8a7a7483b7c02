"""``manage.py pgqueue_migrate``: bring pgqueue's schema up to date in the database of
every pgqueue ``TASKS`` backend. ``manage.py migrate`` creates it once (the app's
migration); a later release of pgqueue brings revisions of its own, applied by this
(or by ``pgqueue migrate --dsn ...``)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from pgqueue import migrate
from pgqueue.contrib.django.schema import pgqueue_backends


class Command(BaseCommand):  # type: ignore[misc]
    help = "Upgrade pgqueue's schema to head in the databases of the pgqueue TASKS backends."

    def handle(self, *args: Any, **options: Any) -> None:  # noqa: ARG002 - Django's signature
        for dsn in dict.fromkeys(backend.dsn for backend in pgqueue_backends()):
            migrate.upgrade(dsn)
            self.stdout.write(f"pgqueue schema at {migrate.head_revision()}")
