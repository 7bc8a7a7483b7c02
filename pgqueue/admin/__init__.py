"""The admin API: what an operator's tools ask of a queue beyond enqueueing and running.

Browse and page through jobs, read a job, cancel or retry it, read and pause queues,
manage API keys, and read the figures a dashboard or a metrics exporter shows. pgqueue's
HTTP service (``pgqueue.service``: its REST API, dashboard and ``/metrics``) is built on
these calls and nothing else, so that a tool of your own can do whatever it does::

    from pgqueue import Admin, Queue

    queue = Queue(dsn)
    admin = Admin(queue)
    page = await admin.list_jobs(queue="emails", state=JobState.FAILED, limit=20)
    for job in page.jobs:
        await admin.retry_job(job.id)
    older = await admin.list_jobs(queue="emails", before=page.next_cursor)

Every call takes an optional ``conn=``: a connection of yours (asyncpg, psycopg, or a
SQLAlchemy connection or session on either, as for :meth:`Queue.enqueue`), on which it
runs inside your transaction if one is open; without one it runs on the Queue's own
connections, with their retries. Every call is async and has a ``_sync`` twin
(``list_jobs_sync``), generated from it. Values come back typed: :class:`~pgqueue.Job`,
:class:`~pgqueue.QueueStats`, and the small records defined here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgqueue.admin.calls import AdminCalls
from pgqueue.admin.calls_sync import AdminCallsSync
from pgqueue.admin.records import (
    API_KEY_NAME_MAX,
    API_KEY_PREFIX,
    API_KEY_SCOPES,
    ApiKey,
    ApiKeyScope,
    EnqueuedJob,
    InvalidApiKeyError,
    JobCounters,
    JobPage,
    LiveApiKey,
    NewApiKey,
    QueueSettings,
    ReplicaStatus,
    Throughput,
    hash_api_key,
    validate_api_key_request,
)

if TYPE_CHECKING:
    from pgqueue.app import Queue

__all__ = [
    "API_KEY_NAME_MAX",
    "API_KEY_PREFIX",
    "API_KEY_SCOPES",
    "Admin",
    "ApiKey",
    "ApiKeyScope",
    "EnqueuedJob",
    "InvalidApiKeyError",
    "JobCounters",
    "JobPage",
    "LiveApiKey",
    "NewApiKey",
    "QueueSettings",
    "ReplicaStatus",
    "Throughput",
    "hash_api_key",
    "validate_api_key_request",
]


class Admin(AdminCalls, AdminCallsSync):
    """The admin calls on ``queue``'s database (see the module's description)."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
