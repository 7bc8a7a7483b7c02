"""A TaskResult as JSON, for the view and the task_result command."""

try:
    from django.tasks import default_task_backend
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:  # Django 5.2, with the django-tasks backport
    from django_tasks import default_task_backend
    from django_tasks.exceptions import TaskResultDoesNotExist

__all__ = ["TaskResultDoesNotExist", "describe"]


def describe(result_id: str) -> dict:
    """TaskResultDoesNotExist for an unknown id."""
    result = default_task_backend.get_result(result_id)
    described = {
        "id": result.id,
        "task": result.task.module_path,
        "queue_name": result.task.queue_name,
        "priority": result.task.priority,
        "status": str(result.status),
        "attempts": result.attempts,
        "args": result.args,
        "kwargs": result.kwargs,
        "enqueued_at": result.enqueued_at and result.enqueued_at.isoformat(),
        "started_at": result.started_at and result.started_at.isoformat(),
        "finished_at": result.finished_at and result.finished_at.isoformat(),
        "errors": [
            {"exception_class_path": e.exception_class_path, "traceback": e.traceback}
            for e in result.errors
        ],
    }
    if str(result.status) == "SUCCESSFUL":
        described["return_value"] = result.return_value
    return described
