"""manage.py signup EMAIL [--fail]: what the signup view does, from the command line."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from shop.models import Signup
from shop.tasks import send_welcome


class Command(BaseCommand):
    help = "Create a signup and enqueue its welcome email, in one transaction."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument("--fail", action="store_true", help="raise after the enqueue")

    def handle(self, *_args: str, **options: Any) -> None:
        with transaction.atomic():
            row = Signup.objects.create(email=options["email"])
            result = send_welcome.enqueue(row.id, row.email)
            if options["fail"]:
                raise CommandError("failed after the enqueue: the signup and its job roll back")
        self.stdout.write(json.dumps({"signup": row.id, "task_result": result.id}))
