"""Build the upload of one job: the parameters, the source slices and the mask, as multipart form data.

Only the slab of slices the mask touches is sent, with the geometry that places it where it was, so a
512-slice CT costs a few slices of upload. Both halves agree on the grid through the IJK-to-RAS matrix.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .geometry import crop_slab, instances_in_slab, mask_on_slices, slab_range
from .nrrd import nrrd_bytes

CONTROL_FROM = ("mask-edges", "mask", "source-edges")
SOURCE_PIXELS_FIELD = "source_pixels"  # the voxels beside DICOM header templates (engine: template_check)
MAX_SEED = 2**31 - 1  # what a Qt spin box holds; the engine accepts up to 2**63


def random_seed() -> int:
    """For the dice button."""
    return random.SystemRandom().randint(0, MAX_SEED)


def parse_prompt_variations(text: str) -> Optional[List[str]]:
    """The panel's comma-separated field: the words, or None when it is empty."""
    words = [word.strip() for word in (text or "").split(",") if word.strip()]
    return words or None


@dataclass
class InpaintParameters:
    """The generation settings of the panel; names follow `medgen inpaint` and diffusers."""

    prompt: str
    negative_prompt: Optional[str] = None
    prompt_variations: Optional[List[str]] = None
    model: Optional[str] = None
    adapters: List[Tuple[str, float]] = field(default_factory=list)
    control_from: str = "mask-edges"  # what a ControlNet adapter is conditioned on
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    strength: float = 1.0
    seed: Optional[int] = None
    num_variants: int = 1
    mask_dilate_mm: float = 2.0
    # the volume's modality (from its DICOM files), sent so that a job that goes as voxels alone still
    # takes the model's contract and adapter for that modality
    source_modality: Optional[str] = None
    force_modality: bool = False  # run a modality the model does not cover

    def check(self) -> None:
        """The checks a person can fix in the panel, before anything is sent."""
        if not self.prompt or not self.prompt.strip():
            raise ValueError("type a prompt describing the finding to inpaint")
        if self.num_variants < 1:
            raise ValueError(f"number of variants must be at least 1, got {self.num_variants}")
        if self.num_inference_steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.num_inference_steps}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.control_from not in CONTROL_FROM:
            raise ValueError(f"ControlNet source must be one of {', '.join(CONTROL_FROM)}, got {self.control_from!r}")

    def to_json(self) -> dict:
        """The engine's JobParameters; the mask sent holds exactly the slices to inpaint."""
        parameters = {
            "prompt": self.prompt.strip(),
            "negative_prompt": (self.negative_prompt or "").strip() or None,
            "prompt_variations": list(self.prompt_variations) if self.prompt_variations else None,
            "model": self.model or None,
            "adapters": [{"name": name, "weight": float(weight)} for name, weight in self.adapters],
            "control_from": self.control_from,
            "num_inference_steps": int(self.num_inference_steps),
            "guidance_scale": float(self.guidance_scale),
            "strength": float(self.strength),
            "num_variants": int(self.num_variants),
            "mask_dilate_mm": float(self.mask_dilate_mm),
            "all_slices": True,
            "source_modality": self.source_modality or None,
            "force_modality": True if self.force_modality else None,
        }
        if self.seed is not None:
            parameters["seed"] = int(self.seed)
        return {key: value for key, value in parameters.items() if value is not None}


@dataclass
class FilePart:
    """One file of the upload: its bytes, or (``path``) a file read only while the upload is sent."""

    field: str
    filename: str
    data: Optional[bytes] = None
    content_type: str = "application/octet-stream"
    path: Optional[str] = None

    @property
    def size(self) -> int:
        return len(self.data) if self.path is None else Path(self.path).stat().st_size

    @property
    def content(self) -> bytes:
        """The part's bytes, read from its file where it has one."""
        return self.data if self.path is None else Path(self.path).read_bytes()

    def chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        if self.path is None:
            yield self.data
            return
        with open(self.path, "rb") as source:
            while True:
                chunk = source.read(chunk_size)
                if not chunk:
                    return
                yield chunk


