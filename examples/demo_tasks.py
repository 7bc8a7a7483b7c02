"""The tasks of the demo (``make demo``): the code a worker runs.

Run a worker on them with::

    python -m pgqueue worker examples.demo_tasks:queue --dsn DSN

The Queue is given no DSN: the worker's ``--dsn`` (or ``$PGQUEUE_DSN``) says where the
jobs are. Every task has an explicit name, because the name is what a job row stores:
it must not change when the module is moved or imported under another name.
"""

# ruff: noqa: S311 - `random` here simulates latency and outages; nothing is secret

from __future__ import annotations

import asyncio
import hashlib
import random

import pgqueue

queue = pgqueue.Queue()

# Retries come back fast in the demo; production code keeps the defaults (1 s, doubling).
WEBHOOK_FAILURE_RATE = 0.25
WEBHOOK_MAX_ATTEMPTS = 12  # 0.25 ** 12: a job fails for good about once in 17 million
WEBHOOK_RETRY = pgqueue.RetryPolicy(base=0.1, factor=2.0, max_delay=1.0)
CRM_MAX_ATTEMPTS = 3
CRM_RETRY = pgqueue.RetryPolicy(base=0.2, factor=2.0, max_delay=1.0)
FINGERPRINT_ROUNDS = 1_000


@queue.task(name="emails.send", queue="emails")
async def send_email(to: str, subject: str) -> dict[str, str]:
    """I/O-bound: an async task; hundreds of them wait on the worker's event loop at once."""
    await asyncio.sleep(random.uniform(0.001, 0.01))  # the mail server's round trip
    return {"to": to, "subject": subject, "status": "sent"}


@queue.task(name="emails.reminder", queue="emails")
async def send_reminder(user_id: int) -> str:
    """Enqueued with a delay: no worker claims it before its ``run_at``."""
    await asyncio.sleep(0.01)
    return f"reminded user {user_id}"


@queue.task(name="emails.welcome", queue="emails")
async def send_welcome_email(user_id: int) -> str:
    """Enqueued inside a transaction that is rolled back: it never runs."""
    return f"welcomed user {user_id}"


def fingerprint_of(document_id: int, rounds: int = FINGERPRINT_ROUNDS) -> str:
    """A deliberately CPU-heavy digest: ``rounds`` chained SHA-256 hashes."""
    digest = f"document-{document_id}".encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


@queue.task(name="reports.fingerprint", queue="reports")
def fingerprint(document_id: int, rounds: int = FINGERPRINT_ROUNDS) -> str:
    """CPU-bound: a plain ``def``, so the worker runs it in its thread pool, never on
    the event loop."""
    return fingerprint_of(document_id, rounds)


@queue.task(
    name="webhooks.deliver",
    queue="webhooks",
    max_attempts=WEBHOOK_MAX_ATTEMPTS,
    retry=WEBHOOK_RETRY,
)
async def deliver_webhook(event_id: int, url: str) -> dict[str, int]:
    """Flaky: a quarter of the attempts fail, and the job is retried with backoff."""
    await asyncio.sleep(random.uniform(0.001, 0.005))  # the request
    if random.random() < WEBHOOK_FAILURE_RATE:
        raise ConnectionError(f"POST {url}: 503 Service Unavailable")
    return {"event_id": event_id, "status": 200}


@queue.task(name="crm.sync_contact", queue="crm", max_attempts=CRM_MAX_ATTEMPTS, retry=CRM_RETRY)
def sync_contact(contact_id: int) -> None:
    """Always fails: after ``max_attempts`` the job stays ``failed``, the dead-letter
    state, with one error recorded per attempt."""
    reason = random.choice(["HTTP 500 Internal Server Error", "HTTP 502 Bad Gateway", "timed out"])
    raise RuntimeError(f"CRM refused contact {contact_id}: {reason}")


@queue.task(name="payments.charge", queue="payments")
async def charge_order(order_id: int, amount_cents: int) -> dict[str, int | str]:
    """Enqueued with an idempotency key: a second enqueue of the same charge returns the
    first job instead of charging twice."""
    await asyncio.sleep(0.01)
    return {"order_id": order_id, "amount_cents": amount_cents, "status": "captured"}
