"""pgqueue's HTTP service: a Litestar app for enqueueing and watching jobs from any
language, with API keys, Prometheus metrics and a dashboard.

Shipped inside the distribution as ``pgqueue.service`` (never as a top-level package
named ``service``); ``pgqueue api`` serves it.
"""

from .app import create_app
from .settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
