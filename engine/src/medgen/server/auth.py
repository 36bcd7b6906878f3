"""The bearer token: made once, kept in ``DATA_DIR/token`` readable only by its owner.

Any local process can reach a loopback port, so the token is what keeps other users of a shared
workstation from reading a patient's scans through the engine.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from fastapi import Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from medgen.server.errors import ApiError

logger = logging.getLogger(__name__)

TOKEN_FILENAME = "token"
_TOKEN_BYTES = 32
# Declared once so the OpenAPI schema shows the scheme; auto_error=False lets us word the 401 ourselves.
_BEARER = HTTPBearer(auto_error=False, description="the token printed by `medgen serve`")


def load_or_create_token(data_dir: Path) -> tuple[str, bool]:
    """The token of ``data_dir`` and whether it was created now (so the caller prints it just once)."""
    path = Path(data_dir) / TOKEN_FILENAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(path), False
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token + "\n")
    return token, True


def _read_token(path: Path) -> str:
    _tighten_permissions(path)
    token = path.read_text(encoding="ascii").strip()
    if not token:
        raise RuntimeError(f"{path} is empty; delete it and start the server again for a new token")
    return token


def _tighten_permissions(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("%s was readable by other users (mode %o); setting it to 600", path, mode)
        os.chmod(path, 0o600)


def token_matches(authorization: bytes, token: str) -> bool:
    """Whether a raw ``Authorization`` header carries ``token`` (for checks made before routing)."""
    scheme, _, credentials = authorization.strip().partition(b" ")
    return scheme.lower() == b"bearer" and secrets.compare_digest(credentials.strip(), token.encode("ascii"))


class BearerTokenAuth:
    """FastAPI dependency: accept the request only with ``Authorization: Bearer <token>``."""

    def __init__(self, token: str):
        self._token = token.encode("ascii")

    async def __call__(self, credentials: HTTPAuthorizationCredentials | None = Security(_BEARER)) -> None:
        if credentials is None:
            raise ApiError(
                401,
                "token_missing",
                "this endpoint needs the engine's token: send 'Authorization: Bearer <token>' with the token "
                "that `medgen serve` printed (it is kept in the file 'token' of its data folder)",
            )
        if not secrets.compare_digest(credentials.credentials.encode("utf-8", "replace"), self._token):
            raise ApiError(
                401,
                "token_wrong",
                "the engine refused the token; copy it again from the file 'token' in the engine's data folder",
            )
