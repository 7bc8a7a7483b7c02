"""manage.py task_result ID: a task's result as JSON (exit 1 for an unknown id)."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from shop.results import TaskResultDoesNotExist, describe


class Command(BaseCommand):
    help = "Print a task result as JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("result_id")

    def handle(self, *_args: str, **options: Any) -> None:
        try:
            described = describe(options["result_id"])
        except TaskResultDoesNotExist as exc:
            raise CommandError(f"no task result {options['result_id']}") from exc
        self.stdout.write(json.dumps(described))
