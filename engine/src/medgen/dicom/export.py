"""Send synthetic series to a PACS: DIMSE C-ECHO/C-STORE (pynetdicom) or STOW-RS (dicomweb-client).

What a user relies on:

- every instance gets a typed result (status category mapped as pynetdicom maps DIMSE statuses),
  and a peer that stops answering is an error, never a silently short table;
- a dropped association is retried with exponential backoff and the export resumes where it
  stopped; a local record (JSON lines, one per instance that reached the destination) lets a
  second run send what is missing and nothing twice;
- refusals read as sentences: an unknown called or calling AE title, a refused SOP class, a TLS
  failure, a wrong password;
- ``deidentify=True`` applies the PS3.15 basic profile with one pseudonym secret per export (kept
  in the record, so a resumed export produces the same UIDs and a PACS sees no duplicates).
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import hashlib
import json
import logging
import os
import re
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pydicom
from pydicom.uid import UID, SegmentationStorage

from medgen.errors import InputError, MedgenError

logger = logging.getLogger(__name__)

DEFAULT_CALLING_AET = "MEDGEN"
# Presentation context IDs are odd numbers 1..255: at most 128 per association, one for Verification.
MAX_CONTEXTS = 127
RECORD_SCHEMA = "medgen.export-record/1"
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no control chars


# ---------------------------------------------------------------------- errors


class ExportError(MedgenError):
    """The export could not finish; ``report`` holds the per-instance results so far."""

    def __init__(self, message: str, report: "ExportReport | None" = None):
        super().__init__(message)
        self.report = report


class ConnectionFailedError(ExportError):
    """Nothing answered at the destination (refused, unreachable, timed out)."""


class AssociationRejectedError(ExportError):
    """The destination rejected the association (unknown AE titles among the reasons)."""


class TlsError(ExportError):
    """The TLS handshake failed (certificate not trusted on either side, TLS expected or not)."""


class PeerSilentError(ExportError):
    """The destination stopped answering mid-export, and every retry failed too."""


class DicomWebError(ExportError):
    """The DICOMweb server refused the request (authentication, missing endpoint)."""


class _Transient(Exception):
    """A failure worth retrying: the association dropped, the destination is restarting."""

    def __init__(self, message: str, *, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable  # nothing answered at all (vs. an answer that stopped)


# ---------------------------------------------------------------------- results


class InstanceStatus(str, enum.Enum):
    SUCCESS = "success"
    WARNING = "warning"  # stored, with the destination noting a coercion or similar
    FAILURE = "failure"
    ALREADY_SENT = "already sent"  # by an earlier run, according to the record
    NOT_SENT = "not sent"  # the export stopped before reaching it

    @property
    def delivered(self) -> bool:
        return self in (InstanceStatus.SUCCESS, InstanceStatus.WARNING, InstanceStatus.ALREADY_SENT)


@dataclass(frozen=True)
class InstanceResult:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str  # as sent (the pseudonymised UID when de-identified)
    status: InstanceStatus
    status_code: int | None = None
    message: str = ""


@dataclass
class ExportReport:
    destination: str
    results: list[InstanceResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.status.delivered for r in self.results)

    def count(self, status: InstanceStatus) -> int:
        return sum(1 for r in self.results if r.status is status)

    def table(self) -> str:
        if not self.results:
            return f"{self.destination}: nothing to send"
        from medgen.dicom.validate import display_path

        names = [display_path(r.path) for r in self.results]
        width = min(max(len(n) for n in names), 60)
        lines = [f"{'FILE':<{width}}  {'STATUS':<12}  {'CODE':<6}  MESSAGE"]
        for name, r in zip(names, self.results):
            code = f"{r.status_code:04X}" if r.status_code is not None else ""
            lines.append(f"{name:<{width}}  {r.status.value:<12}  {code:<6}  {r.message}".rstrip())
        summary = ", ".join(f"{self.count(s)} {s.value}" for s in InstanceStatus if self.count(s))
        lines.append(f"{self.destination}: {len(self.results)} instance(s): {summary}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- destinations


@dataclass(frozen=True)
class TlsOptions:
    """PEM files for DICOM TLS (PS3.15 B.1): the CA to trust, and our client certificate and key."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the server; a bad file is an InputError naming it."""
        for path in (self.ca_file, self.cert_file, self.key_file):
            if path is not None and not Path(path).is_file():
                raise InputError(path, "no such file")
        if (self.cert_file is None) != (self.key_file is None):
            raise InputError(None, "give --tls-cert and --tls-key together")
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
            )
            if self.cert_file is not None:
                context.load_cert_chain(str(self.cert_file), str(self.key_file))
        except ssl.SSLError as exc:
            raise InputError(self.cert_file or self.ca_file, f"cannot load TLS certificate or key: {exc}") from exc
        return context


