"""PACS destinations configured on the engine: a client picks one by name and never sends a host.

Each comes from `medgen serve --destination NAME=URL` or from a `--destinations FILE` (JSON) that
can also hold TLS files and a DICOMweb user with a password file. Everything is checked at start
(AE titles, ports, TLS files, the password file), so a typo fails then, not at the first export.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from medgen.dicom.export import DEFAULT_CALLING_AET, DicomWebDestination, DimseDestination, TlsOptions
from medgen.errors import MedgenError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DIMSE_URL = re.compile(r"dicoms?://[^@]+@(\[[^\]]+\]|[^:/]+):\d+/?")  # as DimseDestination.parse reads it
_DICOMWEB_PREFIX = "dicomweb+"
URL_FORMS = "dicom://CALLED_AET@HOST:PORT[?calling_aet=AET], dicoms://... (TLS) or dicomweb+http(s)://HOST[:PORT]/PATH"


class DestinationKind(str, Enum):
    DICOM = "dicom"  # DIMSE C-STORE
    DICOMWEB = "dicomweb"  # STOW-RS


@dataclass(frozen=True)
class ExportDestination:
    """One configured destination: the name clients use, and where it really goes."""

    name: str
    target: DimseDestination | DicomWebDestination

    @property
    def kind(self) -> DestinationKind:
        return DestinationKind.DICOM if isinstance(self.target, DimseDestination) else DestinationKind.DICOMWEB

    @property
    def address(self) -> str:
        """Where it goes, for people (never a user or password)."""
        return str(self.target)


class _FileEntry(BaseModel):
    """One destination in a ``--destinations`` file; unknown keys are refused, so a typo is caught."""

    model_config = ConfigDict(extra="forbid")

    url: str
    calling_aet: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    user: str | None = None
    password_file: Path | None = None


def parse_destination_option(value: str) -> ExportDestination:
    """``NAME=URL`` from the command line (TLS client certificates and passwords need a file)."""
    name, sep, url = value.partition("=")
    if not sep:
        raise ValueError(f"--destination {value!r}: expected NAME=URL, where URL is one of {URL_FORMS}")
    return make_destination(name.strip(), _FileEntry(url=url.strip()), where=f"--destination {name.strip()}")


def load_destinations_file(path: Path) -> list[ExportDestination]:
    """``{"NAME": {"url": ..., "calling_aet", "tls_ca", "tls_cert", "tls_key", "user", "password_file"}}``.

    Relative file paths are read relative to the file's folder.
    """
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"--destinations {path}: cannot read it: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"--destinations {path}: not JSON: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise ValueError(f'--destinations {path}: expected an object of NAME: {{"url": ...}}, one per destination')
    destinations = []
    for name, fields in data.items():
        where = f"--destinations {path}: {name!r}"
        try:
            entry = _FileEntry.model_validate(fields)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{where}: {problems}") from None
        entry = entry.model_copy(update={
            key: (path.parent / value if not value.is_absolute() else value)
            for key in ("tls_ca", "tls_cert", "tls_key", "password_file")
            if (value := getattr(entry, key)) is not None
        })
        destinations.append(make_destination(name, entry, where=where))
    return destinations


def make_destination(name: str, entry: _FileEntry, *, where: str) -> ExportDestination:
    if not _NAME.match(name):
        raise ValueError(f"{where}: the name must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter "
                         f"or digit), got {name!r}")
    try:
        if entry.url.startswith(("dicom://", "dicoms://")):
            target = _dimse(entry)
        elif entry.url.startswith(_DICOMWEB_PREFIX):
            target = _dicomweb(entry)
        else:
            raise ValueError(f"the URL must be one of {URL_FORMS}")
    except (ValueError, MedgenError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    return ExportDestination(name=name, target=target)


def _dimse(entry: _FileEntry) -> DimseDestination:
    url, _, query = entry.url.partition("?")
    if not _DIMSE_URL.fullmatch(url):
        raise ValueError(f"{url!r} is not dicom://CALLED_AET@HOST:PORT")
    options = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    unknown = set(options) - {"calling_aet"}
    if unknown:
        raise ValueError(f"unknown URL option(s) {', '.join(sorted(unknown))}; the one option is calling_aet")
    calling = options.get("calling_aet", [None])[-1]
    if calling is not None and entry.calling_aet is not None and calling != entry.calling_aet:
        raise ValueError("calling_aet is given twice, in the URL and in the entry, with different values")
    calling = calling or entry.calling_aet or DEFAULT_CALLING_AET
    if entry.user is not None or entry.password_file is not None:
        raise ValueError("user and password_file are for DICOMweb destinations; DIMSE identifies by AE title")
    tls = None
    if url.startswith("dicoms://") or entry.tls_ca or entry.tls_cert or entry.tls_key:
        tls = TlsOptions(entry.tls_ca, entry.tls_cert, entry.tls_key)
        tls.ssl_context()  # the files exist and load, now rather than at the first export
    return DimseDestination.parse(url, calling_aet=calling, tls=tls)


def _dicomweb(entry: _FileEntry) -> DicomWebDestination:
    url = entry.url[len(_DICOMWEB_PREFIX):]
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the URL must be dicomweb+http(s)://HOST[:PORT]/PATH, got {entry.url!r}")
    if parts.username or parts.password:
        raise ValueError("put no user or password in the URL (command lines are visible to other users); "
                         "give user and password_file in a --destinations file")
    if entry.calling_aet is not None:
        raise ValueError("calling_aet is for DIMSE (dicom://) destinations")
    if entry.tls_cert is not None or entry.tls_key is not None:
        raise ValueError("DICOMweb destinations take tls_ca only (no client certificate)")
    if entry.tls_ca is not None and not entry.tls_ca.is_file():
        raise ValueError(f"tls_ca {entry.tls_ca}: no such file")
    password = None
    if entry.password_file is not None:
        try:
            password = entry.password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError):
            raise ValueError(f"password_file {entry.password_file}: cannot read the password from its first "
                             f"line") from None
    return DicomWebDestination(url, entry.user, password, entry.tls_ca)
