"""The project's tasks: plain Django tasks, nothing pgqueue-specific."""

from typing import Any

try:
    from django.tasks import task
except ImportError:  # Django 5.2, with the django-tasks backport
    from django_tasks import task

from shop.models import Signup


@task(queue_name="emails")
def send_welcome(signup_id: int, email: str) -> str:
    Signup.objects.filter(id=signup_id).update(welcomed=True)
    return f"welcome sent to {email}"


@task()
def fail(reason: str) -> None:
    raise ValueError(reason)


@task(takes_context=True)
def which_attempt(context: Any, label: str) -> dict:  # a TaskContext
    return {"label": label, "attempt": context.attempt, "id": context.task_result.id}


@task()
async def add(a: int, b: int) -> int:
    return a + b
