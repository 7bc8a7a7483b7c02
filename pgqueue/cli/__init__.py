"""The ``pgqueue`` command (``pgqueue --help`` says what it does and its exit
statuses): its arguments in :mod:`~pgqueue.cli.options`, its entry point
:func:`~pgqueue.cli.entry.main`, the database it uses in :mod:`~pgqueue.cli.database`,
each command in :mod:`~pgqueue.cli.commands`, failures and exit statuses in
:mod:`~pgqueue.cli.errors`, signals in :mod:`~pgqueue.cli.signals`."""

from pgqueue.cli.commands import is_loopback, load_app
from pgqueue.cli.database import Database, describe_database, select_database
from pgqueue.cli.entry import main
from pgqueue.cli.errors import EXIT_FAILURE, EXIT_UNAVAILABLE, EXIT_USAGE, UsageError
from pgqueue.cli.options import build_parser

__all__ = [
    "EXIT_FAILURE",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "Database",
    "UsageError",
    "build_parser",
    "describe_database",
    "is_loopback",
    "load_app",
    "main",
    "select_database",
]