@dataclass(frozen=True)
class DimseDestination:
    called_aet: str
    host: str
    port: int
    calling_aet: str = DEFAULT_CALLING_AET
    tls: TlsOptions | None = None

    @classmethod
    def parse(cls, url: str, *, calling_aet: str = DEFAULT_CALLING_AET, tls: TlsOptions | None = None):
        """``dicom://CALLED_AET@HOST:PORT`` (``dicoms://`` is accepted as a reminder that TLS is on)."""
        match = re.fullmatch(r"dicoms?://([^@]+)@(\[[^\]]+\]|[^:/]+):(\d+)/?", url)
        if not match:
            raise InputError(None, f"--to {url!r} is not dicom://CALLED_AET@HOST:PORT")
        called, host, port = match.group(1), match.group(2).strip("[]"), int(match.group(3))
        for name, aet in (("called AE title", called), ("--calling-aet", calling_aet)):
            if not _AE_TITLE.match(aet) or not aet.strip():
                raise InputError(None, f"{name} {aet!r} must be 1-16 printable characters without a backslash")
        if not 0 < port < 65536:
            raise InputError(None, f"port must be in 1..65535, got {port}")
        return cls(called, host, port, calling_aet, tls)

    def __str__(self) -> str:
        scheme = "dicoms" if self.tls else "dicom"
        return f"{scheme}://{self.called_aet}@{self.host}:{self.port} (as {self.calling_aet})"


@dataclass(frozen=True)
class DicomWebDestination:
    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None

    def __post_init__(self):
        parsed = urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InputError(None, f"DICOMweb URL {self.url!r} must be http(s)://HOST[:PORT]/PATH")
        if (self.user is None) != (self.password is None):
            raise InputError(None, "give --user and --password-file together")

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class ExportOptions:
    """Timeouts (seconds) and the retry policy; the defaults suit a PACS on a hospital network."""

    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    http_timeout: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    stow_batch: int = 16

    def __post_init__(self):
        if self.max_retries < 0:
            raise InputError(None, f"--retries must be >= 0, got {self.max_retries}")
        for name in ("connect_timeout", "acse_timeout", "dimse_timeout", "network_timeout", "http_timeout"):
            if getattr(self, name) <= 0:
                raise InputError(None, f"{name} must be > 0, got {getattr(self, name)}")

    def backoff(self, failures: int) -> float:
        return min(self.backoff_s * 2 ** max(failures - 1, 0), self.backoff_max_s)


# ---------------------------------------------------------------------- the instances


@dataclass
class _Instance:
    path: Path  # the file as written by the engine
    send_path: Path  # what goes on the wire (a de-identified copy, or the file itself)
    sop_class_uid: UID
    sop_instance_uid: str  # of the file as written
    sent_uid: str  # as sent
    transfer_syntax: UID
    key: str  # identity in the record: source SOP Instance UID + content hash

    def result(self, status: InstanceStatus, code: int | None = None, message: str = "") -> InstanceResult:
        return InstanceResult(self.path, str(self.sop_class_uid), self.sent_uid, status, code, message)


