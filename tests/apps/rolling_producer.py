"""A producer for the rolling-deploy test: ``python rolling_producer.py DSN START``
enqueues rolling.record jobs n = START, START + 1, ... (one statement each) until
SIGTERM, then exits 0. Prints, as JSON lines, the pgqueue package it imported first and
how many jobs it enqueued last. Only API that the last release has too."""

import json
import signal
import sys
import time
from pathlib import Path

import pgqueue


def main() -> int:
    dsn, start = sys.argv[1], int(sys.argv[2])
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    queue = pgqueue.Queue(dsn)
    print(json.dumps({"pgqueue": str(Path(pgqueue.__file__).resolve().parent)}), flush=True)
    n = start
    try:
        while not stopping:
            queue.enqueue_sync("rolling.record", {"n": n}, queue="rolling")
            n += 1
            time.sleep(0.01)  # a steady flow, not a flood: the workers keep up
    finally:
        queue.close_sync()
    print(json.dumps({"enqueued": n - start}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
