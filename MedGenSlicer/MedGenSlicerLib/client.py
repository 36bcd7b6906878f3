"""HTTP client of the engine (urllib only): every call has a timeout, every failure a sentence to act on.

Errors are `EngineError` subclasses whose message is meant to be shown to the user as is.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from .payload import JobUpload
from .results import JobResult

DEFAULT_URL = "http://127.0.0.1:8765"
DEFAULT_TIMEOUT_S = 10.0
UPLOAD_TIMEOUT_S = 300.0
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_FILENAME = "token"  # in the engine's data folder, written by `medgen serve`


class EngineError(Exception):
    """Any failure talking to the engine; ``str()`` is the message for the user."""


class EngineUnreachable(EngineError):
    """Nothing answers at the URL (refused, unknown host, network down)."""


class NotAnEngine(EngineError):
    """Something answers at the URL, but not a MedGen engine (wrong port or path)."""


class EngineAuthError(EngineError):
    """The token is missing or wrong."""


class EngineBusy(EngineError):
    """The engine's queue is full (429)."""


class EngineTimeout(EngineError):
    """The engine did not answer in time."""


class RequestRefused(EngineError):
    """The engine refused the request (4xx) and said why."""

    def __init__(self, message: str, status: int, code: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.code = code


class EngineFailure(EngineError):
    """The engine hit an internal error (5xx)."""


class JobFailed(EngineError):
    """The job ended in failure; the message is the engine's reason."""


class InsecureTransport(EngineError):
    """The token would travel unencrypted (plain http) to another machine; the user has not agreed."""


def is_loopback(url: str) -> bool:
    """Whether ``url`` names this machine (the token then never leaves it)."""
    return urllib.parse.urlsplit(normalize_url(url)).hostname in _LOOPBACK_HOSTS


def engine_data_dir() -> Path:
    """The folder a local `medgen serve` keeps its token in: ``$MEDGEN_DATA_DIR``, else
    ``$XDG_DATA_HOME/medgen`` (``~/.local/share/medgen``), as the engine chooses it."""
    if os.environ.get("MEDGEN_DATA_DIR"):
        return Path(os.environ["MEDGEN_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).expanduser() / "medgen"


def local_engine_token(url: str, data_dir: Optional[Path] = None) -> Optional[str]:
    """The token of an engine on this machine, read from its data folder; None for a remote URL or
    when no readable token file is there. Saves the user pasting it, and keeps it out of settings files."""
    try:
        if not is_loopback(url):
            return None
    except EngineError:
        return None
    path = Path(data_dir) if data_dir is not None else engine_data_dir()
    try:
        token = (path / TOKEN_FILENAME).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def normalize_url(url: str) -> str:
    """``host:port`` → ``http://host:port``; refuses anything that is not plain http(s) to a host."""
    url = (url or "").strip()
    if not url:
        raise EngineError("enter the engine URL, for example " + DEFAULT_URL)
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EngineError(f"the engine URL must look like {DEFAULT_URL}, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise EngineError(f"the engine URL is just scheme, host and port (like {DEFAULT_URL}), got {url!r}")
    try:
        _ = parts.port  # urllib checks the port only when asked
    except ValueError:
        raise EngineError(f"the port in {url!r} is not a number from 1 to 65535") from None
    return f"{parts.scheme}://{parts.netloc}"


class EngineClient:
    """One engine at ``url`` with ``token``."""

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                 upload_timeout: float = UPLOAD_TIMEOUT_S, allow_plain_http: bool = False):
        self.url = normalize_url(url)
        self.token = (token or "").strip()
        host = urllib.parse.urlsplit(self.url).hostname
        if self.url.startswith("http://") and host not in _LOOPBACK_HOSTS and not allow_plain_http:
            raise InsecureTransport(
                f"{self.url} is another machine over plain http: the token and the scans would travel unencrypted. "
                f"Use https (or an SSH tunnel to a local port), or agree to send them in the clear"
            )
        self.allow_plain_http = allow_plain_http
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        handlers = []
        if urllib.parse.urlsplit(self.url).hostname in _LOOPBACK_HOSTS:
            handlers.append(urllib.request.ProxyHandler({}))  # a system proxy must not see loopback traffic
        self._opener = urllib.request.build_opener(*handlers)

    # --- endpoints ---------------------------------------------------------------------------

    def health(self) -> dict:
        return self._json("GET", "/v1/health", auth=False)

    def check_connection(self) -> dict:
        """Health, then info with the token: tells a wrong URL from a bad token. Returns /v1/info."""
        try:
            health = self.health()
        except RequestRefused as exc:
            raise NotAnEngine(
                f"{self.url} answers, but it is not a MedGen engine (HTTP {exc.status} on /v1/health); "
                f"check the URL and port that `medgen serve` printed"
            ) from None
        if not isinstance(health, dict) or health.get("status") != "ok":
            raise NotAnEngine(f"{self.url} answers, but not like a MedGen engine; check the URL and port")
        if not self.token:
            raise EngineAuthError("enter the token that `medgen serve` printed (also in the file 'token' "
                                  "of the engine's data folder)")
        return self.info()

    def info(self) -> dict:
        return self._json("GET", "/v1/info")

    def submit(self, upload: JobUpload) -> dict:
        """Queue a job; returns its id and place in the queue."""
        body, length, content_type = upload.encode_stream()  # files are read as they are sent, not held
        try:
            return self._json("POST", "/v1/jobs", body=body, content_type=content_type, timeout=self.upload_timeout,
                              content_length=length)
        except EngineUnreachable:
            # A server that answers before reading the whole upload (bad token, full queue) closes the
            # connection under us; ask a cheap question to learn why.
            self.info()
            self._queue_room()
            raise

    def status(self, job_id: str) -> dict:
        return self._json("GET", f"/v1/jobs/{_quote(job_id)}")

    def cancel(self, job_id: str) -> dict:
        """Stop a queued or running job (its results so far stay on the engine)."""
        try:
            return self._json("POST", f"/v1/jobs/{_quote(job_id)}/cancel")
        except NotAnEngine:
            # engines before the cancel endpoint cancelled on DELETE (and kept the job)
            return self._json("DELETE", f"/v1/jobs/{_quote(job_id)}")

    def delete_job(self, job_id: str) -> dict:
        """Delete a finished job's files and results from the engine (DELETE on a finished job; a job
        already deleted answers 410, raised as RequestRefused with that status)."""
        return self._json("DELETE", f"/v1/jobs/{_quote(job_id)}")

    def report(self, job_id: str) -> bytes:
        """The finished job's self-contained HTML report."""
        return self._request("GET", f"/v1/jobs/{_quote(job_id)}/report", accept="text/html",
                             timeout=self.upload_timeout)

    def result(self, job_id: str) -> JobResult:
        return JobResult.from_json(self._json("GET", f"/v1/jobs/{_quote(job_id)}/result"))

    def export(self, job_id: str, destination: str, *, variant: int = 1, deidentify: bool = False) -> dict:
        """Start sending a finished variant to a PACS configured on the engine, by its name in /v1/info.

        Returns at once with the export's id and ``status_url``; follow it with `export_status`.
        """
        body = json.dumps({"destination": destination, "variant": int(variant), "deidentify": bool(deidentify)})
        return self._json("POST", f"/v1/jobs/{_quote(job_id)}/export", body=body.encode("utf-8"),
                          content_type="application/json")

    def export_status(self, job_id: str, export_id: str) -> dict:
        """State and counts of an export; once finished, a message and one result per instance."""
        return self._json("GET", f"/v1/jobs/{_quote(job_id)}/exports/{_quote(export_id)}")

    def download(self, path: str, *, timeout: Optional[float] = None) -> bytes:
        """A result file by the path the manifest gives (``/v1/jobs/.../array.nrrd``)."""
        if not path.startswith("/v1/"):
            raise ValueError(f"expected an engine path starting with /v1/, got {path!r}")
        return self._request("GET", path, timeout=timeout or self.upload_timeout)

    # --- plumbing ----------------------------------------------------------------------------

    def _queue_room(self) -> None:
        info = self.info()
        queue, limits = info.get("queue", {}), info.get("limits", {})
        if queue.get("queued", 0) >= limits.get("max_queued_jobs", float("inf")):
            raise EngineBusy(f"the engine's queue is full ({queue.get('queued')} jobs waiting); "
                             f"wait for a job to finish or cancel one")

    def _json(self, method: str, path: str, **kwargs):
        data = self._request(method, path, **kwargs)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise NotAnEngine(f"{self.url}{path} did not answer with JSON; is this the MedGen engine's URL?") from None

    def _request(
        self,
        method: str,
        path: str,
        *,
        body=None,
        content_type: Optional[str] = None,
        auth: bool = True,
        timeout: Optional[float] = None,
        accept: str = "application/json",
        content_length: Optional[int] = None,
    ) -> bytes:
        headers = {"Accept": accept}
        if content_length is not None:  # a body given as chunks
            headers["Content-Length"] = str(content_length)
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        timeout = timeout or self.timeout
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, path) from None
        except urllib.error.URLError as exc:
            raise self._network_error(exc.reason, timeout) from None
        except (socket.timeout, TimeoutError) as exc:
            raise self._network_error(exc, timeout) from None
        except (ConnectionError, OSError) as exc:
            raise self._network_error(exc, timeout) from None

    def _http_error(self, exc: urllib.error.HTTPError, path: str) -> EngineError:
        try:
            body = exc.read()
        except OSError:
            body = b""
        try:
            error = json.loads(body.decode("utf-8"))["error"]
            message, code = str(error["message"]), str(error.get("code"))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            message, code = None, None
        if message is None:
            return NotAnEngine(
                f"{self.url} answered HTTP {exc.code} to {path} like no MedGen engine would, so it is not a "
                f"MedGen engine; check the URL and port that `medgen serve` printed"
            )
        if exc.code == 401:
            return EngineAuthError(f"the engine refused the token: {message}")
        if exc.code == 429:
            return EngineBusy(message)
        if 400 <= exc.code < 500:
            return RequestRefused(message, exc.code, code)
        return EngineFailure(f"the engine failed (HTTP {exc.code}): {message}")

    def _network_error(self, reason, timeout: float) -> EngineError:
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return EngineTimeout(f"the engine at {self.url} did not answer within {timeout:g} s; "
                                 f"it may be overloaded, or the URL points at something that never answers")
        if isinstance(reason, ConnectionRefusedError) or getattr(reason, "errno", None) == errno.ECONNREFUSED:
            return EngineUnreachable(f"nothing is listening at {self.url} (connection refused); start the engine "
                                     f"with `medgen serve`, or check the port")
        if isinstance(reason, socket.gaierror):
            return EngineUnreachable(f"the host in {self.url} is unknown; check the engine URL")
        if isinstance(reason, (ConnectionResetError, BrokenPipeError)):
            return EngineUnreachable(f"the engine at {self.url} closed the connection; check the engine's window "
                                     f"for an error")
        return EngineUnreachable(f"cannot reach the engine at {self.url}: {reason}")


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")
