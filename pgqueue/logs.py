"""structlog set-up for pgqueue's commands. The library itself only asks for loggers;
an application that configures structlog its own way keeps its configuration."""

from __future__ import annotations

import json as jsonlib
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import structlog

if TYPE_CHECKING:
    from collections.abc import MutableMapping

# A worker at its default level writes one line per job: the two steps that cost most
# per line, the timestamp and the JSON, are done here at about half structlog's price.
_stamped = {"second": -1, "text": ""}


def utc_timestamp(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """``timestamp``: ISO 8601 in UTC with microseconds (2026-01-02T03:04:05.123456Z);
    the date and time of day are formatted once a second."""
    now = time.time()
    second = int(now)
    if second != _stamped["second"]:
        _stamped["text"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamped["second"] = second
    event_dict["timestamp"] = f"{_stamped['text']}.{int((now - second) * 1e6):06d}Z"
    return event_dict


def format_exc_info(
    logger: Any, name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog's ``format_exc_info``, skipped on the lines that carry no exception."""
    if "exc_info" not in event_dict:
        return event_dict
    return structlog.processors.format_exc_info(logger, name, event_dict)


def _not_json(value: Any) -> Any:
    # What structlog's JSONRenderer does with a value JSON has no type for.
    to_structlog = getattr(value, "__structlog__", None)
    return to_structlog() if callable(to_structlog) else repr(value)


class JSONLines:
    """structlog's JSONRenderer with its encoder built once, not once per line."""

    def __init__(self) -> None:
        self._encode = jsonlib.JSONEncoder(default=_not_json).encode

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> str:
        return self._encode(event_dict)


def configure_logging(
    level: str = "info", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Key-value events on ``stream`` (stderr): JSON lines, or a readable console
    format when ``stream`` is a terminal and ``json`` is not forced."""
    out = stream or sys.stderr
    use_json = not out.isatty() if json is None else json
    renderer: Any = JSONLines() if use_json else structlog.dev.ConsoleRenderer(colors=out.isatty())
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            utc_timestamp,
            format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
