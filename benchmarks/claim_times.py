"""The workers' own claim times, for the soaks: each benchmark worker process given a
directory in ``PGQUEUE_BENCH_CLAIM_TIMES`` writes the round trip of every claim it makes
there (a claim hook, ``queue.on_claim``; benchmarks/bench_app.py registers it), one line
of milliseconds each, and :class:`ClaimTimes` reads what was written since it last
looked. Two workers make about 10,000 claims a million jobs: their p99 is a far steadier
figure than a probe's few hundred samples."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgqueue.hooks import ClaimHook, ClaimRound

ENV = "PGQUEUE_BENCH_CLAIM_TIMES"


def claim_writer(directory: str) -> ClaimHook:
    """A claim hook writing each claim's milliseconds to a file of this process's."""
    out = (Path(directory) / f"claims-{os.getpid()}.txt").open("a", buffering=1)

    def record(claim: ClaimRound) -> None:
        out.write(f"{claim.seconds * 1000:.3f}\n")

    return record


class ClaimTimes:
    """Reads the claim times the workers wrote in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._offsets: dict[Path, int] = {}

    def take(self) -> list[float]:
        """The claims' milliseconds written since the last take (whole lines only)."""
        samples: list[float] = []
        for path in sorted(self._directory.glob("claims-*.txt")):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            whole = data[: data.rfind(b"\n") + 1]
            self._offsets[path] = offset + len(whole)
            samples.extend(float(line) for line in whole.split())
        return samples
