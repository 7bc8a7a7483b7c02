"""Shared by the raw-loop feasibility benchmarks (slot_feasibility, rate_feasibility):
start the loop's child processes, let them all go at once, collect their last lines."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pgqueue.claim_cursor import claim_starts, start_params  # noqa: E402

QUEUE = "bench"
WORKERS = 2  # processes, one connection each
BATCH = 100
LOCK_SPACE = 4242  # the advisory lock space of the loops' limited claims
HEAD_PARAMS = start_params(claim_starts([QUEUE], None))  # claim_jobs from the head


async def run_children(module: str, mode: str, dsn: str, count: int) -> tuple[list[bytes], float]:
    """Start ``count`` processes of ``python -m module --child mode --dsn dsn``, wait
    until each prints ``ready``, send them all ``go``, and return each one's output after
    ``ready`` and the seconds from the go to the last exit."""
    pipe = asyncio.subprocess.PIPE
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, "--child", mode, "--dsn", dsn,
            stdin=pipe, stdout=pipe, cwd=str(ROOT),
        )
        for _ in range(count)
    ]  # fmt: skip
    for p in procs:
        assert p.stdout is not None  # noqa: S101
        line = await asyncio.wait_for(p.stdout.readline(), 60)
        assert line.strip() == b"ready", line  # noqa: S101
    start = time.perf_counter()
    for p in procs:
        assert p.stdin is not None  # noqa: S101
        p.stdin.write(b"go\n")
        await p.stdin.drain()
    outputs = [(await asyncio.wait_for(p.communicate(), 300))[0] for p in procs]
    return outputs, time.perf_counter() - start


def print_ratios(results: dict[str, list[float]], modes: list[str]) -> None:
    """Each mode's median jobs/s and its median ratio to the unlimited run of its pair."""
    med = {m: statistics.median(v) for m, v in results.items()}
    print("medians: " + ", ".join(f"{m} {v:,.0f} jobs/s" for m, v in med.items()))
    for m in modes[1:]:
        ratios = [x / u for x, u in zip(results[m], results["unlimited"], strict=True)]
        print(f"median paired ratio {m}/unlimited {statistics.median(ratios):.2f}")


def argument_parser(modes: list[str], pairs: int) -> argparse.ArgumentParser:
    """The options both raw-loop benchmarks take (``--child`` is how they run a loop)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn")
    parser.add_argument("--child")
    parser.add_argument("--pairs", type=int, default=pairs)
    parser.add_argument("--modes", default=",".join(modes), help="which loops, unlimited first")
    parser.add_argument("--jobs", type=int, default=20_000)
    return parser
