"""The reader-study web app on the standard library's HTTP server: one page per reader, opaque URLs.

Routes (TOKEN: a reader's token; ADMIN: the study's admin token):
  GET  /r/TOKEN                 the reading page
  GET  /r/TOKEN/next            {"key", "position", "total", "crop", "full"} or {"done": true}
  GET  /r/TOKEN/crop/KEY        the case's crop (PNG); /full/KEY its whole slice; only cases assigned to TOKEN
  POST /r/TOKEN/answer          {"key", "answer", "confidence", "realism"}: stored before the reply
  GET  /summary?token=ADMIN     the summary page; /summary.json and /answers.csv alike
"""

from __future__ import annotations

import json
import logging
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from medgen.errors import InputError
from medgen.qa.review.store import Study

logger = logging.getLogger(__name__)

READER_PAGE = Path(__file__).with_name("reader.html")
MAX_BODY_BYTES = 4096
_ROUTE = re.compile(r"^/r/(?P<token>[A-Za-z0-9_-]{8,64})(?:/(?P<action>next|answer|crop|full)(?:/(?P<key>[0-9a-f]{16}))?)?$")


def make_handler(study: Study):
    class ReviewHandler(BaseHTTPRequestHandler):
        server_version = "medgen-review"
        sys_version = ""

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            logger.info("%s %s", self.address_string(), format % args)

        # --- replies ---------------------------------------------------------------------

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: dict) -> None:
            self._send(status, json.dumps(value).encode("utf-8"), "application/json")

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"error": message})

        # --- routes ----------------------------------------------------------------------

        def do_GET(self):  # noqa: N802 - http.server's name
            url = urlparse(self.path)
            if url.path in ("/summary", "/summary.json", "/answers.csv"):
                return self._summary(url)
            match = _ROUTE.match(url.path)
            reader = study.reader_by_token(match["token"]) if match else None
            if reader is None:
                return self._error(404, "no such page; use the link you were given")
            action, key = match["action"], match["key"]
            if action is None:
                return self._send(200, READER_PAGE.read_bytes(), "text/html; charset=utf-8")
            if action == "next":
                key, answered, total = study.progress(reader)
                if key is None:
                    return self._json(200, {"done": True, "answered": answered, "total": total})
                base = f"/r/{reader.token}"
                return self._json(200, {"done": False, "key": key, "position": answered + 1, "total": total,
                                        "crop": f"{base}/crop/{key}", "full": f"{base}/full/{key}"})
            if action in ("crop", "full") and key and study.is_assigned(reader, key):
                return self._send(200, study.case_image(key, action), "image/png")
            return self._error(404, "no such image")

        def do_POST(self):  # noqa: N802
            match = _ROUTE.match(urlparse(self.path).path)
            reader = study.reader_by_token(match["token"]) if match else None
            if reader is None or match["action"] != "answer":
                return self._error(404, "no such page")
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY_BYTES:
                return self._error(400, f"the answer must be a JSON body under {MAX_BODY_BYTES} bytes")
            try:
                body = json.loads(self.rfile.read(length))
                stored = study.record_answer(reader, str(body["key"]), str(body["answer"]),
                                             int(body["confidence"]), int(body["realism"]))
            except (ValueError, KeyError, TypeError) as exc:
                return self._error(400, f"bad answer: {exc}")
            except InputError as exc:
                return self._error(400, exc.problem)
            return self._json(200, {"stored": stored})

        def _summary(self, url) -> None:
            from medgen.qa.review.summary import answers_csv, summary_html, summary_json

            if parse_qs(url.query).get("token", [""])[0] != study.admin_token():
                return self._error(403, "the summary needs the study's admin token (?token=...)")
            if url.path == "/summary":
                return self._send(200, summary_html(study).encode("utf-8"), "text/html; charset=utf-8")
            if url.path == "/summary.json":
                return self._json(200, summary_json(study))
            return self._send(200, answers_csv(study).encode("utf-8"), "text/csv; charset=utf-8")

    return ReviewHandler


def make_server(study: Study, host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(study))
    server.daemon_threads = True
    return server
