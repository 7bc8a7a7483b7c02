"""pgqueue's pytest plugin: fixtures for testing code that uses pgqueue.

Installed with pgqueue (the ``pytest11`` entry point ``pgqueue``); nothing runs until a
test asks for one of its fixtures, and no server starts before one needs it.

- ``pgqueue_app``: your app's Queue, for the fixtures below; None by default (they
  then use a Queue of their own). Override it in your conftest.py::

      @pytest.fixture
      def pgqueue_app():
          from myapp.jobs import queue
          return queue

- ``pgqueue_inline``: that Queue in inline mode for the test (each job runs inside its
  enqueue, in memory; see :mod:`pgqueue.inline`). No database.
- ``pgqueue_dsn``: the DSN of a fresh database migrated to head, dropped after the test.
- ``pgqueue_queue``: that Queue on the test's database (your app's, pointed there for the
  test, or a new one); its connections are closed after the test.
- ``pgqueue_drain``: a function that runs a real worker on ``pgqueue_queue`` until no job
  is due or running, and returns its counts (:func:`pgqueue.testing.drain_sync`). In an
  async test, ``await pgqueue.testing.drain(pgqueue_queue)`` does the same.
- ``pgqueue_server`` (session): the PostgreSQL server, chosen as described in
  :mod:`pgqueue.testing.servers`: ``$PGQUEUE_TEST_DSN``, else a testcontainers
  container when Docker answers, else the embedded server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pgqueue.app import Queue
    from pgqueue.testing.servers import PostgresForTests
    from pgqueue.worker.core import WorkerStats


@pytest.fixture(scope="session")
def pgqueue_server() -> Iterator[PostgresForTests]:
    """The PostgreSQL server of this session (started on first use, if started here)."""
    from pgqueue.testing.servers import NoTestServerError, postgres_for_tests  # noqa: PLC0415

    try:
        with postgres_for_tests() as server:
            yield server
    except NoTestServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def pgqueue_template_db(pgqueue_server: PostgresForTests) -> Iterator[str]:
    """The name of a database migrated to head, copied for each test's ``pgqueue_dsn``."""
    with pgqueue_server.migrated_template() as name:
        yield name


@pytest.fixture
def pgqueue_dsn(pgqueue_server: PostgresForTests, pgqueue_template_db: str) -> Iterator[str]:
    """A fresh database with the pgqueue schema at head, dropped after the test."""
    with pgqueue_server.fresh_database(pgqueue_template_db) as dsn:
        yield dsn


@pytest.fixture
def pgqueue_app() -> Queue | None:
    """Your app's Queue (override this fixture to return it); None: a Queue of the
    fixtures' own."""
    return None


@pytest.fixture
def pgqueue_queue(pgqueue_app: Queue | None, pgqueue_dsn: str) -> Iterator[Queue]:
    """The Queue on the test's own database: ``pgqueue_app`` pointed there for the
    test, or a new Queue; its connections are closed after the test."""
    from pgqueue import Queue  # noqa: PLC0415
    from pgqueue.testing import use_database  # noqa: PLC0415

    queue = pgqueue_app if pgqueue_app is not None else Queue()
    with use_database(queue, pgqueue_dsn):
        yield queue


@pytest.fixture
def pgqueue_inline(pgqueue_app: Queue | None) -> Iterator[Queue]:
    """``pgqueue_app`` (or a new Queue) in inline mode for the test: jobs run inside
    their enqueue and stay in memory (``queue.inline_jobs``); no database is used."""
    from pgqueue import Queue  # noqa: PLC0415
    from pgqueue.testing import inline  # noqa: PLC0415

    queue = pgqueue_app if pgqueue_app is not None else Queue()
    with inline(queue):
        yield queue


@pytest.fixture
def pgqueue_drain(pgqueue_queue: Queue) -> Callable[..., WorkerStats]:
    """``pgqueue_drain(timeout=30.0, **worker_options)``: run a real worker on
    ``pgqueue_queue`` until no job of its queues is due or running; its counts."""
    from pgqueue.testing import drain_sync  # noqa: PLC0415

    def drain(**options: Any) -> WorkerStats:
        return drain_sync(pgqueue_queue, **options)

    return drain
