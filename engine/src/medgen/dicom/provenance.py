"""The provenance record of a run: enough to reproduce it and to prove which files went in.

It is written as a JSON file beside each series and, in full, into a private block of every
instance, so a synthetic image separated from its folder still says where it came from.
Library versions are read from package metadata, never by importing them: torch stays unloaded.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import medgen
from medgen.errors import InputError, OutputError
from medgen.reproducible import creation_time

PROVENANCE_SCHEMA = "medgen.provenance/1"
TOOL_NAME = "MedGenSlicer engine"
# Files that hold model weights in a diffusers folder (configs and tokenizer files are excluded:
# they are small, and editing them does not change what the weights are).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".msgpack", ".h5", ".gguf")
LIBRARIES = ("medgen", "torch", "diffusers", "transformers", "accelerate", "peft", "safetensors",
             "pydicom", "highdicom", "numpy", "SimpleITK")
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """SHA-256 of one file, read in chunks so multi-GB checkpoints do not fill memory.

    Digests are remembered by (path, size, modification time), so a server hashing the same
    multi-GB model for every job reads it once; a changed file is hashed again.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise InputError(path, f"cannot read file to hash it: {exc.strerror or exc}") from exc
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(path, f"cannot read file to hash it: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def model_weight_manifest(path: str | Path) -> list[tuple[str, str]]:
    """(relative posix path, SHA-256) of every weight file under a model folder, sorted by path.

    Adapters kept inside the folder (a folder with an ``adapter.json``, such as the demo model's
    ``modalities/mr``) are not part of the model: each is hashed on its own in the provenance's adapter
    records, and an adapter trained on this model keeps matching its base's hash. (An adapter's own
    folder, a ControlNet's say, is hashed whole.)"""
    root = Path(path)
    adapter_dirs = {manifest.parent for manifest in root.rglob("adapter.json") if manifest.parent != root}
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(WEIGHT_SUFFIXES)
         and not adapter_dirs.intersection(p.parents)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise InputError(root, f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) found in the model folder")
    return [(p.relative_to(root).as_posix(), sha256_file(p)) for p in files]


def sha256_model(path: str | Path) -> str:
    """SHA-256 identifying a model: of the file itself, or, for a folder, of its weight manifest.

    The folder digest is the SHA-256 of the lines "<sha256>  <relative path>\\n" in sorted path
    order (the format of `sha256sum`), so renaming, adding or changing any weight file changes it.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise InputError(path, "model path is neither a file nor a folder")
    manifest = "".join(f"{digest}  {rel}\n" for rel, digest in model_weight_manifest(path))
    return hashlib.sha256(manifest.encode("utf-8")).hexdigest()


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions from package metadata (None when absent); imports nothing."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _utc_now() -> str:
    return creation_time().isoformat(timespec="seconds")


def _adapter_record(adapter: Mapping[str, Any]) -> dict[str, Any]:
    record = dict(adapter)
    if "path" not in record:
        raise ValueError(f"each adapter needs a 'path', got keys {sorted(record)}")
    record["path"] = str(record["path"])
    if "sha256" not in record:
        record["sha256"] = sha256_model(record["path"])
    return record


def build_provenance(
    *,
    input_paths: Sequence[str | Path],
    model_path: str | Path,
    parameters: Mapping[str, Any],
    seeds: Sequence[int],
    device: str,
    dtype: str,
    adapters: Sequence[Mapping[str, Any]] = (),
    model_name: str | None = None,
    extra: Mapping[str, Any] | None = None,
    model_sha256: str | None = None,
) -> dict[str, Any]:
    """Provenance of one run (all its variants): inputs and model hashed, every parameter kept.

    ``parameters`` holds every generation option (prompt, negative_prompt, num_inference_steps,
    guidance_scale, strength, mask padding, ...) exactly as used; ``seeds`` has one seed per
    variant. Each adapter is a mapping with at least ``path`` (plus e.g. ``kind``, ``scale``);
    its SHA-256 is computed unless given; so is the model's (``model_sha256``: a loaded model's own
    digest, taken once per load). Use :func:`for_variant` for the record of one series.
    """
    # 1. Check inputs
    if not seeds:
        raise ValueError("seeds must list one seed per variant, got an empty list")
    if any(not isinstance(s, (int, np.integer)) or isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be integers, got {list(seeds)!r}")
    # 2. Hash what went in
    inputs = [{"path": str(Path(p)), "sha256": sha256_file(p)} for p in input_paths]
    model = {
        "name": model_name or Path(model_path).name,
        "path": str(model_path),
        "sha256": model_sha256 or sha256_model(model_path),
    }
    # 3. Assemble
    record: dict[str, Any] = {
        "schema": PROVENANCE_SCHEMA,
        "tool": {"name": TOOL_NAME, "package": "medgen", "version": medgen.__version__},
        "created_utc": _utc_now(),
        "inputs": inputs,
        "model": model,
        "adapters": [_adapter_record(a) for a in adapters],
        "parameters": _jsonable(dict(parameters)),
        "variants": [{"index": i, "seed": int(s)} for i, s in enumerate(seeds)],
        "device": str(device),
        "dtype": str(dtype),
        "libraries": library_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    if extra:
        record["extra"] = _jsonable(dict(extra))
    return record


def for_variant(provenance: Mapping[str, Any], index: int) -> dict[str, Any]:
    """A copy of the run record naming the one variant (and its seed) that a series holds."""
    variants = provenance.get("variants", [])
    matches = [v for v in variants if v.get("index") == index]
    if not matches:
        raise ValueError(f"variant {index} is not in the provenance (variants: {[v.get('index') for v in variants]})")
    record = copy.deepcopy(dict(provenance))
    record["variant"] = dict(matches[0])
    return record


def format_derivation_description(
    *,
    prompt: str,
    model_name: str,
    seed: int,
    adapters: Sequence[str] = (),
    negative_prompt: str | None = None,
) -> str:
    """The human-readable Derivation Description (ST, 1024 chars) of one synthetic series."""
    parts = [
        "SYNTHETIC: pathology inpainted by a generative model",
        f"prompt: {prompt!r}",
    ]
    if negative_prompt:
        parts.append(f"negative prompt: {negative_prompt!r}")
    parts += [
        f"model: {model_name}",
        f"adapters: {', '.join(adapters) if adapters else 'none'}",
        f"seed: {seed}",
    ]
    text = "; ".join(parts)
    return text if len(text) <= 1024 else text[:1021] + "..."


def _jsonable(value: Any) -> Any:
    """Paths, numpy scalars/arrays and tuples in a form json can write, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def provenance_to_json(provenance: Mapping[str, Any], *, indent: int | None = 2, ascii_only: bool = False) -> str:
    """Deterministic JSON (sorted keys); raises ValueError when something cannot be serialised.

    ``ascii_only`` escapes non-ASCII characters (\\uXXXX), as needed inside a DICOM element whose
    character set is the source's.
    """
    try:
        return json.dumps(_jsonable(provenance), indent=indent, sort_keys=True, ensure_ascii=ascii_only,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"provenance must be JSON-serialisable: {exc}") from exc


def write_provenance_json(path: str | Path, provenance: Mapping[str, Any]) -> Path:
    """Write the record atomically (temp file in the same folder, then rename): never half a file."""
    path = Path(path)
    text = provenance_to_json(provenance) + "\n"
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise OutputError(path, f"cannot write provenance: {exc.strerror or exc}") from exc
    return path
