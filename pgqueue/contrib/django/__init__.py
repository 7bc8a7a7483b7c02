"""pgqueue as a backend of Django's ``django.tasks`` (Django 6; on Django 5.2 the
``django-tasks`` backport): ``pip install 'pgqueue-jobs[django]'``.

::

    INSTALLED_APPS = [..., "pgqueue.contrib.django"]   # migrate + manage.py pgqueue_worker
    TASKS = {"default": {"BACKEND": "pgqueue.contrib.django.PgQueueBackend"}}

- :class:`PgQueueBackend` (:mod:`.backend`): ``enqueue`` writes the job on Django's own
  connection, in the transaction a ``transaction.atomic()`` block has open; results
  through Django's ``TaskResult`` (``get_result``, ``refresh``).
- ``manage.py migrate`` creates pgqueue's schema in the backend's database (the
  migration :mod:`.migrations` ``0001``); ``manage.py pgqueue_migrate`` brings it up to
  date after an upgrade of pgqueue.
- ``manage.py pgqueue_worker`` runs a pgqueue worker that executes the Django tasks
  (:mod:`.runner`).
"""

from __future__ import annotations

from pgqueue.contrib.django.backend import PgQueueBackend

__all__ = ["PgQueueBackend"]
