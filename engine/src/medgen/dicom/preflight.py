"""Decide, before any model loads, whether every output a request asks for can be written.

The writers run on the source's own pixels exactly as they will after generation: the synthetic
instances are built and encoded in memory and read back, the SEG is built over them, a NIfTI/NRRD/PNG
result or a Secondary Capture is checked for what its writer needs. A request that would fail after
the diffusion fails here instead, in well under a second for ordinary inputs, naming the source file.
What the writers repair on the way (old date forms, ISO 2022 text, private VRs) is returned as notes
for the provenance.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import numpy as np
import pydicom

from medgen.errors import InputError, MedgenError
from medgen.imaging.library_messages import captured_library_messages, first_line
from medgen.imaging.volume import SourceFormat, Volume

logger = logging.getLogger(__name__)

_PLACEHOLDER = "pre-flight"


@dataclass
class PreflightReport:
    """What the pre-flight found: the repairs the writers will make, and library warnings on the way."""

    repairs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def preflight(
    volume: Volume,
    masks_per_slice: dict[int, np.ndarray],
    *,
    write_seg: bool,
    write_dicom: bool,
    only_modified: bool,
) -> PreflightReport:
    """Build every requested output on the source pixels; raise InputError naming the source if one cannot be."""
    source = volume.source_paths[0] if volume.source_paths else None
    report = PreflightReport()
    with captured_library_messages() as messages:
        if volume.source_format is SourceFormat.DICOM:
            images = _synthetic_instances(volume, masks_per_slice, only_modified, report, source)
            if write_seg:
                _seg(volume, masks_per_slice, images, only_modified, source)
        else:
            if write_seg:
                raise InputError(source, "a DICOM SEG needs a DICOM source (its frames reference the synthetic "
                                 "DICOM instances)", reason="seg-source")
            _like_source(volume, source)
            if write_dicom:
                _secondary_capture(volume, source)
    report.warnings = list(dict.fromkeys(messages))
    return report


def _synthetic_instances(volume, masks_per_slice, only_modified, report, source) -> list[pydicom.Dataset]:
    from medgen.dicom.writer import SyntheticSeriesWriter

    writer = SyntheticSeriesWriter(
        volume,
        series_description=_PLACEHOLDER,
        derivation_description=_PLACEHOLDER,
        provenance={},
        software_version=_PLACEHOLDER,
        model_name=_PLACEHOLDER,
    )
    try:
        instances = writer.derive_instances(volume.pixels, modified_slices=sorted(masks_per_slice),
                                            only_modified=only_modified)
        images = [_round_trip(ds) for _, ds in instances]
    except MedgenError:
        raise
    except Exception as exc:  # a writer failure on a real file: say it now, not after the diffusion
        raise InputError(source, f"cannot write the synthetic DICOM: {first_line(exc)}") from exc
    report.repairs = list(writer.repairs)
    return images


def _round_trip(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Encode as the writer saves, and read back as the SEG step reads the saved file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _seg(volume, masks_per_slice, images, only_modified, source) -> None:
    from medgen.dicom.seg import build_inpaint_seg, seg_refusal

    try:
        reason = seg_refusal(volume, len(masks_per_slice) if only_modified else volume.num_slices)
        if reason:
            raise InputError(source, reason, reason="seg-source")
        build_inpaint_seg(images, masks_per_slice, _PLACEHOLDER, source_volume=volume,
                          software_version=_PLACEHOLDER, model_name=_PLACEHOLDER)
    except MedgenError:
        raise
    except Exception as exc:  # highdicom meets attributes it cannot use (an unknown SOP class, ...)
        raise InputError(source, f"cannot build a DICOM SEG over the synthetic images: {first_line(exc)}",
                         reason="seg-source") from exc


def _like_source(volume: Volume, source) -> None:
    """NIfTI/NRRD/PNG output is the source's own format and dtype: check the writer accepts it."""
    if volume.source_format is SourceFormat.PNG:
        from PIL import Image

        try:
            Image.fromarray(volume.pixels[0])
        except (TypeError, ValueError) as exc:
            raise InputError(source, f"cannot write pixels of type {volume.pixels.dtype} back as PNG: "
                             f"{first_line(exc)}") from exc
    elif volume.itk_image is None:
        raise InputError(source, f"a {volume.source_format.value} volume without its image header cannot be written back")


def _secondary_capture(volume: Volume, source) -> None:
    from medgen.dicom.writer import _secondary_capture_values

    try:
        _secondary_capture_values(volume.pixels)
    except InputError as exc:
        raise InputError(source, f"cannot write --dicom: {exc.problem}", reason=exc.reason) from exc
