"""The sync face is generated from the async one (scripts/async_to_sync.py): a stale
generated file, or a hand edit to it, fails here, so the two faces cannot drift."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import pgqueue
from pgqueue import driver, driver_sync
from pgqueue.admin.calls import AdminCalls
from pgqueue.admin.calls_sync import AdminCallsSync
from pgqueue.queue_calls import QueueCalls
from pgqueue.queue_calls_sync import QueueCallsSync

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
async_to_sync = importlib.import_module("async_to_sync")


def test_the_generated_sync_face_is_up_to_date():
    check = subprocess.run(
        [sys.executable, "scripts/async_to_sync.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_hand_edit_to_a_generated_file_is_caught(tmp_path):
    spec = async_to_sync.MODULES[1]
    wanted = async_to_sync.generate(spec)
    assert wanted == spec.target_path.read_text()
    edited = wanted.replace("def enqueue_sync(", "def enqueue_sync_renamed(")
    assert edited != wanted  # what --check compares: any difference is stale


def _coroutines(obj: object) -> set[str]:
    return {name for name, value in vars(obj).items() if inspect.iscoroutinefunction(value)}


def _plain(obj: object) -> set[str]:
    return {
        name
        for name, value in vars(obj).items()
        if inspect.isfunction(value) and not inspect.iscoroutinefunction(value)
    }


def test_every_async_operation_has_its_sync_twin():
    own = {n for n in _plain(driver) if getattr(driver, n).__module__ == driver.__name__}
    generated = {
        n for n in _plain(driver_sync) if getattr(driver_sync, n).__module__ == driver_sync.__name__
    }
    async_ops = {n for n in _coroutines(driver) if getattr(driver, n).__module__ == driver.__name__}
    assert async_ops == generated - own


@pytest.mark.parametrize(
    ("source", "generated"), [(QueueCalls, QueueCallsSync), (AdminCalls, AdminCallsSync)]
)
def test_every_async_method_has_a_sync_twin_with_the_same_parameters(source, generated):
    methods = _coroutines(source)
    assert methods
    assert {f"{m}_sync" for m in methods} <= _plain(generated)
    for name in methods:
        async_params = inspect.signature(getattr(source, name)).parameters
        sync_params = inspect.signature(getattr(generated, f"{name}_sync")).parameters
        assert list(async_params) == list(sync_params), name


def test_the_public_classes_carry_both_faces():
    assert issubclass(pgqueue.Queue, QueueCalls)
    assert issubclass(pgqueue.Queue, QueueCallsSync)
    assert issubclass(pgqueue.Admin, AdminCalls)
    assert issubclass(pgqueue.Admin, AdminCallsSync)


gen_job_options = importlib.import_module("gen_job_options")


def test_the_job_option_fields_are_generated_from_their_one_table():
    check = subprocess.run(
        [sys.executable, "scripts/gen_job_options.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("path", ["pgqueue/jobs.py", "service/schemas.py"])
def test_a_hand_edit_to_a_generated_option_field_is_caught(path):
    text = (ROOT / path).read_text()
    assert gen_job_options.generate(path, text) == text
    edited = text.replace("    priority: int", "    priority: float", 1)
    edited = edited.replace("    priority: Annotated[int", "    priority: Annotated[float", 1)
    assert edited != text
    assert gen_job_options.generate(path, edited) == text  # --check reports the difference
