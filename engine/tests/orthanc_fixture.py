"""A real Orthanc for the export tests: started on free loopback ports, stopped by its own pid.

Nothing is installed at run time: the set-up installs the Debian packages `orthanc` and
`orthanc-dicomweb`; where they are missing the tests that need them are skipped with that advice.
The configuration is as strict as a hospital PACS should be, so the tests see real refusals:
the called AE title is checked, only the test's calling AE title is registered (unknown senders
may neither echo nor store), and the REST API needs a user and password.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests


ORTHANC_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
ORTHANC_AET = "MEDGENPACS"
CALLING_AET = "MEDGENTEST"
HTTP_USER = "medgen"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


def orthanc_executable() -> str | None:
    found = shutil.which("Orthanc")
    if found:
        return found
    return next((p for p in ORTHANC_CANDIDATES if os.access(p, os.X_OK)), None)


def dicomweb_plugin() -> str | None:
    """The DICOMweb plugin library: the unversioned link, or any versioned file beside it."""
    for candidate in DICOMWEB_PLUGIN_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    for folder in {os.path.dirname(p) for p in DICOMWEB_PLUGIN_CANDIDATES}:
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                if name.startswith("libOrthancDicomWeb.so"):
                    return os.path.join(folder, name)
    return None


def free_port() -> int:
    """A port free on loopback right now (the kernel picks it; the race until Orthanc binds is tiny)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TlsFiles:
    """PEM files of a throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(folder: Path, *, common_name_prefix: str = "medgen-test") -> TlsFiles:
    """Generate a CA and two leaf certificates with `cryptography` (RSA 2048, valid for one day)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )

    ca_key = key()
    ca_name = name(f"{common_name_prefix} CA")
    ca_cert = (
        builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage, san: list | None):
        leaf_key = key()
        b = builder(name(cn), ca_name, leaf_key.public_key())
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return leaf_key, b.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key, client_cert = leaf(f"{common_name_prefix} client", ExtendedKeyUsageOID.CLIENT_AUTH, None)

    def write_cert(path: Path, cert) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def write_key(path: Path, private_key) -> Path:
        path.write_bytes(
            private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    return TlsFiles(
        ca_cert=write_cert(folder / "ca.pem", ca_cert),
        server_cert=write_cert(folder / "server.pem", server_cert),
        server_key=write_key(folder / "server.key", server_key),
        client_cert=write_cert(folder / "client.pem", client_cert),
        client_key=write_key(folder / "client.key", client_key),
    )


@dataclass
class OrthancServer:
    """One Orthanc process with its own config, storage and ports under ``root``."""

    root: Path
    tls: TlsFiles | None = None
    dicomweb: bool = True
    aet: str = ORTHANC_AET
    calling_aet: str = CALLING_AET
    user: str = HTTP_USER
    password: str = field(default_factory=lambda: os.urandom(9).hex())
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def dicom_destination(self) -> str:
        return f"dicom://{self.aet}@127.0.0.1:{self.dicom_port}"

    @property
    def config_path(self) -> Path:
        return self.root / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.root / "orthanc.log"

    def write_config(self) -> Path:
        for sub in ("storage", "index", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "medgen-test-pacs",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "TemporaryDirectory": str(self.root / "tmp"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomCheckCalledAet": True,
            "DicomModalities": {
                "medgen": {"AET": self.calling_aet, "Host": "127.0.0.1", "Port": 104,
                           "AllowEcho": True, "AllowStore": True},
            },
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": False,
            "StrictAetComparison": True,
            "UnknownSopClassAccepted": False,
            "OverwriteInstances": False,
            "DicomScpTimeout": 10,
            "DicomThreadsCount": 2,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "HttpThreadsCount": 8,
            "SaveJobs": False,
            "StorageCompression": False,
            "ConcurrentJobs": 1,
            "Plugins": [],
        }
        plugin = dicomweb_plugin() if self.dicomweb else None
        if plugin:
            config["Plugins"] = [plugin]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": False}
        if self.tls is not None:
            config.update({
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": str(self.tls.server_cert),
                "DicomTlsPrivateKey": str(self.tls.server_key),
                "DicomTlsTrustedCertificates": str(self.tls.ca_cert),
                "DicomTlsRemoteCertificateRequired": True,
            })
        self.config_path.write_text(json.dumps(config, indent=2))
        return self.config_path

    # ---- process ---------------------------------------------------------------------------

    def start(self) -> "OrthancServer":
        """Start Orthanc and wait until its REST API answers; raise with its log if it does not.

        The ports were free when chosen, but another program may have taken one since: then Orthanc
        stops at once, and it is started again on new ports (up to three times)."""
        for attempt in range(4):
            try:
                return self._start_once()
            except RuntimeError as error:
                text = str(error).lower()
                if attempt == 3 or not ("already in use" in text or "cannot bind" in text or "address in use" in text):
                    raise
                self.http_port, self.dicom_port = free_port(), free_port()
                self.write_config()
        raise AssertionError("unreachable")

    def _start_once(self) -> "OrthancServer":
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("this Orthanc is already running")
        executable = orthanc_executable()
        if executable is None:
            raise RuntimeError("Orthanc is not installed (Debian package 'orthanc')")
        if not self.config_path.exists():
            self.write_config()
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [executable, str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                response = requests.get(f"{self.url}/system", auth=self.auth, timeout=1)
                if response.status_code == 200 and self._dicom_port_open():
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop exactly the process this object started (terminate, then kill if it hangs)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    def kill(self) -> None:
        """Kill exactly this process, as a crash or a pulled cable would: open associations just drop.

        (A graceful stop waits for open associations to end, so it cannot interrupt an export.)
        """
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _dicom_port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=0.5):
                return True
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # ---- REST ------------------------------------------------------------------------------

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    def get(self, path: str):
        response = requests.get(f"{self.url}{path}", auth=self.auth, timeout=10)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("content-type", "") else response.content

    def instance_ids(self) -> list[str]:
        return list(self.get("/instances"))

    def instance_tags(self, instance_id: str) -> dict:
        return self.get(f"/instances/{instance_id}/simplified-tags")

    def instance_file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file")

    def sop_instance_uids(self) -> list[str]:
        return [self.instance_tags(i)["SOPInstanceUID"] for i in self.instance_ids()]

    def clear(self) -> None:
        """Delete every patient, so each test starts from an empty PACS."""
        for patient in self.get("/patients"):
            requests.delete(f"{self.url}/patients/{patient}", auth=self.auth, timeout=10).raise_for_status()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A real Orthanc for the module's tests, stopped (exactly that process) afterwards."""
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    try:
        yield server
    finally:
        server.stop()
