"""The dashboard's browser session: the login cookie's attributes, where a login may
send the browser next, and CSRF protection.

Every POST must carry the session's CSRF token, rendered into the page's forms: an HMAC
of the API key keyed by a random per-browser cookie (HttpOnly, SameSite=Strict), so a
page of another site can neither read nor compute it, and a token is good only for one
browser and one key. A browser's cross-site POST is refused outright as well, and so
is any POST whose ``Origin`` (or, without one, ``Referer``) is not this site: the
request's own scheme and ``Host``, so a reverse proxy must pass ``Host`` through.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from litestar.datastructures import Cookie

from .auth import DASHBOARD_PATH, dashboard_base
from .problems import ProblemError

if TYPE_CHECKING:
    from litestar import Request
    from litestar.datastructures import FormMultiDict

# A random value per browser, the secret of its CSRF tokens.
NONCE_COOKIE = "pgqueue_dashboard_nonce"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_log = structlog.get_logger("pgqueue.service")


def safe_next(raw: object, base: str = DASHBOARD_PATH) -> str:
    """Where to go after logging in: a dashboard path of this site (``base``, the
    dashboard's path as the browser sees it), never elsewhere."""
    if not isinstance(raw, str) or not raw.startswith(base):
        return base
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or "\\" in raw or any(c.isspace() for c in raw):
        return base
    return raw


def csrf_token(nonce: str, key: str) -> str:
    """The token of a session: its browser's nonce cookie, bound to its API key."""
    message = b"pgqueue dashboard csrf\0" + key.encode("utf-8")
    return hmac.new(nonce.encode("utf-8"), message, hashlib.sha256).hexdigest()


def request_key(request: Request[Any, Any, Any]) -> str:
    """The key the request was authenticated with ("" for none: auth off, login)."""
    auth = request.scope.get("auth")
    return auth if isinstance(auth, str) else ""


def _authority(scheme: str, netloc: str) -> str:
    """host[:port], lower case, without the scheme's default port."""
    netloc = netloc.strip().lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default and netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return netloc


def same_origin(request: Request[Any, Any, Any]) -> bool | None:
    """Whether the browser says the request comes from a page of this site: its
    ``Origin``, else its ``Referer``, against the request's scheme and ``Host``. None
    when it sends neither (not a browser, or an old one: the CSRF token still holds)."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed:
        return None
    try:
        parts = urlsplit(claimed)
    except ValueError:
        return False
    scheme = parts.scheme.lower()  # "" for Origin: null (a sandboxed or opaque page)
    own_scheme = request.scope.get("scheme", "http")
    # A page over https posting to http: TLS ended at a proxy that did not say so
    # (X-Forwarded-Proto). The other way round, an http page may have been tampered with.
    if scheme not in ("http", "https") or scheme not in (own_scheme, "https"):
        return False
    host = request.headers.get("host")
    if not host:
        server = request.scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else ""
    return _authority(scheme, parts.netloc) == _authority(own_scheme, host)


async def checked_form(request: Request[Any, Any, Any], key: str | None = None) -> FormMultiDict:
    """The posted form, once its CSRF token is the session's (else 403)."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise ProblemError(403, "the dashboard refuses posts from other sites")
    if same_origin(request) is False:
        _log.info("dashboard_post_refused", reason="foreign origin", path=request.url.path)
        raise ProblemError(
            403,
            "the dashboard refuses posts from other origins (behind a reverse proxy, "
            "pass the Host header through)",
        )
    form = await request.form()
    sent = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    nonce = request.cookies.get(NONCE_COOKIE)
    key = request_key(request) if key is None else key
    if (
        not nonce
        or not isinstance(sent, str)
        or not hmac.compare_digest(sent, csrf_token(nonce, key))
    ):
        raise ProblemError(403, "missing or wrong CSRF token: reload the page and try again")
    return form


def session_cookie(request: Request[Any, Any, Any], name: str, value: str) -> Cookie:
    return Cookie(
        key=name,
        value=value,
        path=dashboard_base(request.scope),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
