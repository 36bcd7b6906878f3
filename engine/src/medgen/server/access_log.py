"""The access log: one line per request that reads or changes a job, for a privacy review to read.

A line holds the time (UTC), the client address, the method and endpoint, the job id and the status;
never a header (so never the token), a query string or any file content. The file is rotated by size.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import time
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_FILENAME = "access.log"
MAX_BYTES = 10 << 20
BACKUP_COUNT = 5
_JOB_PATH = re.compile(r"^/v1/jobs(?:/(?P<job_id>[^/]+))?(?P<rest>/.*)?$")


def open_access_log(path: Path) -> logging.Logger:
    """A logger that writes only to ``path`` (rotated at 10 MiB, 5 old files kept)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        path.touch(mode=0o600)
    os.chmod(path, 0o600)  # client addresses and job ids are for the engine's user only
    logger = logging.getLogger(f"medgen.access.{path}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT,
                                                   encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return logger


def close_access_log(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def access_line(client: str, method: str, path: str, status: int, when: float | None = None) -> str | None:
    """The line for a request under /v1/jobs, or None for any other endpoint."""
    match = _JOB_PATH.match(path)
    if match is None:
        return None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if when is None else when))
    job_id = match.group("job_id") or "-"
    endpoint = path if len(path) <= 300 else path[:300] + "..."
    return f"{stamp} client={client} {method} {_printable(endpoint)} job={_printable(job_id)[:64]} status={status}"


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() and not ch.isspace() else "?" for ch in text)


class AccessLog:
    """ASGI middleware that logs job requests once the response status is known."""

    def __init__(self, app: ASGIApp, logger: logging.Logger):
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/jobs"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "-"
        logged = False

        def log(status: int) -> None:
            nonlocal logged
            line = access_line(address, scope.get("method", "-"), scope["path"], status)
            if line is not None and not logged:
                self.logger.info(line)
            logged = True

        async def send_logging(message: Message) -> None:
            if message["type"] == "http.response.start":
                log(message["status"])  # before the client has the answer, so the log is never behind it
            await send(message)

        try:
            await self.app(scope, receive, send_logging)
        finally:
            if not logged:
                log(500)  # the app failed before answering
