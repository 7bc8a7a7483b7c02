"""A worker app with a periodic task: a job every second, whichever workers run."""

import pgqueue

queue = pgqueue.Queue()


@queue.periodic(every=1, name="every-second")
@queue.task(name="schedule.beat", queue="periodic")
async def beat() -> None:
    pass
