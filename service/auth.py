"""API keys: ``Authorization: Bearer KEY`` on every request but the health checks.

A key is 256 random bits shown once at creation; the database keeps only its SHA-256.
Scopes nest: ``admin`` can do everything, ``enqueue`` can enqueue and read, ``read``
can only read. No key or an unknown one is 401, a key without the scope is 403.
The dashboard's pages also take the key from the cookie its login page sets.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import psycopg
from litestar.enums import ScopeType
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from pgqueue.admin import (
    API_KEY_SCOPES,
    Admin,
    ApiKey,
    ApiKeyScope,
    NewApiKey,
    hash_api_key,
    validate_api_key_request,
)
from pgqueue.app import Queue
from pgqueue.connect import psycopg_connect_args

from .problems import ProblemError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from .state import ServiceState

Scope = ApiKeyScope
SCOPES = API_KEY_SCOPES
_RANK = {scope: rank for rank, scope in enumerate(SCOPES)}
# Paths anyone may call: probes must work without a key.
OPEN_PATHS = {"/healthz", "/readyz"}
# The dashboard (dashboard.py): a browser cannot send a Bearer header when it navigates,
# so requests under this path may instead carry the key in this cookie, which the
# dashboard's login page sets (HttpOnly, SameSite=Strict, Path=/dashboard).
DASHBOARD_PATH = "/dashboard"
DASHBOARD_COOKIE = "pgqueue_dashboard_key"
# The dashboard's fragments, fetched by its pages' script: 401 rather than a redirect.
DASHBOARD_PARTIALS = DASHBOARD_PATH + "/partials/"


def under_root(scope: Mapping[str, Any], path: str) -> str:
    """``path`` of this app as a browser must ask for it: after the ASGI ``root_path``
    when the service is mounted under a prefix of another app (pgqueue.contrib) or
    served behind one. Routing, and so ``scope["path"]``, is without it."""
    root = scope.get("root_path") or ""
    return f"{root.rstrip('/')}{path}" if isinstance(root, str) else path


def dashboard_base(scope: Mapping[str, Any]) -> str:
    """Where the browser finds the dashboard: /dashboard, under the root path if any."""
    return under_root(scope, DASHBOARD_PATH)


@dataclasses.dataclass(frozen=True, slots=True)
class ApiUser:
    key_id: int | None  # None: auth is off (pgqueue dev)
    name: str
    scope: Scope

    def can(self, scope: Scope) -> bool:
        return _RANK[self.scope] >= _RANK[scope]


DEV_USER = ApiUser(key_id=None, name="dev (auth off)", scope="admin")


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, headers={"WWW-Authenticate": 'Bearer realm="pgqueue"'})


class ApiKeyMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        state: ServiceState = connection.app.state.pgqueue
        if not state.settings.auth:
            return AuthenticationResult(user=DEV_USER, auth=None)
        header = connection.headers.get("authorization", "")
        if not header and _is_dashboard(connection.scope["path"]):
            return await _dashboard_cookie(connection, state)
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _unauthorized("this endpoint needs an API key: Authorization: Bearer KEY")
        user = await state.keys.lookup(key.strip())
        if user is None:
            raise _unauthorized("unknown or revoked API key")
        return AuthenticationResult(user=user, auth=key)


def _is_dashboard(path: str) -> bool:
    return path == DASHBOARD_PATH or path.startswith(DASHBOARD_PATH + "/")


async def _dashboard_cookie(
    connection: ASGIConnection[Any, Any, Any, Any], state: ServiceState
) -> AuthenticationResult:
    key = connection.cookies.get(DASHBOARD_COOKIE, "")
    user = await state.keys.lookup(key) if key else None
    if user is not None:
        return AuthenticationResult(user=user, auth=key)
    scope = connection.scope
    path = scope["path"]
    login = f"{dashboard_base(scope)}/login"
    page = scope["type"] == ScopeType.HTTP and scope["method"] == "GET"
    if page and not path.startswith(DASHBOARD_PARTIALS):
        # A page: to the login page, which comes back here once logged in.
        query = scope["query_string"].decode("latin-1")
        here = under_root(scope, path)
        target = urlencode({"next": f"{here}?{query}" if query else here})
        location = f"{login}?{target}"
        raise ProblemError(303, f"log in first: {location}", headers={"Location": location})
    raise ProblemError(401, f"log in first: {login}")


class KeyCache:
    """Looked-up keys, trusted for ``ttl`` seconds (revocation takes that long)."""

    def __init__(self, state: ServiceState, ttl: float) -> None:
        self._state = state
        self._ttl = ttl
        self._known: dict[bytes, tuple[float, ApiUser | None]] = {}

    async def lookup(self, key: str) -> ApiUser | None:
        digest = hash_api_key(key)  # the cache holds no key in the clear
        now = time.monotonic()
        cached = self._known.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._state.connection() as conn:
            found = await self._state.admin.find_api_key(key, conn=conn)
        user = None if found is None else ApiUser(found.id, found.name, found.scope)
        if len(self._known) > 10_000:  # a flood of made-up keys must not grow it forever
            self._known.clear()
        self._known[digest] = (now + self._ttl, user)
        return user


def requires(scope: Scope) -> Any:
    """A route guard: the caller's key must grant ``scope``."""

    # async: a plain function guard would be run in a thread on every request.
    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        user = connection.user
        if not isinstance(user, ApiUser) or not user.can(scope):
            have = user.scope if isinstance(user, ApiUser) else "none"
            raise ProblemError(
                403, f"this needs an API key with scope {scope!r}; yours has {have!r}"
            )

    return guard


# `pgqueue keys`: one short-lived connection per command, through the admin API.


def create_key(dsn: str, *, name: str, scope: Scope) -> NewApiKey:
    """Store a new key's hash; return its id and the key (shown once, never stored).
    InvalidApiKeyError (a ValueError) for a bad name or scope, before connecting."""
    validate_api_key_request(name, scope)
    admin = Admin(Queue(dsn))
    with psycopg.connect(dsn, autocommit=True, **psycopg_connect_args(dsn)) as conn:
        return admin.create_api_key_sync(name, scope, conn=conn)


def list_keys(dsn: str) -> list[ApiKey]:
    """Every key: id, name, scope, created_at, last_used_at, revoked_at."""
    with psycopg.connect(dsn, autocommit=True, **psycopg_connect_args(dsn)) as conn:
        return Admin(Queue(dsn)).list_api_keys_sync(conn=conn)


def revoke_key(dsn: str, key_id: int) -> bool:
    """Revoke a live key; False if there is none with that id."""
    with psycopg.connect(dsn, autocommit=True, **psycopg_connect_args(dsn)) as conn:
        return Admin(Queue(dsn)).revoke_api_key_sync(key_id, conn=conn)
