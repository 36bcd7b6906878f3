"""Errors of the server layers; `ApiError` carries the HTTP status and the sentence the client shows."""

from __future__ import annotations


class ApiError(Exception):
    """An error answered as JSON ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str):
        self.status = status
        self.code = code
        self.message = message
        super().__init__(message)


class QueueFull(ApiError):
    def __init__(self, queued: int):
        super().__init__(
            429,
            "queue_full",
            f"the engine's queue is full ({queued} jobs waiting); wait for a job to finish or cancel one",
        )


class JobCancelled(Exception):
    """Raised from the progress callback so a running job stops at its next denoising step."""


class ServerStopping(Exception):
    """Raised from the progress callback when the server shuts down; the job goes back to the queue."""
