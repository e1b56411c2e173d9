"""The API's errors: each a status and a code, rendered as `{"error": {"code", "message"}}`."""

from __future__ import annotations


class ApiError(Exception):
    status = 400

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class Gone(ApiError):
    status = 410


class TooLarge(ApiError):
    status = 413


class Overloaded(ApiError):
    status = 429


class Unavailable(ApiError):
    status = 503
