"""A Litestar app with pgqueue: the plugin closes the Queue with the app and injects it,
a signup writes its row and enqueues its welcome job in one transaction of the request,
and the pgqueue dashboard and API are served by this same app under /pgqueue.

Run it (a worker beside it runs the jobs)::

    PGQUEUE_DSN=postgresql://... python -m pgqueue migrate
    PGQUEUE_DSN=postgresql://... python examples/litestar_app.py       # :8000
    PGQUEUE_DSN=postgresql://... python -m pgqueue worker examples.litestar_app:queue

    curl -X POST localhost:8000/signup -d '{"email": "ada@example.com"}'
    curl -X POST localhost:8000/signup -d '{"email": "eve@blocked.example"}'   # 422, no row, no job
    open http://localhost:8000/pgqueue/dashboard   # log in with a key: pgqueue keys create

tests/test_contrib_litestar.py runs it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import psycopg
from litestar import Litestar, get, post
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, JSONBody

import pgqueue
from pgqueue.contrib.litestar import PgQueuePlugin, QueueDep

queue = pgqueue.Queue()  # no DSN: $PGQUEUE_DSN (the tests point it at theirs)

BLOCKED_DOMAIN = "@blocked.example"
SIGNUPS_TABLE = """
CREATE TABLE IF NOT EXISTS example_signups (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE
)"""


@queue.task(name="examples.send_welcome", queue="emails")
async def send_welcome(user_id: int, email: str) -> str:
    return f"welcome sent to {email} (user {user_id})"


@dataclasses.dataclass
class Signup:
    email: str


@post("/signup")
async def signup(data: JSONBody[Signup], queue: QueueDep) -> dict[str, int]:
    # The app's own connection and transaction (an ORM session would do as well).
    async with await psycopg.AsyncConnection.connect(queue.dsn) as conn, conn.transaction():
        cursor = await conn.execute(
            "INSERT INTO example_signups (email) VALUES (%s) RETURNING id", (data.email,)
        )
        row = await cursor.fetchone()
        assert row is not None  # noqa: S101 - RETURNING gives the row
        # The job is a row of this transaction: committed with the user, or not at all.
        job = await send_welcome.with_options(conn=conn).enqueue(user_id=row[0], email=data.email)
        if data.email.endswith(BLOCKED_DOMAIN):
            # Raised inside the transaction: it rolls back, and takes the job with it.
            raise ValidationException(f"{data.email}: that domain is blocked")
    return {"user_id": row[0], "job_id": job.id}


@get("/jobs/{job_id:int}")
async def job_status(job_id: FromPath[int], queue: QueueDep) -> dict[str, Any]:
    # The injected Queue, with connections of its own, for anything else.
    job = await queue.get_job(job_id)
    if job is None:
        raise NotFoundException(f"no job {job_id}")
    return {"id": job.id, "state": job.state.value, "result": job.result}


async def create_table() -> None:
    async with await psycopg.AsyncConnection.connect(queue.dsn, autocommit=True) as conn:
        await conn.execute(SIGNUPS_TABLE)


def create_app() -> Litestar:
    return Litestar(
        route_handlers=[signup, job_status],
        on_startup=[create_table],
        # The queue closed with the app and injected as `queue`; the pgqueue API and
        # dashboard under /pgqueue, behind pgqueue's own API keys.
        plugins=[PgQueuePlugin(queue, mount_path="/pgqueue")],
    )


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, port=int(os.environ.get("PORT", "8000")))
