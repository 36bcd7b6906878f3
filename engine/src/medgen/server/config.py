"""How one server is set up: where it keeps its data, which models it offers, and its limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from medgen.server.destinations import ExportDestination
from medgen.server.retention import RetentionPolicy
from medgen.server.schemas import Limits

DEFAULT_PORT = 8765
DEFAULT_HOST = "127.0.0.1"


def default_data_dir() -> Path:
    """``$MEDGEN_DATA_DIR``, else the XDG data folder (``~/.local/share/medgen``)."""
    if os.environ.get("MEDGEN_DATA_DIR"):
        return Path(os.environ["MEDGEN_DATA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "medgen"


def default_limits() -> Limits:
    """Generous for one CT series, small enough that a mistaken upload cannot fill the disk or the GPU."""
    return Limits(
        max_queued_jobs=32,
        max_upload_bytes=1 << 30,
        max_files=4096,
        max_slice_pixels=4096 * 4096,
        max_slices=2048,
        max_variants=16,
        max_inference_steps=200,
    )


@dataclass(frozen=True)
class ModelEntry:
    """A model the server offers, by the name clients choose it with."""

    name: str
    path: Path


@dataclass(frozen=True)
class AdapterEntry:
    """An adapter the server offers by name: a textual inversion, a LoRA or a ControlNet."""

    name: str
    path: Path
    kind: str
    token: str | None = None
    base_model: str | None = None
    modality: str | None = None


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    models: tuple[ModelEntry, ...]
    device: str = "auto"
    dtype: str | None = None
    limits: Limits = field(default_factory=default_limits)
    preload: bool = True
    """Load the default model when the worker starts rather than at the first job."""
    destinations: tuple[ExportDestination, ...] = ()
    """Where finished variants may be exported; clients choose by name, never by host."""
    adapters: tuple[AdapterEntry, ...] = ()
    """Adapters jobs may name; clients choose by name, never by path."""
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    """How long finished jobs and their uploads are kept."""
    access_log: Path | None = None
    """Where the access log goes; None: ``access.log`` in the data folder."""

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("a server needs at least one model")
        names = [model.name for model in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        names = [destination.name for destination in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError(f"destination names must be unique, got {names}")
        names = [adapter.name for adapter in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be unique, got {names}")

    @property
    def access_log_path(self) -> Path:
        from medgen.server.access_log import DEFAULT_FILENAME

        return self.access_log or self.data_dir / DEFAULT_FILENAME

    @property
    def default_model(self) -> ModelEntry:
        return self.models[0]

    def model(self, name: str | None) -> ModelEntry | None:
        if name is None:
            return self.default_model
        return next((model for model in self.models if model.name == name), None)

    def destination(self, name: str) -> ExportDestination | None:
        return next((destination for destination in self.destinations if destination.name == name), None)

    def adapter(self, name: str) -> AdapterEntry | None:
        return next((adapter for adapter in self.adapters if adapter.name == name), None)
