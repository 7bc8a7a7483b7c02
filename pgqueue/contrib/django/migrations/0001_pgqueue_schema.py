"""pgqueue's schema (``pgqueue.jobs`` and the rest), created by ``manage.py migrate`` in
the database being migrated when a pgqueue ``TASKS`` backend uses it (``OPTIONS
["DATABASE"]``): pgqueue's own migration chain (:func:`pgqueue.migrate.upgrade`), on a
connection of its own to that database. Not atomic, so that no
Django transaction is held open while that connection changes the schema.

Reversing it changes nothing: unapplying would drop every job, so that is left to
``pgqueue`` itself (``pgqueue.migrate.downgrade(dsn, "base")``). Later releases of
pgqueue bring revisions of their own: ``manage.py pgqueue_migrate`` applies them.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

from pgqueue.contrib.django.schema import upgrade_database


def apply_pgqueue_schema(apps: Any, schema_editor: Any) -> None:  # noqa: ARG001 - Django's signature
    upgrade_database(schema_editor.connection)


class Migration(migrations.Migration):  # type: ignore[misc]
    atomic = False
    initial = True
    dependencies: list[tuple[str, str]] = []  # noqa: RUF012 - Django's declaration
    operations = [  # noqa: RUF012
        migrations.RunPython(apply_pgqueue_schema, migrations.RunPython.noop, elidable=False)
    ]