def collect_instances(series_dirs: Sequence[str | Path]) -> list[_Instance]:
    """Every DICOM file under the folders, images before SEGs (a PACS then knows what a SEG refers to)."""
    from medgen.dicom.validate import find_dicom_files

    files, _ = find_dicom_files(list(series_dirs))
    instances = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many kinds on damaged files
            raise InputError(path, f"cannot read DICOM file: {exc}") from exc
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        if not syntax or "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            raise InputError(path, "lacks a Transfer Syntax, SOP Class or SOP Instance UID; not sendable")
        if ds.get("BurnedInAnnotation") == "YES":
            logger.warning("%s: Burned In Annotation is YES: its pixels may show identifying text, which "
                           "de-identification does not remove", path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        instances.append(_Instance(path, path, UID(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SOPInstanceUID),
                                   UID(syntax), f"{ds.SOPInstanceUID}:{digest}"))
    if not instances:
        raise InputError(None, f"no DICOM files under {', '.join(str(s) for s in series_dirs)}")
    instances.sort(key=lambda i: (i.sop_class_uid == SegmentationStorage, str(i.path)))
    return instances


# ---------------------------------------------------------------------- the resume record


def default_record_dir() -> Path:
    """$MEDGEN_STATE_DIR, else $XDG_STATE_HOME/medgen, else ~/.local/state/medgen; then exports/."""
    if os.environ.get("MEDGEN_STATE_DIR"):
        root = Path(os.environ["MEDGEN_STATE_DIR"])
    elif os.environ.get("XDG_STATE_HOME"):
        root = Path(os.environ["XDG_STATE_HOME"]) / "medgen"
    else:
        root = Path.home() / ".local" / "state" / "medgen"
    return root / "exports"


def export_id(series_dirs: Sequence[str | Path], destination, deidentify: bool) -> str:
    """The same folders to the same destination (with the same de-identification) is the same export."""
    text = "\n".join([str(destination), str(bool(deidentify)), *sorted(str(Path(p).resolve()) for p in series_dirs)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


class ExportRecord:
    """Append-only JSON lines: a header, then one line per instance the destination accepted.

    Written and flushed to disk after every instance, so a crash loses at most the instance in
    flight; that one is sent again, under the same UID, which a PACS treats as the same instance.
    """

    def __init__(self, path: str | Path, export_id: str, destination: str, *, want_secret: bool = False):
        self.path = Path(path)
        self.export_id = export_id
        self._sent: dict[str, dict] = {}
        self.secret_hex: str | None = None
        if self.path.exists():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            header = {"schema": RECORD_SCHEMA, "export_id": export_id, "destination": destination,
                      "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            if want_secret:
                import secrets

                header["deid_secret"] = self.secret_hex = secrets.token_hex(32)
            self._append(header)
            os.chmod(self.path, 0o600)  # the pseudonym secret lives here
        if want_secret and self.secret_hex is None:
            raise InputError(self.path, "this export record has no de-identification secret; use a new --record")

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0])
            entries = [json.loads(line) for line in lines[1:] if line.strip()]
        except (IndexError, json.JSONDecodeError) as exc:
            raise InputError(self.path, f"not an export record: {exc}") from exc
        if header.get("schema") != RECORD_SCHEMA:
            raise InputError(self.path, "not an export record")
        if header.get("export_id") != self.export_id:
            raise InputError(self.path, "belongs to another export (other folders, destination or de-identification)")
        self.secret_hex = header.get("deid_secret")
        self._sent = {e["key"]: e for e in entries if "key" in e}

    def _append(self, entry: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def is_sent(self, key: str) -> bool:
        return key in self._sent

    def sent_count(self) -> int:
        return len(self._sent)

    def mark_sent(self, instance: _Instance, code: int | None) -> None:
        entry = {"key": instance.key, "sent_uid": instance.sent_uid, "path": str(instance.path),
                 "status": code, "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        self._append(entry)
        self._sent[instance.key] = entry


# ---------------------------------------------------------------------- the export


def export_series(
    series_dirs: Sequence[str | Path],
    destination: DimseDestination | DicomWebDestination,
    *,
    deidentify: bool = False,
    record_path: str | Path | None = None,
    options: ExportOptions | None = None,
    on_result: Callable[[InstanceResult], None] | None = None,
) -> ExportReport:
    """Send every instance under ``series_dirs``; return one result per instance.

    Raises an :class:`ExportError` subclass (with the partial report) when the destination
    refuses the association or the TLS handshake, or stays silent through every retry.
    ``on_result`` is called after each instance (progress display; tests use it to interrupt).
    """
    # 1. Check inputs and find what to send
    options = options or ExportOptions()
    instances = collect_instances(series_dirs)
    tls_context = destination.tls.ssl_context() if isinstance(destination, DimseDestination) and destination.tls \
        else None
    ident = export_id(series_dirs, destination, deidentify)
    record = ExportRecord(record_path or default_record_dir() / f"{ident}.jsonl", ident, str(destination),
                          want_secret=deidentify)

    with tempfile.TemporaryDirectory(prefix="medgen-export-") as staging:
        # 2. De-identify into a staging folder, with the export's own secret
        if deidentify:
            _deidentify_into(instances, Path(staging), record.secret_hex)

        # 3. What an earlier run already delivered is not sent again
        report = ExportReport(str(destination))
        results: dict[int, InstanceResult] = {}
        pending = []
        for index, instance in enumerate(instances):
            if record.is_sent(instance.key):
                results[index] = instance.result(InstanceStatus.ALREADY_SENT, message="sent by an earlier run")
            else:
                pending.append(index)

        # 4. Send, retrying with backoff whenever the connection drops
        def finish(result_index: int, result: InstanceResult) -> None:
            results[result_index] = result
            if on_result is not None:
                on_result(result)

        try:
            if isinstance(destination, DimseDestination):
                _send_dimse(instances, pending, destination, tls_context, options, record, finish)
            else:
                _send_stow(instances, pending, destination, options, record, finish)
        except ExportError as error:
            error.report = _report(report, instances, results)
            raise
        return _report(report, instances, results)


def _report(report: ExportReport, instances: list[_Instance], results: dict[int, InstanceResult]) -> ExportReport:
    report.results = [results.get(i) or inst.result(InstanceStatus.NOT_SENT, message="the export stopped first")
                      for i, inst in enumerate(instances)]
    return report


def _deidentify_into(instances: list[_Instance], staging: Path, secret_hex: str) -> None:
    from medgen.dicom.deidentify import Deidentifier

    deidentifier = Deidentifier.from_hex(secret_hex)
    for n, instance in enumerate(instances):
        target = staging / f"{n:06d}.dcm"
        deidentifier.deidentify_file(instance.path, target)
        instance.send_path = target
        instance.sent_uid = str(deidentifier.uid(instance.sop_instance_uid))


def _retry_loop(pending: list[int], options: ExportOptions, attempt: Callable[[], None], what: str) -> None:
    """Call ``attempt`` until nothing is pending; back off after failures, give up after max_retries.

    An attempt that got anything through resets the count: a long export over a flaky link
    finishes as long as each reconnection makes progress.
    """
    failures = 0
    while pending:
        before = len(pending)
        try:
            attempt()
            failures = 0
        except _Transient as exc:
            failures = 1 if len(pending) < before else failures + 1
            if failures > options.max_retries:
                kind = ConnectionFailedError if exc.unreachable else PeerSilentError
                raise kind(
                    f"{what}: {exc}; gave up after {options.max_retries} retries. Run the same command again to "
                    "send the rest (nothing is sent twice)"
                ) from exc
            delay = options.backoff(failures)
            logger.warning("%s: %s; retry %d/%d in %.1f s", what, exc, failures, options.max_retries, delay)
            time.sleep(delay)


# ---------------------------------------------------------------------- DIMSE


def _send_dimse(instances, pending, destination: DimseDestination, tls_context, options, record, finish) -> None:
    state = {"echoed": False}

    def attempt() -> None:
        _one_association(instances, pending, destination, tls_context, options, record, finish, state)

    _retry_loop(pending, options, attempt, str(destination))


def _contexts_for(instances: list[_Instance], pending: list[int]) -> tuple[list[int], list[tuple[UID, UID]]]:
    """The pending instances that fit one association, and their (SOP class, transfer syntax) pairs.

    Each instance is sent in the transfer syntax it is stored in, so the bytes that arrive are the
    bytes that were written.
    """
    batch, contexts = [], []
    for index in pending:
        pair = (instances[index].sop_class_uid, instances[index].transfer_syntax)
        if pair not in contexts:
            if len(contexts) == MAX_CONTEXTS:
                break
            contexts.append(pair)
        batch.append(index)
    return batch, contexts


def _one_association(instances, pending, destination, tls_context, options, record, finish, state) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    batch, contexts = _contexts_for(instances, pending)
    ae = AE(ae_title=destination.calling_aet)
    ae.connection_timeout = options.connect_timeout
    ae.acse_timeout = options.acse_timeout
    ae.dimse_timeout = options.dimse_timeout
    ae.network_timeout = options.network_timeout
    ae.add_requested_context(Verification)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])

    tls_args = (tls_context, destination.host) if tls_context is not None else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.called_aet, tls_args=tls_args)
    if not assoc.is_established:
        refused = _classify_failed_association(assoc, destination, tls_context, options)
        if refused:  # every context refused: nothing in this batch can be sent, now or later
            for index in batch:
                finish(index, instances[index].result(InstanceStatus.FAILURE, message=_refusal(instances[index])))
                pending.remove(index)
        return

    clean = False
    try:
        # 1. C-ECHO once per export: proves the destination answers before anything is stored
        if not state["echoed"]:
            status = assoc.send_c_echo()
            if not status or "Status" not in status:
                raise _Transient("no answer to C-ECHO")
            if status.Status != 0x0000:
                raise ExportError(f"{destination}: C-ECHO refused with status 0x{status.Status:04X}")
            state["echoed"] = True

        # 2. C-STORE each instance of the batch, recording each success at once
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        for message_id, index in enumerate(list(batch), start=1):
            instance = instances[index]
            if (instance.sop_class_uid, instance.transfer_syntax) not in accepted:
                finish(index, instance.result(InstanceStatus.FAILURE, message=_refusal(instance)))
                pending.remove(index)
                continue
            if not assoc.is_established:
                raise _Transient("the association dropped")
            status = assoc.send_c_store(instance.send_path, msg_id=message_id % 65536 or 1)
            if not status or "Status" not in status:
                raise _Transient("the destination stopped answering (association dropped or timed out)")
            finish(index, _store_result(instance, int(status.Status), status, record))
            pending.remove(index)
        clean = True
    finally:
        if clean and assoc.is_established:
            assoc.release()
        else:
            assoc.abort()  # never wait for a release answer from a peer that stopped answering


def _store_result(instance: _Instance, code: int, status, record: ExportRecord) -> InstanceResult:
    """Map a C-STORE status as pynetdicom does (category by code, text from the service's table)."""
    from pynetdicom.status import (
        GENERAL_STATUS,
        STATUS_SUCCESS,
        STATUS_WARNING,
        STORAGE_SERVICE_CLASS_STATUS,
        code_to_category,
    )

    category = code_to_category(code)
    text = (STORAGE_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS.get(code) or (category, ""))[1]
    comment = str(status.get("ErrorComment", "") or "")
    message = "; ".join(t for t in (text if category != STATUS_SUCCESS else "", comment) if t)
    if category in (STATUS_SUCCESS, STATUS_WARNING):
        record.mark_sent(instance, code)
        kind = InstanceStatus.SUCCESS if category == STATUS_SUCCESS else InstanceStatus.WARNING
        return instance.result(kind, code, message)
    return instance.result(InstanceStatus.FAILURE, code, message or f"{category} status")


def _refusal(instance: _Instance) -> str:
    name = getattr(instance.sop_class_uid, "name", "") or str(instance.sop_class_uid)
    syntax = getattr(instance.transfer_syntax, "name", "") or str(instance.transfer_syntax)
    return f"refused: the destination does not accept {name} in {syntax}"


def _classify_failed_association(assoc, destination: DimseDestination, tls_context, options) -> bool:
    """Raise the error that says why no association was made; True when only the contexts were refused."""
    primitive = getattr(assoc.acceptor, "primitive", None)
    if assoc.is_rejected and primitive is not None:
        result, source, reason = primitive.result, primitive.result_source, primitive.diagnostic
        if source == 1 and reason == 3:
            message = (f"{destination}: association rejected: the destination does not know the calling AE "
                       f"title {destination.calling_aet!r}; register it there, or pass the right --calling-aet")
        elif source == 1 and reason == 7:
            message = (f"{destination}: association rejected: the destination's AE title is not "
                       f"{destination.called_aet!r}; check CALLED_AET in --to")
        else:
            message = (f"{destination}: association rejected ({primitive.result_str}, {primitive.source_str}): "
                       f"{primitive.reason_str}")
        if result == 0x02:  # rejected-transient: the destination asks us to try again later
            raise _Transient(message)
        raise AssociationRejectedError(message)
    if primitive is not None and getattr(primitive, "result", None) == 0x00:
        return True  # accepted, but with no usable presentation context: pynetdicom aborted it
    kind, message = _diagnose_connection(destination, tls_context, options)
    if kind == "tls":
        raise TlsError(f"{destination}: {message}")
    raise _Transient(message, unreachable=kind in ("refused", "timeout", "network"))


def _diagnose_connection(destination: DimseDestination, tls_context, options) -> tuple[str, str]:
    """Connect once more by hand to say why the association failed; pynetdicom only logs it."""
    address = (destination.host, destination.port)
    try:
        sock = socket.create_connection(address, timeout=options.connect_timeout)
    except ConnectionRefusedError:
        return "refused", f"nothing accepts connections at {destination.host}:{destination.port} (is the PACS running?)"
    except socket.timeout:
        return "timeout", f"no answer from {destination.host}:{destination.port} within {options.connect_timeout:g} s"
    except OSError as exc:
        return "network", f"cannot reach {destination.host}:{destination.port}: {exc.strerror or exc}"
    with sock:
        if tls_context is None:
            return "closed", ("the destination closed the connection without answering the association request "
                              "(does it expect TLS? then give --tls-ca, --tls-cert and --tls-key)")
        try:
            with tls_context.wrap_socket(sock, server_hostname=destination.host) as tls:
                tls.settimeout(1.0)
                try:
                    data = tls.recv(1)
                except socket.timeout:  # the server waits for our request: TLS itself works
                    return "closed", "TLS works, but the association request got no answer"
                if data == b"":
                    return "tls", "TLS handshake failed: the destination closed the connection (does it trust our " \
                                  "client certificate?)"
                return "closed", "the destination sent something unexpected after the TLS handshake"
        except ssl.SSLCertVerificationError as exc:
            return "tls", (f"TLS handshake failed: the destination's certificate is not trusted "
                           f"({exc.verify_message}); check --tls-ca")
        except ssl.SSLError as exc:
            return "tls", (f"TLS handshake failed ({exc.reason or exc}): the destination may not trust our "
                           "client certificate (--tls-cert/--tls-key), or may not speak TLS")
        except OSError as exc:
            return "tls", f"TLS handshake failed: {exc.strerror or exc}"


# ---------------------------------------------------------------------- STOW-RS


def _send_stow(instances, pending, destination: DicomWebDestination, options, record, finish) -> None:
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if destination.user is not None:
        session.auth = (destination.user, destination.password)
    if destination.ca_file is not None:
        session.verify = str(destination.ca_file)
    client = DICOMwebClient(destination.url, session=session, timeout=options.http_timeout)
    client.set_http_retry_params(retry=False)  # one retry policy for both protocols: ours

    def attempt() -> None:
        batch = pending[: options.stow_batch]
        datasets = [pydicom.dcmread(instances[i].send_path) for i in batch]
        try:
            response = client.store_instances(datasets)
        except requests.HTTPError as exc:
            response = _stow_error_response(exc, destination)
        except requests.exceptions.SSLError as exc:
            raise TlsError(f"{destination}: TLS failed: {exc}") from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Transient(f"no answer from {destination.url}: {exc.__class__.__name__}", unreachable=True) from exc
        failed = {str(item.get("ReferencedSOPInstanceUID")): item for item in response.get("FailedSOPSequence", [])}
        stored = {str(item.get("ReferencedSOPInstanceUID")): item
                  for item in response.get("ReferencedSOPSequence", [])}
        for index in batch:
            instance = instances[index]
            if instance.sent_uid in failed:
                reason = failed[instance.sent_uid].get("FailureReason")
                finish(index, instance.result(InstanceStatus.FAILURE, int(reason) if reason is not None else None,
                                              "listed as failed in the STOW-RS response"))
            elif instance.sent_uid in stored:
                warning = stored[instance.sent_uid].get("WarningReason")
                record.mark_sent(instance, int(warning) if warning is not None else 0)
                kind = InstanceStatus.WARNING if warning is not None else InstanceStatus.SUCCESS
                finish(index, instance.result(kind, int(warning) if warning is not None else None))
            else:
                finish(index, instance.result(InstanceStatus.FAILURE, None, "missing from the STOW-RS response"))
            pending.remove(index)

    _retry_loop(pending, options, attempt, str(destination))


def _stow_error_response(exc, destination: DicomWebDestination):
    """An HTTP error: auth and routing errors raise; a 4xx with a STOW-RS body lists the failures."""
    response = exc.response
    status = response.status_code if response is not None else None
    if status in (401, 403):
        raise DicomWebError(f"{destination}: HTTP {status}: the server refused the credentials "
                            "(check --user and --password-file)") from exc
    if status == 404:
        raise DicomWebError(f"{destination}: HTTP 404: no STOW-RS endpoint at this URL") from exc
    if status is not None and status >= 500:
        raise _Transient(f"HTTP {status} from {destination.url}") from exc
    try:
        return pydicom.Dataset.from_json(response.json())
    except (ValueError, AttributeError) as parse_error:
        raise DicomWebError(f"{destination}: HTTP {status}: {response.text[:200]}") from parse_error


# ---------------------------------------------------------------------- command line


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="medgen export")
    parser.description = (
        "Send synthetic series to a PACS by DICOM (C-ECHO then C-STORE) or DICOMweb (STOW-RS). A second run "
        "of the same command sends only what the first did not deliver."
    )
    parser.add_argument("series", nargs="+", type=Path, metavar="SERIES_DIR", help="folders (or files) to send")
    parser.add_argument("--to", nargs="+", required=True, metavar="DEST",
                        help="dicom://CALLED_AET@HOST:PORT, or: dicomweb URL")
    parser.add_argument("--calling-aet", default=DEFAULT_CALLING_AET, help="our AE title (default %(default)s)")
    parser.add_argument("--tls-ca", type=Path, help="PEM file of the CA(s) to trust (DICOM TLS or https)")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate (DICOM TLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--user", help="DICOMweb user (HTTP basic authentication)")
    parser.add_argument("--password-file", type=Path, help="file whose first line is the DICOMweb password")
    parser.add_argument("--deidentify", action="store_true",
                        help="PS3.15 basic profile with one pseudonym per patient across the export")
    parser.add_argument("--record", type=Path, help="resume record (default: one per export under the state folder)")
    parser.add_argument("--retries", type=int, default=ExportOptions.max_retries, help="retries after a dropped "
                        "connection (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=ExportOptions.dimse_timeout,
                        help="seconds to wait for any answer (default %(default)s)")
    return parser


def destination_from_args(args: argparse.Namespace) -> DimseDestination | DicomWebDestination:
    to = list(args.to)
    if len(to) == 2 and to[0].lower() == "dicomweb":
        url = to[1]
    elif len(to) == 1 and to[0].startswith(("http://", "https://")):
        url = to[0]
    elif len(to) == 1:
        if args.user or args.password_file:
            raise InputError(None, "--user/--password-file are for DICOMweb destinations")
        tls = None
        if args.tls_ca or args.tls_cert or args.tls_key:
            tls = TlsOptions(args.tls_ca, args.tls_cert, args.tls_key)
        return DimseDestination.parse(to[0], calling_aet=args.calling_aet, tls=tls)
    else:
        raise InputError(None, f"--to {' '.join(to)!r}: give dicom://CALLED_AET@HOST:PORT or 'dicomweb URL' "
                               "(and put the SERIES_DIRs before --to)")
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as exc:
            raise InputError(args.password_file, "cannot read the password from its first line") from exc
    return DicomWebDestination(url, args.user, password, args.tls_ca)


def run_export(args: argparse.Namespace) -> int:
    destination = destination_from_args(args)
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        # pynetdicom logs every refusal as an error; our one-line message already says it
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    options = ExportOptions(max_retries=args.retries, dimse_timeout=args.timeout, network_timeout=args.timeout,
                            http_timeout=args.timeout, acse_timeout=min(args.timeout, ExportOptions.acse_timeout))
    try:
        report = export_series(args.series, destination, deidentify=args.deidentify, record_path=args.record,
                               options=options)
    except ExportError as error:
        if error.report is not None and error.report.results:
            print(error.report.table())
        print(f"medgen: error: {error}", file=sys.stderr)
        return 1
    print(report.table())
    return 0 if report.ok else 1
