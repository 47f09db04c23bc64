"""Request context, replies, routes and the per-service error formats."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from starlette.datastructures import Headers, QueryParams

from simulator.openstack.model import JSON, ApiError, Token
from simulator.openstack.state import Cloud

# Nova's (and Cinder's) fault names by status (nova/api/openstack/wsgi.py Fault._fault_names);
# every other status is a "computeFault".
FAULT_NAMES = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    429: "overLimit",
    501: "notImplemented",
    503: "serviceUnavailable",
}
NOVA_UNEXPECTED = (
    "Unexpected API Error. Please report this at http://bugs.launchpad.net/nova/ and attach "
    "the Nova API log if possible.\n<class 'simulator.openstack.InjectedFault'>"
)


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, json.dumps(payload).encode(), "application/json", headers or {})

    @classmethod
    def empty(cls, status: int, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, b"", None, headers or {})


@dataclass
class Ctx:
    cloud: Cloud
    method: str
    path: str
    params: dict[str, str]
    query: QueryParams
    headers: Headers
    raw_body: bytes
    service: str
    token: Token | None = None
    # Negotiated microversion (compute and volume), as (major, minor).
    version: tuple[int, int] = (0, 0)

    @property
    def base(self) -> str:
        return self.cloud.base_url

    def at_least(self, major: int, minor: int) -> bool:
        return self.version >= (major, minor)

    def json(self) -> Any:
        if not self.raw_body:
            raise ApiError(400, self._malformed())
        try:
            return json.loads(self.raw_body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, self._malformed()) from None

    def json_object(self, key: str | None = None) -> JSON:
        """The body as an object, optionally unwrapped from its envelope key."""
        body = self.json()
        if not isinstance(body, dict):
            raise ApiError(400, self._malformed())
        if key is None:
            return body
        inner = body.get(key)
        if not isinstance(inner, dict):
            raise ApiError(400, self._required(key, body))
        return inner

    def _malformed(self) -> str:
        if self.service == "network":
            return "Failed to parse request. Required attribute body missing or malformed."
        return "Malformed request body"

    def _required(self, key: str, body: Any) -> str:
        if self.service in ("compute", "volume"):
            return (
                f"Invalid input for field/attribute {key}. Value: {body}. "
                f"'{key}' is a required property"
            )
        return f"Resource body required for {key}"

    def require_token(self) -> Token:
        assert self.token is not None  # the app checked it before dispatching
        return self.token


Handler = Callable[[Ctx], Reply]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    endpoint: str
    handler: Handler
    service: str
    auth: bool = True


def route(
    method: str, path: str, endpoint: str, handler: Handler, service: str, *, auth: bool = True
) -> Route:
    """`path` uses {name} placeholders for one path segment; a trailing slash is optional."""
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path.rstrip("/"))
    return Route(method, re.compile(f"^{regex}/?$"), endpoint, handler, service, auth)


def error_reply(service: str, error: ApiError) -> Reply:
    status = error.status
    headers = dict(error.headers)
    if service in ("compute", "volume"):
        name = error.kind or FAULT_NAMES.get(status, "computeFault")
        return Reply.json(status, {name: {"code": status, "message": error.message}}, headers)
    if service == "network":
        kind = error.kind or _neutron_type(status)
        body = {"NeutronError": {"type": kind, "message": error.message, "detail": ""}}
        return Reply.json(status, body, headers)
    if service == "identity":
        title = _reason(status)
        error_body: JSON = {"code": status, "message": error.message, "title": title}
        return Reply.json(status, {"error": error_body}, headers)
    if service == "image":
        # Glance answers errors through webob: a small HTML page.
        title = f"{status} {_reason(status)}"
        html = (
            f"<html>\n <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n"
            f"  {error.message}<br /><br />\n\n\n\n </body>\n</html>"
        )
        return Reply(status, html.encode(), "text/html; charset=UTF-8", headers)
    return Reply.json(status, {"error": error.message}, headers)


def unauthorized(cloud: Cloud) -> ApiError:
    """keystonemiddleware's answer to a missing or invalid token, in every service."""
    return ApiError(
        401,
        "The request you have made requires authentication.",
        headers={"WWW-Authenticate": f'Keystone uri="{cloud.base_url}/identity"'},
    )


def injected_error(service: str, status: int, message: str | None) -> ApiError:
    if message is None:
        if service == "compute" and status == 500:
            message = NOVA_UNEXPECTED
        else:
            message = f"Simulated fault: {_reason(status)}"
    return ApiError(status, message)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _neutron_type(status: int) -> str:
    return {
        400: "HTTPBadRequest",
        401: "HTTPUnauthorized",
        403: "HTTPForbidden",
        404: "HTTPNotFound",
        409: "HTTPConflict",
        500: "HTTPInternalServerError",
        503: "HTTPServiceUnavailable",
    }.get(status, "HTTPError")
