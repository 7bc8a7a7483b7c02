"""The Django app: its migration creates pgqueue's schema, its management commands run
a worker (``pgqueue_worker``) and upgrade the schema (``pgqueue_migrate``)."""

from __future__ import annotations

from django.apps import AppConfig


class PgQueueConfig(AppConfig):  # type: ignore[misc]
    name = "pgqueue.contrib.django"
    label = "pgqueue"
    verbose_name = "pgqueue"
