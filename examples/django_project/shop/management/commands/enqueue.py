"""manage.py enqueue shop.tasks.NAME [--args JSON] [--kwargs JSON] [--priority N]
[--queue-name NAME] [--delay SECONDS]: enqueue any task of the project."""

import datetime as dt
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone
from django.utils.module_loading import import_string


class Command(BaseCommand):
    help = "Enqueue a task by its module path; prints its result id."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("task")
        parser.add_argument("--args", dest="task_args", default="[]")
        parser.add_argument("--kwargs", dest="task_kwargs", default="{}")
        parser.add_argument("--priority", type=int)
        parser.add_argument("--queue-name")
        parser.add_argument("--delay", type=float, help="run_after: this many seconds from now")

    def handle(self, *_args: str, **options: Any) -> None:
        task = import_string(options["task"])
        run_after = None
        if options["delay"] is not None:
            run_after = timezone.now() + dt.timedelta(seconds=options["delay"])
        task = task.using(
            priority=options["priority"], queue_name=options["queue_name"], run_after=run_after
        )
        result = task.enqueue(
            *json.loads(options["task_args"]), **json.loads(options["task_kwargs"])
        )
        self.stdout.write(result.id)
