"""HTTP plumbing shared by the OCF provisioning API, the billing API and the service endpoints.

- Bearer-token authentication with two roles: ``read`` (GET) and ``admin`` (everything).
  Tokens are compared in constant time and never logged.
- Errors as JSON ``{"error": ..., "detail": ...}`` with the right 4xx; pydantic
  validation errors name the field.
- Request bodies above ``max_body`` are refused (413) before they are read.
- An OpenAPI 3.1 document assembled from the paths each package contributes.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

log = logging.getLogger("charging.web")

ROLE_READ = "read"
ROLE_ADMIN = "admin"

M = TypeVar("M", bound=BaseModel)
HandlerFn = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class ApiAuth:
    """Token -> role.  An empty table means authentication is off (only for local development)."""

    tokens: dict[str, str] = field(default_factory=dict)
    public_paths: tuple[str, ...] = ("/health", "/ready", "/metrics", "/openapi.json")

    def role_of(self, header: str | None) -> str | None:
        if not header or not header.startswith("Bearer "):
            return None
        presented = header[7:].strip().encode()
        found = None
        for token, role in self.tokens.items():
            if hmac.compare_digest(token.encode(), presented):
                found = role
        return found


AUTH_KEY = web.AppKey("charging_auth", ApiAuth)
ROLE_KEY = web.RequestKey("charging_role", str)  # the authenticated caller's role; "" for public paths


def json_error(status: int, error: str, detail: Any = None) -> web.Response:
    body: dict[str, Any] = {"error": error}
    if detail is not None:
        body["detail"] = detail
    return web.json_response(body, status=status)


@web.middleware
async def auth_middleware(request: web.Request, handler: HandlerFn) -> web.StreamResponse:
    auth = request.app.get(AUTH_KEY)
    path = request.path
    if auth is None or not auth.tokens or path in auth.public_paths or path.startswith("/static/"):
        request[ROLE_KEY] = ROLE_ADMIN if auth is None or not auth.tokens else ""
        return await handler(request)
    if request.method == "GET" and (path in ("/", "/ui") or path.startswith("/ui/")):
        request[ROLE_KEY] = ""  # the page itself; its data calls carry the token
        return await handler(request)
    role = auth.role_of(request.headers.get("Authorization"))
    if role is None:
        return json_error(401, "unauthorized", "a valid bearer token is required")
    if request.method not in ("GET", "HEAD", "OPTIONS") and role != ROLE_ADMIN:
        return json_error(403, "forbidden", "this token may only read")
    request[ROLE_KEY] = role
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: HandlerFn) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return json_error(exc.status, exc.reason or "error", exc.text if exc.text != exc.reason else None)
        raise
    except ValidationError as exc:
        return json_error(422, "invalid request", _pydantic_errors(exc))
    except ApiError as exc:
        return json_error(exc.status, exc.error, exc.detail)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal error")


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


def _pydantic_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]} for e in exc.errors()]


async def read_model(request: web.Request, model: type[M]) -> M:
    """The request body validated as ``model``; 400 for bad JSON, 422 naming the field otherwise."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "request body too large") from None
    try:
        data = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ApiError(400, "body is not valid JSON", str(exc)) from None
    return model.model_validate(data)


def query_int(request: web.Request, name: str, default: int, low: int = 0, high: int = 10_000) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, f"query parameter {name} must be between {low} and {high}")
    return value


def make_app(auth: ApiAuth | None = None, max_body: int = 1 << 20) -> web.Application:
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=max_body)
    if auth is not None:
        app[AUTH_KEY] = auth
    return app


@dataclass(slots=True)
class OpenApi:
    """Collects the paths and schemas each package contributes into one OpenAPI document."""

    title: str = "charging"
    version: str = "0.1.0"
    paths: dict[str, Any] = field(default_factory=dict)
    schemas: dict[str, Any] = field(default_factory=dict)

    def add_model(self, model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            self.schemas[name] = sub
        self.schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def add(self, path: str, method: str, operation: dict[str, Any]) -> None:
        self.paths.setdefault(path, {})[method.lower()] = operation

    def document(self) -> dict[str, Any]:
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version},
            "paths": self.paths,
            "components": {
                "schemas": self.schemas,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
            "security": [{"bearer": []}],
        }


OPENAPI_KEY = web.AppKey("charging_openapi", OpenApi)


def serve_openapi(app: web.Application, spec: OpenApi) -> None:
    app[OPENAPI_KEY] = spec

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(spec.document())

    app.router.add_get("/openapi.json", openapi)
