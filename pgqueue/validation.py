"""Building and checking jobs before anything is written: the one place where a
job's fields are validated (:func:`build_job`), so that the library, the API and the
CLI refuse the same things with the same InvalidJobError. Each option is checked by
its entry in :data:`pgqueue.job_options.JOB_OPTIONS`; the rules between options are
here. Pure functions shared by the sync and async faces; no I/O here."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Unpack

from pgqueue.checks import encode_json, validate_task_name
from pgqueue.errors import InvalidJobError
from pgqueue.job_options import OPTION_DEFAULTS, OPTION_NAMES, OPTIONS_BY_NAME
from pgqueue.jobs import CheckedJobSpec, JobOptions, JobSpec

if TYPE_CHECKING:
    from collections.abc import Iterable

# How many hex digits of the SHA-256 of (task, args) a default unique key keeps: 192
# bits, and a task name of 200 characters plus the digest still fits UNIQUE_KEY_MAX.
_ARGS_DIGEST_CHARS = 48
# The options each enforced by its own index and statement: at most one per job.
# depends_on among them: a dependant waits 'blocked', a state neither a key's index nor
# a sequence's count knows (pgqueue/sql/workflows.sql).
_MODES = ("idempotency_key", "unique_for", "debounce", "sequence_key", "depends_on")
# Options of a job with parents: given by depends_on, or by its place in a Workflow.
_PARENT_OPTIONS = ("on_parent_failure", "parent_results_arg")


def build_job(
    task: str, args: dict[str, Any] | None = None, **options: Unpack[JobOptions]
) -> JobSpec:
    """Check every field of a job and return it ready to insert: the one place where a
    job's fields are validated, so that the library, the API and the CLI refuse the same
    things with the same InvalidJobError, naming the field, before anything is written.
    An option left out or None takes its default (see :class:`JobOptions`)."""
    validate_task_name(task)
    if args is None:
        args = {}
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise InvalidJobError(
            "args must be a dict with string keys (the task's keyword arguments)", field="args"
        )
    args_json = encode_json(args, "args")
    values = OPTION_DEFAULTS.copy()
    given: list[str] = []
    for name, value in options.items():
        if value is not None:
            option = OPTIONS_BY_NAME.get(name)
            if option is None:
                check_option_names(options)  # raises, naming every unknown option
            else:
                values[name] = option.check(value)
                given.append(name)
    if len(given) > 1:
        _check_combinations(given)
    if values["unique_for"] is not None or values["debounce"] is not None or "unique_key" in given:
        values["unique_key"] = _unique_key(task, args_json, values, given)
    _fill_failure_defaults(values, given)
    # values is in JobSpec's order (OPTION_DEFAULTS is the table's): no keywords to match.
    return CheckedJobSpec._make((task, args_json, *values.values()))


def _fill_failure_defaults(values: dict[str, Any], given: list[str]) -> None:
    """What a job of a sequence, or with parents, does when one fails: the default
    unless given; sequence_on_failure only with a sequence_key."""
    if values["sequence_key"] is not None and values["sequence_on_failure"] is None:
        values["sequence_on_failure"] = "hold"
    elif "sequence_on_failure" in given and values["sequence_key"] is None:
        raise InvalidJobError(
            "sequence_on_failure needs a sequence_key", field="sequence_on_failure"
        )
    if values["depends_on"] is not None and values["on_parent_failure"] is None:
        values["on_parent_failure"] = "cancel"


def _check_combinations(given: list[str]) -> None:
    """The rules between options: run_at or delay, and at most one mode."""
    if "run_at" in given and "delay" in given:
        raise InvalidJobError("give run_at or delay, not both", field="run_at")
    modes = [name for name in _MODES if name in given]
    if len(modes) > 1:
        raise InvalidJobError(
            f"give one of {', '.join(_MODES)}, not {' and '.join(modes)}", field=modes[1]
        )


def _unique_key(task: str, args_json: str, values: dict[str, Any], given: list[str]) -> str:
    """The job's unique key: the one given, else its mode's default (see
    pgqueue/sql/uniqueness.sql)."""
    if "unique_key" in given:
        if values["unique_for"] is None and values["debounce"] is None:
            raise InvalidJobError(
                "unique_key is the key of unique_for or debounce: give one of them too",
                field="unique_key",
            )
        key: str = values["unique_key"]
        return key
    if values["unique_for"] is not None:
        return default_unique_key(task, args_json)
    return task  # a debounced job's args change: the task alone is the default key


def default_unique_key(task: str, args_json: str) -> str:
    """The key of a unique window given without unique_key: the task and a digest of its
    arguments in canonical JSON (keys sorted), so that the same call gives the same key
    whatever the order its keyword arguments were written in."""
    canonical = json.dumps(json.loads(args_json), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{task}\x00{canonical}".encode()).hexdigest()
    return f"{task}:{digest[:_ARGS_DIGEST_CHARS]}"


def check_option_names(options: JobOptions) -> None:
    """TypeError for a misspelt option, as Python raises for a bad keyword argument (a
    ``**options`` catches any name, and an unknown one must not pass unnoticed)."""
    unknown = options.keys() - OPTION_NAMES
    if unknown:
        raise TypeError(
            f"unexpected job option(s) {', '.join(sorted(unknown))}; the options are "
            f"{', '.join(sorted(OPTION_NAMES))}"
        )


def has_options(options: JobOptions) -> bool:
    """Whether any option is set (None means "the default", as if left out)."""
    return any(v is not None for v in options.values())


def build_with_options(
    task: str, args: dict[str, Any] | None, options: JobOptions, *, task_defaults: JobOptions
) -> JobSpec:
    """:func:`build_job` with ``options`` over a task's defaults (its queue, priority and
    attempts): None takes the default; "" is refused by build_job like any bad name."""
    merged: Any = task_defaults.copy()
    for name, value in options.items():
        if value is not None:
            merged[name] = value
    return build_job(task, args, **merged)  # which refuses a misspelt option


def check_spec(spec: JobSpec) -> JobSpec:
    """Check a JobSpec made without :func:`build_job` (its constructor checks nothing)
    against the same rules, so that no path writes what build_job would refuse."""
    return check_parent_options(check_spec_fields(spec))


def check_spec_fields(spec: JobSpec) -> JobSpec:
    """:func:`check_spec` but for the parent options, which a job of a Workflow may take
    without depends_on (its parents are its place in the graph)."""
    if type(spec) is CheckedJobSpec:
        return spec
    if not isinstance(spec, JobSpec):
        raise InvalidJobError(
            f"a {type(spec).__name__} is not a JobSpec: build jobs with task.job(...) or "
            "queue.build(...)"
        )
    if not isinstance(spec.args_json, str):
        raise InvalidJobError("args_json must be JSON text", field="args")
    try:
        args = json.loads(spec.args_json)
    except (ValueError, RecursionError) as exc:
        raise InvalidJobError(f"args_json is not valid JSON: {exc}", field="args") from exc
    # A field at its default counts as not given (a JobSpec always holds every field:
    # delay's 0.0 beside a run_at is no conflict).
    given: Any = {
        name: value
        for name, default in OPTION_DEFAULTS.items()
        if not _is_default(value := getattr(spec, name), default)
    }
    return build_job(spec.task, args, **given)


def check_parent_options(spec: JobSpec) -> JobSpec:
    """A job enqueued alone takes on_parent_failure and parent_results_arg only with
    depends_on (a job of a Workflow may take them from its place in the graph, so
    build_job allows them without)."""
    if spec.depends_on is None:
        for name in _PARENT_OPTIONS:
            if getattr(spec, name) is not None:
                raise InvalidJobError(
                    f"{name} needs depends_on (or a place after other jobs in a Workflow)",
                    field=name,
                )
    return spec


def _is_default(value: object, default: object) -> bool:
    # By type too: False is not the default priority 0, but a bad value to refuse.
    return value is default or (type(value) is type(default) and value == default)


def all_keyed(specs: list[JobSpec]) -> bool:
    # Enqueueing again after a connection lost mid-statement is safe only when every
    # job has an idempotency key: a job that did get in is then found, not doubled.
    return all(spec.idempotency_key is not None for spec in specs)


def check_specs(jobs: Iterable[JobSpec]) -> list[JobSpec]:
    """The batch as a list of checked jobs; a bad item (or one that fails as it is built,
    when ``jobs`` is a generator) raises InvalidJobError naming its index."""
    specs: list[JobSpec] = []
    try:
        for spec in jobs:
            specs.append(check_spec(spec))  # noqa: PERF401 - len(specs) names a bad item
    except InvalidJobError as exc:
        index = len(specs)  # the item being built or checked when it failed
        raise InvalidJobError(f"item {index}: {exc}", field=exc.field, index=index) from exc
    return specs
