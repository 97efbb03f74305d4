"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right status.

| status | type                  | when                                                     |
|--------|-----------------------|----------------------------------------------------------|
| 400    | invalid_request_error | a bad body or field (`param` names it); context overflow |
|        |                       | (code `context_length_exceeded`)                         |
| 401    | authentication_error  | a missing or wrong API key                               |
| 404    | not_found_error       | an unknown model (code `model_not_found`) or path        |
| 413    | invalid_request_error | a body over the server's limit (`request_too_large`)     |
| 429    | rate_limit_error      | the bounded queue is full (with Retry-After)             |
| 503    | service_unavailable   | draining for shutdown, or the engine is dead             |
"""
from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error", 500: "internal_error",
          503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None, type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after = retry_after
        self.type = type or _TYPES.get(status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(self.retry_after)))} if self.retry_after is not None else None
        if self.status == 401:
            headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_validation(exc: RequestValidationError) -> APIError:
    """The first problem of a body that did not validate, with the field it names as `param`."""
    errors = exc.errors()
    if not errors:
        return invalid("invalid request body")
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x not in ("body",)]
    # a union's branch name (`str`, `list[ContentPart]`) is noise in a field path
    loc = [x for x in loc if not any(ch in x for ch in "[]") and x not in ("str", "int", "list", "dict")]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "json_invalid":
        return invalid(f"the body is not valid JSON: {first.get('ctx', {}).get('error', msg)}")
    if first.get("type") == "missing":
        return invalid(f"missing required field {param!r}", param)
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return invalid(f"{param + ': ' if param else ''}{msg.removeprefix('Value error, ')}{more}", param)


def _counted(request: Request, error: APIError):
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(str(error.status)).inc()
    return error.response()


def install_handlers(app) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return _counted(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return _counted(request, from_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 413: "request_too_large"}.get(exc.status_code)
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        if exc.status_code == 413:
            message = "the request body is over the server's limit (--max-body-bytes)"
        return _counted(request, APIError(exc.status_code, message, code=code))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return _counted(request, APIError(500, f"internal error: {type(exc).__name__}", code="internal_error"))