@dataclass
class JobUpload:
    """A ready-to-send job: form fields and files, plus where the sent slab sits in the source (k0)."""

    fields: List[Tuple[str, str]]
    files: List[FilePart]
    slab_start: int
    slab_stop: int

    @property
    def size(self) -> int:
        return sum(part.size for part in self.files) + sum(len(value) for _, value in self.fields)

    def encode(self) -> Tuple[bytes, str]:
        """multipart/form-data body and its Content-Type."""
        chunks, _, content_type = self.encode_stream()
        return b"".join(chunks), content_type

    def encode_stream(self) -> Tuple[Iterable[bytes], int, str]:
        """The multipart/form-data body as chunks (files read as they are sent), its length, its Content-Type."""
        boundary = f"medgenslicer-{uuid.uuid4().hex}"
        heads = []
        for name, value in self.fields:
            heads.append((f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
                          f"Content-Type: text/plain; charset=utf-8\r\n\r\n".encode("utf-8")
                          + value.encode("utf-8") + b"\r\n", None))
        for part in self.files:
            heads.append((f'--{boundary}\r\nContent-Disposition: form-data; name="{part.field}"; '
                          f'filename="{_quote(part.filename)}"\r\nContent-Type: {part.content_type}\r\n\r\n'
                          .encode("utf-8"), part))
        tail = f"--{boundary}--\r\n".encode("ascii")
        length = len(tail) + sum(len(head) + (part.size + 2 if part is not None else 0) for head, part in heads)

        def chunks() -> Iterator[bytes]:
            for head, part in heads:
                yield head
                if part is not None:
                    yield from part.chunks()
                    yield b"\r\n"
            yield tail

        return chunks(), length, f"multipart/form-data; boundary={boundary}"


def _quote(filename: str) -> str:
    return "".join(c for c in Path(filename).name if c not in '"\r\n\\') or "file"


def _chosen_mask(mask: np.ndarray, slices: Optional[Sequence[int]]) -> np.ndarray:
    mask = np.asarray(mask)
    if slices is None:
        slices = range(mask.shape[0])
    return mask_on_slices(mask, slices)


def array_upload(
    volume: np.ndarray,
    ijk_to_ras: np.ndarray,
    mask: np.ndarray,
    parameters: InpaintParameters,
    *,
    slices: Optional[Sequence[int]] = None,
) -> JobUpload:
    """Source and mask as NRRD (RAS geometry), cropped to the slices to inpaint.

    ``volume`` and ``mask`` are (k, j, i) arrays on the same grid (Slicer's ``arrayFromVolume`` and a
    labelmap of the segment exported on the volume's geometry); ``slices`` limits the work to those
    slices (the Red view's), else every slice the mask touches is inpainted.
    """
    parameters.check()
    volume = np.asarray(volume)
    if np.asarray(mask).shape != volume.shape[:3]:
        raise ValueError(f"mask shape {np.asarray(mask).shape} differs from the volume's {volume.shape[:3]}")
    chosen = _chosen_mask(mask, slices)
    k0, k1 = slab_range(chosen)
    source_slab, slab_matrix = crop_slab(volume, ijk_to_ras, k0, k1)
    mask_slab, _ = crop_slab(chosen, ijk_to_ras, k0, k1)
    return slab_upload(source_slab, mask_slab, slab_matrix, k0, parameters)


def slab_upload(
    source_slab: np.ndarray,
    mask_slab: np.ndarray,
    slab_ijk_to_ras: np.ndarray,
    slab_start: int,
    parameters: InpaintParameters,
    *,
    templates: Sequence[str] = (),
) -> JobUpload:
    """The upload of a slab already cut out: its voxels, its mask, and where it starts in the volume.

    The voxels sent are always ``source_slab``. ``templates`` (the slab's DICOM instances, in any order)
    only give the engine the headers to write a series of the same study; the engine checks that their
    pixels agree with ``source_slab`` outside the mask and refuses the job otherwise.
    """
    parameters.check()
    source_slab, mask_slab = np.asarray(source_slab), np.asarray(mask_slab)
    if mask_slab.shape != source_slab.shape[:3]:
        raise ValueError(f"mask slab shape {mask_slab.shape} differs from the source slab's {source_slab.shape[:3]}")
    return assemble_upload(
        FilePart("source", "source.nrrd", nrrd_bytes(source_slab, slab_ijk_to_ras)),
        FilePart("mask", "mask.nrrd", nrrd_bytes((mask_slab != 0).astype(np.uint8), slab_ijk_to_ras)),
        int(slab_start), int(slab_start) + int(source_slab.shape[0]), parameters, templates=templates,
    )


