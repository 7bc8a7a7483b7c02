"""The worker (:class:`Worker`), a package of its parts; see ``core.py`` for the map."""

from pgqueue.worker.core import Worker, WorkerStats

__all__ = ["Worker", "WorkerStats"]
