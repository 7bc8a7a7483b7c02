"""A FastAPI app with pgqueue: the Queue closed with the app's lifespan and handed to
endpoints by a dependency, a signup that writes its row and enqueues its welcome job in
one transaction of the app's own asyncpg pool, and the pgqueue dashboard and API mounted
as a sub-application under /pgqueue.

Run it (a worker beside it runs the jobs)::

    PGQUEUE_DSN=postgresql://... python -m pgqueue migrate
    PGQUEUE_DSN=postgresql://... python examples/fastapi_app.py       # :8000
    PGQUEUE_DSN=postgresql://... python -m pgqueue worker examples.fastapi_app:queue

    curl -X POST localhost:8000/signup -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com"}'
    open http://localhost:8000/pgqueue/dashboard   # log in with a key: pgqueue keys create

tests/test_contrib_fastapi.py runs it.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import asyncpg
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

import pgqueue
from pgqueue.contrib.fastapi import PgQueue, QueueDep

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

queue = pgqueue.Queue()  # no DSN: $PGQUEUE_DSN (the tests point it at theirs)
pgq = PgQueue(queue)

BLOCKED_DOMAIN = "@blocked.example"
SIGNUPS_TABLE = """
CREATE TABLE IF NOT EXISTS example_signups (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE
)"""


@queue.task(name="examples.send_welcome", queue="emails")
async def send_welcome(user_id: int, email: str) -> str:
    return f"welcome sent to {email} (user {user_id})"


class Signup(BaseModel):
    email: str


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # pgqueue's lifespan inside the app's own: the queue closed and the mounted service
    # stopped when the app stops, after the app's pool.
    async with pgq.lifespan(app):
        pool = await asyncpg.create_pool(queue.dsn, min_size=1, max_size=5)
        try:
            await pool.execute(SIGNUPS_TABLE)
            app.state.db = pool
            yield
        finally:
            await pool.close()


app = FastAPI(lifespan=lifespan)
# The pgqueue API (/pgqueue/v1/...) and dashboard (/pgqueue/dashboard), behind
# pgqueue's own API keys.
app.mount("/pgqueue", pgq.service())


@app.post("/signup", status_code=201)
async def signup(body: Signup, request: Request) -> dict[str, int]:
    pool: asyncpg.Pool[Any] = request.app.state.db
    async with pool.acquire() as conn, conn.transaction():
        user_id: int = await conn.fetchval(
            "INSERT INTO example_signups (email) VALUES ($1) RETURNING id", body.email
        )
        # The job is a row of this transaction: committed with the user, or not at all.
        job = await send_welcome.with_options(conn=conn).enqueue(user_id=user_id, email=body.email)
        if body.email.endswith(BLOCKED_DOMAIN):
            # Raised inside the transaction: it rolls back, and takes the job with it.
            raise HTTPException(400, f"{body.email}: that domain is blocked")
    return {"user_id": user_id, "job_id": job.id}


@app.get("/jobs/{job_id}")
async def job_status(job_id: int, queue: QueueDep) -> dict[str, Any]:
    # The Queue from the dependency, with connections of its own, for anything else.
    job = await queue.get_job(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return {"id": job.id, "state": job.state.value, "result": job.result}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, port=int(os.environ.get("PORT", "8000")))