def assemble_upload(pixels: FilePart, mask: FilePart, slab_start: int, slab_stop: int,
                    parameters: InpaintParameters, *, templates: Sequence[str] = ()) -> JobUpload:
    """The parts of a job: the slab's voxels and mask (NRRD) and, as header templates, its DICOM files
    (read only while the upload is sent)."""
    if templates:
        files = [FilePart("source", f"slice-{n:05d}.dcm", content_type="application/dicom", path=str(path))
                 for n, path in enumerate(templates)]
        files.append(FilePart(SOURCE_PIXELS_FIELD, "pixels.nrrd", pixels.data, pixels.content_type, pixels.path))
    else:
        files = [pixels]
    files.append(mask)
    return JobUpload(fields=[("parameters", json.dumps(parameters.to_json()))], files=files,
                     slab_start=int(slab_start), slab_stop=int(slab_stop))


def dicom_upload(
    instance_paths: Sequence[str],
    positions_lps: Sequence[Sequence[float]],
    ijk_to_ras: np.ndarray,
    mask: np.ndarray,
    parameters: InpaintParameters,
    *,
    slices: Optional[Sequence[int]] = None,
    volume: Optional[np.ndarray] = None,
) -> JobUpload:
    """The DICOM instances of the slab, and the mask as NRRD on that slab.

    The instances let the engine keep the study, patient and frame of reference, so Accept writes a
    synthetic series that sits beside the source in a PACS. ``positions_lps`` are the instances'
    ImagePositionPatient, in the order of ``instance_paths``. With ``volume`` (the (k, j, i) voxels the
    user sees) the instances are only header templates: the voxels are sent too and the engine refuses
    the job where the two disagree outside the mask.
    """
    parameters.check()
    if len(instance_paths) != len(positions_lps):
        raise ValueError("give one ImagePositionPatient per instance")
    chosen = _chosen_mask(mask, slices)
    k0, k1 = slab_range(chosen)
    numbers = instances_in_slab(positions_lps, ijk_to_ras, k0, k1)
    mask_slab, slab_matrix = crop_slab(chosen, ijk_to_ras, k0, k1)
    if volume is not None:
        source_slab, _ = crop_slab(volume, ijk_to_ras, k0, k1)
        return slab_upload(source_slab, mask_slab, slab_matrix, k0, parameters,
                           templates=[instance_paths[n] for n in numbers])
    files = [
        FilePart("source", f"slice-{n:05d}.dcm", Path(instance_paths[n]).read_bytes(), "application/dicom")
        for n in numbers
    ]
    files.append(FilePart("mask", "mask.nrrd", nrrd_bytes(mask_slab, slab_matrix)))
    return JobUpload(
        fields=[("parameters", json.dumps(parameters.to_json()))], files=files, slab_start=k0, slab_stop=k1
    )


def upload_spec(upload: JobUpload, folder: Path) -> dict:
    """The upload as the worker process takes it (`worker.upload_from_task`): every part in memory written
    to a private file in ``folder``; parts already in files are named as they are."""
    folder = Path(folder)
    files = []
    for number, part in enumerate(upload.files):
        path = part.path
        if path is None:
            path = str(folder / f"upload-{number:05d}.part")
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as out:
                out.write(part.data)
        files.append({"field": part.field, "filename": part.filename, "content_type": part.content_type,
                      "path": str(path)})
    return {"fields": [list(field) for field in upload.fields], "files": files,
            "slab_start": upload.slab_start, "slab_stop": upload.slab_stop}
