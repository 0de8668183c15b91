"""Errors the API answers with a 4xx and a human message (never a stack trace)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 400

    def __init__(self, message: str, status: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Extra fields of the answer beside "error" (e.g. what a partial write did publish).
        self.details = dict(details or {})
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class TooLarge(ApiError):
    status = 413


class Unprocessable(ApiError):
    status = 422


class Unavailable(ApiError):
    """Kafka did not take (all of) a write: the message and ``details`` say what happened."""

    status = 503
