"""``/v1/sequences``: the sequences with unfinished jobs (jobs sharing a
``sequence_key`` run one at a time, in enqueue order)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import Parameter

from .auth import requires
from .problems import problem_responses
from .schemas import SequenceList, SequenceOut

MAX_SEQUENCES = 1000


class SequencesController(Controller):
    path = "/v1/sequences"
    tags = ["sequences"]  # noqa: RUF012 - Litestar's own class attribute

    @get(
        "/",
        guards=[requires("read")],
        summary="Sequences and their heads",
        responses=problem_responses(400, 401, 403, 503),
    )
    async def list_sequences(
        self,
        request: Request[Any, Any, Any],
        limit: Annotated[int, Parameter(ge=1, le=MAX_SEQUENCES)] = 100,
    ) -> SequenceList:
        """By key: how many jobs each sequence has unfinished, and the job the rest wait
        for (queued, running, or failed and holding them). A sequence with nothing
        unfinished is not listed; its jobs are, in ``GET /v1/jobs``."""
        service = request.app.state.pgqueue
        async with service.reading(request) as conn:
            sequences = await service.admin.list_sequences(limit=limit, conn=conn)
        return SequenceList(sequences=[SequenceOut.of(s) for s in sequences])
