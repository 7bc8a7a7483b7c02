"""The Litestar application."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from litestar import Litestar
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from .auth import OPEN_PATHS, ApiKeyMiddleware
from .dashboard import DASHBOARD_HANDLERS, template_config
from .dashboard_flow import DashboardFlowController
from .dashboard_schedules import DashboardSchedulesController
from .dashboard_workflows import DashboardWorkflowsController
from .health import healthz, readyz
from .http_limits import JsonBodyMiddleware, RequestLimits
from .jobs import JobsController
from .limit_schemas import document_limits
from .limits import LimitsController
from .logs import RequestObserver
from .metrics import Metrics, metrics_endpoint
from .problems import EXCEPTION_HANDLERS
from .queues import QueuesController
from .replica import ReadHeaders, ReplicaCollector
from .schedule_schemas import document_schedules
from .schedules import SchedulesController
from .schemas import document
from .sequences import SequencesController
from .state import ServiceState
from .workflows import WorkflowsController

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .settings import ServiceSettings


def create_app(settings: ServiceSettings) -> Litestar:
    """The service for one database. Serve it with any ASGI server (``pgqueue api``)."""
    state = ServiceState(settings)
    metrics = Metrics(settings.metrics_cache_seconds)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    exclude = [f"^{path}$" for path in OPEN_PATHS] + ["^/schema"]
    app = Litestar(
        route_handlers=[
            JobsController,
            QueuesController,
            SchedulesController,
            LimitsController,
            SequencesController,
            WorkflowsController,
            healthz,
            readyz,
            metrics_endpoint,
            *DASHBOARD_HANDLERS,
            DashboardSchedulesController,
            DashboardFlowController,
            DashboardWorkflowsController,
        ],
        template_config=template_config(),
        middleware=[
            DefineMiddleware(ApiKeyMiddleware, exclude=exclude),
            JsonBodyMiddleware(),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="pgqueue",
            version="1",
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
            security=[{"bearer": []}],
        ),
        state=State({"pgqueue": state, "pgqueue_metrics": metrics}),
    )
    # This server's limits into its OpenAPI description (built here, once).
    document(app.openapi_schema, settings)
    document_schedules(app.openapi_schema)
    document_limits(app.openapi_schema)
    if state.replica is not None:
        metrics.registry.register(ReplicaCollector(state.replica))
    # Around everything, 404s included: access log, request id, request metrics; inside
    # them, where each request's reads went (the read replica's headers).
    app.asgi_handler = RequestObserver(
        RequestLimits(ReadHeaders(app.asgi_handler), settings.http), metrics
    )
    return app
