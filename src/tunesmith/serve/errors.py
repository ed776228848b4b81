"""Errors as OpenAI sends them: an HTTP status and ``{"error": {message, type, param, code}}``.

Clients (the official ``openai`` library, LangChain, …) read ``error.code`` and the
status to decide whether to retry, so both follow OpenAI's conventions exactly.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from tunesmith.errors import TunesmithError


class ServeError(TunesmithError):
    """A server that cannot start as asked (a public bind without a key, a bad key file)."""


class APIError(Exception):
    """An error answer to one request; raised anywhere in a handler, sent as the envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def model_not_found(name: str) -> APIError:
    return APIError(
        404,
        f"The model `{name}` does not exist. GET /v1/models lists the models served here.",
        code="model_not_found",
        param="model",
    )
