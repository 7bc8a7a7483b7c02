# ruff: noqa: PT009 - Django's TestCase assertions, as Django projects write them
"""The project's own tests (`manage.py test shop`): Django's test database gets pgqueue's
schema from the app's migration, and a TestCase's transaction holds the jobs its code
enqueues, rolled back after each test like every other row."""

from django.db import connection
from django.test import TestCase
from shop.models import Signup
from shop.tasks import send_welcome


def job_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pgqueue.jobs")
        return cursor.fetchone()[0]


class SignupTests(TestCase):
    def test_the_welcome_is_enqueued_with_the_signup(self) -> None:
        row = Signup.objects.create(email="t@example.com")
        result = send_welcome.enqueue(row.id, row.email)
        self.assertEqual(job_count(), 1)
        self.assertEqual(str(send_welcome.get_result(result.id).status), "READY")

    def test_each_test_starts_without_jobs(self) -> None:
        self.assertEqual(job_count(), 0)
