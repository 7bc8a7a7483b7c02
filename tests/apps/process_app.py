"""Tasks that run in the worker's process pool (process=True): the pool's processes
import this module by name, so the tasks live at module level."""

import os
import time
from pathlib import Path

import pgqueue

queue = pgqueue.Queue()


@queue.task(name="proc.pid", queue="proc", process=True)
def pid() -> int:
    job = pgqueue.current_job()
    assert job.task == "proc.pid"
    return os.getpid()


@queue.task(name="proc.hang", queue="proc", process=True, timeout=0.5, max_attempts=1)
def hang(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(120)  # a C call no exception can interrupt: only ending the process will


@queue.task(name="proc.spin", queue="proc", process=True)
def spin(n: int) -> int:
    return sum(i * i for i in range(n))
