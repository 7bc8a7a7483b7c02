"""Routing pgqueue's log events (structlog) to the stdlib ``logging`` a Django or FastAPI
app already configures: its handlers, formatters and levels then apply to pgqueue's
lines too, the worker's included.

    pgqueue worker stdlib_logging:queue --dsn postgresql://...

pgqueue only asks structlog for loggers (named ``pgqueue.worker``, ``pgqueue.cli``...);
``pgqueue worker`` configures structlog for its own output before it imports your app,
so the configuration your module makes on import (below) is the one that holds. In
Django, put both parts in ``settings.py`` (``LOGGING`` is Django's own setting, applied
by Django); in FastAPI, in the module that makes the app, before it is made.
"""

from __future__ import annotations

import logging.config

import structlog

import pgqueue

# Your app's stdlib logging, as Django's settings.LOGGING or a FastAPI app's dictConfig
# has it. ProcessorFormatter renders structlog's events (and plain logging records, via
# foreign_pre_chain) with the same processors.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "()": structlog.stdlib.ProcessorFormatter,
            "fmt": "%(levelname)s %(name)s %(message)s",
            "processors": [
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
            ],
            "foreign_pre_chain": [structlog.processors.TimeStamper(fmt="iso")],
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "loggers": {
        # pgqueue's loggers are all under "pgqueue": give them their own level here.
        "pgqueue": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
}


def route_structlog_to_stdlib() -> None:
    """structlog's events become stdlib log records, of the logger named as pgqueue names
    it (``pgqueue.worker``...), formatted by the handlers' ProcessorFormatter."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,  # the stdlib logger's level decides
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


logging.config.dictConfig(LOGGING)
route_structlog_to_stdlib()

queue = pgqueue.Queue()


@queue.task(name="example.hello")
def hello(name: str) -> str:
    logging.getLogger("pgqueue.example").info("saying hello to %s", name)
    return f"hello {name}"
