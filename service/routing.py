"""Litestar (2.25) registers a controller's handlers one by one, and the automatic
OPTIONS answer of a path keeps the methods of the first handler only: each controller
stands in for it with an explicit OPTIONS handler, registered first (Litestar orders
handlers by name, and these are named ``allow...``), answering with every method."""

from __future__ import annotations

import functools

from litestar import HttpMethod, Response, route

# The decorator of such a handler: ``@options_route("/")``.
options_route = functools.partial(
    route,
    http_method=HttpMethod.OPTIONS,
    status_code=204,
    include_in_schema=False,
    sync_to_thread=False,
)


def allow(methods: str) -> Response[None]:
    """The answer to OPTIONS: 204 with the path's methods in ``Allow``."""
    return Response(None, status_code=204, headers={"Allow": methods})
