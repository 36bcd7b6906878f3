"""Check written DICOM against the synthetic-DICOM rules of DESIGN.md, file by file and as a set.

`medgen validate PATH... [--source SRC]` walks every DICOM file under the paths and checks the marks
(Synthetic Data, Image Type, Series Description, Contributing Equipment, source references,
Derivation Description, provenance), that UIDs are valid, new and unique, that Study and Patient
agree within each series and with the source, and, given the source, that no stored value
changed outside the dilated mask. dciodvfy runs on every file when it is installed. A report
that a program can read (``ValidationReport``) comes back; the command prints it as a table and
exits 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    EnhancedCTImageStorage,
    EnhancedMRColorImageStorage,
    EnhancedMRImageStorage,
    EnhancedPETImageStorage,
    EnhancedUSVolumeStorage,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    LegacyConvertedEnhancedPETImageStorage,
    SegmentationStorage,
)

from medgen.dicom import codes
from medgen.dicom.codes import MedgenCode
from medgen.errors import InputError

PROVENANCE_FILENAME = "provenance.json"
# IODs whose Image Type Value 2 is the enumerated value PRIMARY (PS3.3 C.8.16.1 for enhanced images,
# C.8.20.1 for Segmentation): there DERIVED\PRIMARY is the only valid way to say "derived".
PRIMARY_ONLY_SOP_CLASSES = frozenset([
    EnhancedCTImageStorage, EnhancedMRImageStorage, EnhancedMRColorImageStorage, EnhancedPETImageStorage,
    LegacyConvertedEnhancedCTImageStorage, LegacyConvertedEnhancedMRImageStorage,
    LegacyConvertedEnhancedPETImageStorage, EnhancedUSVolumeStorage, SegmentationStorage,
])
# What a Derivation Description must state (DESIGN.md): prompt, model, adapters, seed.
DERIVATION_WORDS = ("prompt", "model", "adapters", "seed")
# Attributes of the Patient module that a synthetic instance shares with its source.
PATIENT_KEYWORDS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")


class CheckStatus(str, Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: CheckStatus
    message: str = ""


@dataclass
class FileReport:
    """Every check that ran on one file."""

    path: Path
    sop_instance_uid: str | None = None
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def status(self) -> CheckStatus:
        states = {c.status for c in self.checks}
        if CheckStatus.FAIL in states:
            return CheckStatus.FAIL
        return CheckStatus.WARN if CheckStatus.WARN in states else CheckStatus.PASS

    def add(self, check: str, status: CheckStatus, message: str = "") -> None:
        self.checks.append(CheckResult(check, status, message))

    def problems(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status is not CheckStatus.PASS]


@dataclass
class ValidationReport:
    files: list[FileReport]
    skipped: list[Path] = field(default_factory=list)  # files under the paths that are not DICOM
    source: Path | None = None

    @property
    def ok(self) -> bool:
        return bool(self.files) and all(f.status is not CheckStatus.FAIL for f in self.files)

    def count(self, status: CheckStatus) -> int:
        return sum(1 for f in self.files if f.status is status)

    def table(self) -> str:
        """One line per file, then one indented line per warning or failure."""
        if not self.files:
            return "no DICOM files found"
        names = [display_path(f.path) for f in self.files]
        width = min(max(len(n) for n in names), 72)
        lines = [f"{'FILE':<{width}}  RESULT"]
        for name, report in zip(names, self.files):
            lines.append(f"{name:<{width}}  {report.status.value}")
            for problem in report.problems():
                lines.append(f"{'':<{width}}    {problem.status.value} {problem.check}: {problem.message}")
        lines += self.texture_lines()
        lines.append(
            f"checked {len(self.files)} file(s): {self.count(CheckStatus.PASS)} passed, "
            f"{self.count(CheckStatus.WARN)} passed with warnings, {self.count(CheckStatus.FAIL)} failed"
            + (f" (source {self.source})" if self.source else "")
        )
        return "\n".join(lines)


    def texture_lines(self) -> list[str]:
        """The noise and seam figures of each written series (from its provenance), one line per folder."""
        seen: dict[str, str] = {}
        for report in self.files:
            for check in report.checks:
                if check.check == "texture":
                    seen.setdefault(display_path(report.path.parent), check.message)
        return [f"texture {folder}: {message}" for folder, message in seen.items()]


def display_path(path: Path) -> str:
    """A report's file column: relative to the working directory where it lies below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------- collecting files


def find_dicom_files(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """(DICOM files, other files) under the paths; a named file is always treated as DICOM."""
    found: list[Path] = []
    others: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(path, "no such file or folder")
        if path.is_file():
            found.append(path)
            continue
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            if any(part.startswith(".") for part in file.relative_to(path).parts):
                continue  # staging folders and hidden files are not output
            (found if _looks_like_dicom(file) else others).append(file)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique, others


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as f:
            header = f.read(132)
    except OSError:
        return False
    return len(header) == 132 and header[128:132] == b"DICM"


# ---------------------------------------------------------------------- the source


@dataclass
class _Source:
    """The source volume and how to find a slice from a referenced instance (and frame)."""

    volume: object
    slice_of: dict[tuple[str, int | None], int]
    path_of: dict[str, Path]
    sop_uids: set[str]
    series_uids: set[str]
    masks: dict[str, np.ndarray | None] = field(default_factory=dict)
    dciodvfy_reports: dict[Path, object] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "_Source":
        from medgen.imaging.read import read_volume

        volume = read_volume(path)
        if not volume.datasets:
            raise InputError(path, "--source must be DICOM (the written instances reference DICOM sources)")
        slice_of: dict[tuple[str, int | None], int] = {}
        path_of: dict[str, Path] = {}
        for k in range(volume.num_slices):
            if volume.is_multiframe:
                ds, frame = volume.datasets[0], volume.frame_numbers[k]
                path_of[str(ds.SOPInstanceUID)] = volume.source_paths[0]
            else:
                ds, frame = volume.datasets[k], None
                path_of[str(ds.SOPInstanceUID)] = volume.source_paths[k]
            slice_of[(str(ds.SOPInstanceUID), frame)] = k
        return cls(
            volume=volume,
            slice_of=slice_of,
            path_of=path_of,
            sop_uids={str(ds.SOPInstanceUID) for ds in volume.datasets},
            series_uids={str(ds.SeriesInstanceUID) for ds in volume.datasets if "SeriesInstanceUID" in ds},
        )

    def dataset_for(self, sop_uid: str) -> Dataset | None:
        return next((ds for ds in self.volume.datasets if str(ds.SOPInstanceUID) == sop_uid), None)


# ---------------------------------------------------------------------- entry point


def validate_paths(
    paths: list[str | Path],
    source: str | Path | None = None,
    *,
    mask: str | Path | None = None,
    run_dciodvfy: bool = True,
) -> ValidationReport:
    """Check every DICOM file under ``paths``; with ``source``, also compare with the source scan.

    ``mask`` overrides the mask file named in the provenance (for when it has moved).
    """
    files, others = find_dicom_files(paths)
    src = _Source.read(Path(source)) if source is not None else None
    reports: list[FileReport] = []
    datasets: dict[Path, Dataset] = {}
    for path in files:
        report = FileReport(path)
        reports.append(report)
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # pydicom raises many kinds on damaged files
            report.add("readable", CheckStatus.FAIL, f"not a readable DICOM file: {exc}")
            continue
        problem = _truncation(ds)
        if problem:
            report.add("readable", CheckStatus.FAIL, problem)
            continue
        datasets[path] = ds
        report.sop_instance_uid = str(ds.get("SOPInstanceUID", "")) or None
        _check_instance(ds, path, report)
        if src is not None:
            _check_against_source(ds, path, report, src, Path(mask) if mask else None)
        if run_dciodvfy:
            _check_dciodvfy(ds, path, report, src)
    _check_set(datasets, {r.path: r for r in reports}, src)
    return ValidationReport(reports, skipped=others, source=Path(source) if source else None)


# ---------------------------------------------------------------------- one instance


def _truncation(ds: Dataset) -> str:
    """Why a dataset that pydicom read leniently is not a whole instance, or '' when it is."""
    if "PixelData" not in ds:
        return "no Pixel Data: the file is truncated or not an image"
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax is not None and not UID(syntax).is_compressed and "Rows" in ds and "BitsAllocated" in ds:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = ds.Rows * ds.Columns * frames * int(ds.get("SamplesPerPixel", 1)) * ds.BitsAllocated // 8
        if len(ds.PixelData) < expected:
            return f"Pixel Data holds {len(ds.PixelData)} bytes, {expected} expected: the file is truncated"
    return ""



def _is_seg(ds: Dataset) -> bool:
    return ds.get("SOPClassUID") == SegmentationStorage


def _deidentified(ds: Dataset) -> bool:
    """De-identified after writing: identity removed and, with it, our private provenance block.

    Patient Identity Removed alone is not enough: many sources (test files) were anonymized before.
    """
    if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        return False
    try:
        return read_provenance(ds) is None
    except json.JSONDecodeError:
        return False


def _check_instance(ds: Dataset, path: Path, report: FileReport) -> None:
    """The marks every synthetic instance carries, readable from the file alone."""
    # Synthetic Data
    value = ds.get("SyntheticData")
    if value == codes.SYNTHETIC_DATA:
        report.add("synthetic-data", CheckStatus.PASS)
    else:
        report.add("synthetic-data", CheckStatus.FAIL, f"Synthetic Data (0008,001C) is {value!r}, expected 'YES'")

    # Image Type
    image_type = [str(v) for v in (ds.get("ImageType") or [])] if "ImageType" in ds else []
    if isinstance(ds.get("ImageType"), str):
        image_type = [ds.ImageType]
    second = "PRIMARY" if ds.get("SOPClassUID") in PRIMARY_ONLY_SOP_CLASSES else "SECONDARY"
    if image_type[:2] == ["DERIVED", second]:
        report.add("image-type", CheckStatus.PASS)
    else:
        shown = "\\".join(image_type) or "absent"
        report.add("image-type", CheckStatus.FAIL, f"Image Type is {shown}, expected DERIVED\\{second}\\...")

    # Series Description
    description = str(ds.get("SeriesDescription", "") or "")
    if description.upper().startswith(codes.SERIES_DESCRIPTION_PREFIX):
        report.add("series-description", CheckStatus.PASS)
    else:
        report.add("series-description", CheckStatus.FAIL,
                   f"Series Description {description!r} does not begin with {codes.SERIES_DESCRIPTION_PREFIX!r}")

    _check_equipment(ds, report)
    if not _is_seg(ds):
        _check_source_reference(ds, report)
        _check_derivation(ds, report)
    _check_provenance(ds, path, report)
    if not _is_seg(ds):
        _check_texture(ds, report)
    _check_file_meta(ds, report)
    _check_uid_values(ds, report)


def _check_equipment(ds: Dataset, report: FileReport) -> None:
    wanted = MedgenCode.SYNTHESIZING_EQUIPMENT.code
    for item in ds.get("ContributingEquipmentSequence", []):
        purposes = item.get("PurposeOfReferenceCodeSequence", [])
        if not any(p.get("CodeValue") == wanted.value and p.get("CodingSchemeDesignator") == wanted.scheme_designator
                   for p in purposes):
            continue
        missing = [k for k in ("ManufacturerModelName", "SoftwareVersions") if not item.get(k)]
        if item.get("Manufacturer") != codes.MANUFACTURER:
            report.add("contributing-equipment", CheckStatus.FAIL,
                       f"the 109100 item names manufacturer {item.get('Manufacturer')!r}, expected "
                       f"{codes.MANUFACTURER!r}")
        elif missing:
            report.add("contributing-equipment", CheckStatus.FAIL, f"the 109100 item lacks {', '.join(missing)}")
        else:
            report.add("contributing-equipment", CheckStatus.PASS)
        return
    report.add("contributing-equipment", CheckStatus.FAIL,
               "no Contributing Equipment item with purpose (109100, DCM, 'Synthesizing Equipment')")


def _source_items(ds: Dataset) -> list[tuple[int | None, Dataset]]:
    """(output frame number or None, Source Image item) from the top level and the per-frame groups."""
    items: list[tuple[int | None, Dataset]] = [(None, item) for item in ds.get("SourceImageSequence", [])]
    for index, group in enumerate(ds.get("PerFrameFunctionalGroupsSequence", []), start=1):
        for derivation in group.get("DerivationImageSequence", []):
            items += [(index, item) for item in derivation.get("SourceImageSequence", [])]
    return items


def _check_source_reference(ds: Dataset, report: FileReport) -> None:
    items = _source_items(ds)
    if not items:
        if ds.get("ConversionType") == codes.CONVERSION_TYPE_SYNTHETIC:
            report.add("source-reference", CheckStatus.PASS, "made from a non-DICOM source: nothing to reference")
        else:
            report.add("source-reference", CheckStatus.FAIL, "no Source Image Sequence points at the source instance")
        return
    wanted = MedgenCode.SOURCE_IMAGE_FOR_PROCESSING.code.value
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" in ds and len({f for f, _ in items if f}) != frames:
        report.add("source-reference", CheckStatus.FAIL, "not every frame has a Source Image reference")
        return
    for _, item in items:
        codes_found = [c.get("CodeValue") for c in item.get("PurposeOfReferenceCodeSequence", [])]
        if wanted not in codes_found:
            report.add("source-reference", CheckStatus.FAIL,
                       f"a Source Image item has purpose {codes_found or 'none'}, expected {wanted}")
            return
        if str(item.get("ReferencedSOPInstanceUID", "")) == str(ds.get("SOPInstanceUID", "")):
            report.add("source-reference", CheckStatus.FAIL, "the instance references itself as its source")
            return
    report.add("source-reference", CheckStatus.PASS)


def _check_derivation(ds: Dataset, report: FileReport) -> None:
    texts = [str(ds.DerivationDescription)] if "DerivationDescription" in ds else []
    for group in ds.get("PerFrameFunctionalGroupsSequence", []):
        texts += [str(d.DerivationDescription) for d in group.get("DerivationImageSequence", [])
                  if "DerivationDescription" in d]
    if not texts:
        report.add("derivation", CheckStatus.FAIL, "no Derivation Description")
    elif _deidentified(ds):
        report.add("derivation", CheckStatus.PASS, "de-identified: the free-text details were removed")
    else:
        missing = sorted({w for text in texts for w in DERIVATION_WORDS if w not in text.lower()})
        if missing:
            report.add("derivation", CheckStatus.FAIL, f"Derivation Description does not state {', '.join(missing)}")
        else:
            report.add("derivation", CheckStatus.PASS)


def read_provenance(ds: Dataset) -> dict | None:
    """The provenance JSON from the private block, or None when the block is absent."""
    try:
        block = ds.private_block(codes.PRIVATE_GROUP, codes.PRIVATE_CREATOR)
        element = block[codes.PRIVATE_PROVENANCE_OFFSET]
    except KeyError:
        return None
    value = element.value
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return json.loads(value)


def _check_provenance(ds: Dataset, path: Path, report: FileReport) -> None:
    from medgen.dicom.provenance import PROVENANCE_SCHEMA

    try:
        record = read_provenance(ds)
    except json.JSONDecodeError as exc:
        report.add("provenance", CheckStatus.FAIL, f"the private provenance block is not JSON: {exc}")
        return
    if record is None:
        if _deidentified(ds):
            report.add("provenance", CheckStatus.PASS, "de-identified: private provenance removed")
        else:
            report.add("provenance", CheckStatus.FAIL,
                       f"no provenance block ({codes.PRIVATE_GROUP:04X},xx{codes.PRIVATE_PROVENANCE_OFFSET:02X}) "
                       f"of creator {codes.PRIVATE_CREATOR!r}")
        return
    if record.get("schema") != PROVENANCE_SCHEMA:
        report.add("provenance", CheckStatus.FAIL,
                   f"provenance schema is {record.get('schema')!r}, expected {PROVENANCE_SCHEMA!r}")
    elif not any((folder / PROVENANCE_FILENAME).is_file() for folder in (path.parent, path.parent.parent)):
        report.add("provenance", CheckStatus.WARN, f"no {PROVENANCE_FILENAME} beside the series")
    else:
        report.add("provenance", CheckStatus.PASS)


def _check_texture(ds: Dataset, report: FileReport) -> None:
    """The generated region's noise std ratio and seam strength ratio (medgen.imaging.texture), as the
    engine measured them on this variant; a warning outside their bands, nothing when not recorded."""
    from medgen.imaging.texture import NOISE_RATIO_BAND, SEAM_RATIO_BAND

    try:
        record = read_provenance(ds)
    except json.JSONDecodeError:
        return
    if not record or not record.get("texture"):
        return
    seeds = [v.get("seed") for v in record.get("variants", [])]
    seed = record.get("variant_seed")
    index = seeds.index(seed) if seed in seeds else 0
    if index >= len(record["texture"]):
        return
    figures = record["texture"][index]
    noise, seam = figures.get("noise_std_ratio"), figures.get("seam_strength_ratio")
    message = (
        f"noise std ratio {noise}, seam strength ratio {seam} "
        f"(generated region / surrounding tissue; bands {NOISE_RATIO_BAND[0]}-{NOISE_RATIO_BAND[1]}, "
        f"{SEAM_RATIO_BAND[0]}-{SEAM_RATIO_BAND[1]})"
    )
    in_band = (
        noise is not None and seam is not None
        and NOISE_RATIO_BAND[0] <= noise <= NOISE_RATIO_BAND[1] and SEAM_RATIO_BAND[0] <= seam <= SEAM_RATIO_BAND[1]
    )
    report.add("texture", CheckStatus.PASS if in_band else CheckStatus.WARN, message)


def _check_file_meta(ds: Dataset, report: FileReport) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None or "MediaStorageSOPInstanceUID" not in meta:
        report.add("file-meta", CheckStatus.FAIL, "no file meta information")
    elif meta.MediaStorageSOPInstanceUID != ds.get("SOPInstanceUID"):
        report.add("file-meta", CheckStatus.FAIL, "Media Storage SOP Instance UID differs from SOP Instance UID")
    elif meta.get("MediaStorageSOPClassUID") != ds.get("SOPClassUID"):
        report.add("file-meta", CheckStatus.FAIL, "Media Storage SOP Class UID differs from SOP Class UID")
    else:
        report.add("file-meta", CheckStatus.PASS)


def _check_uid_values(ds: Dataset, report: FileReport) -> None:
    bad = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        if keyword in ds and not UID(str(ds.get(keyword))).is_valid:
            bad.append(f"{keyword} {ds.get(keyword)!r}")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if not ds.get(keyword):
            bad.append(f"{keyword} missing")
    if bad:
        report.add("uids", CheckStatus.FAIL, "invalid UID: " + "; ".join(bad))


# ---------------------------------------------------------------------- against the source


def _check_against_source(ds: Dataset, path: Path, report: FileReport, src: _Source, mask: Path | None) -> None:
    if _deidentified(ds):
        report.add("source", CheckStatus.WARN, "de-identified: cannot be compared with the source")
        return
    # new UIDs
    reused = [k for k, uids in (("SOPInstanceUID", src.sop_uids), ("SeriesInstanceUID", src.series_uids))
              if str(ds.get(k, "")) in uids]
    if reused:
        report.add("uids", CheckStatus.FAIL, f"{', '.join(reused)} reused from the source")
    if _is_seg(ds):
        referenced = {str(i.ReferencedSOPInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])
                      for i in s.get("ReferencedInstanceSequence", [])}
        if referenced & src.sop_uids:
            report.add("seg-references", CheckStatus.FAIL, "the SEG references source instances, not synthetic ones")
        _check_study_patient(ds, src.volume.datasets[0], report)
        return
    referenced = [str(item.get("ReferencedSOPInstanceUID", "")) for _, item in _source_items(ds)]
    source_ds = src.dataset_for(referenced[0]) if referenced else None
    if source_ds is None:
        report.add("source", CheckStatus.FAIL, "its Source Image reference is not an instance of --source")
        return
    if ds.get("SOPClassUID") != source_ds.get("SOPClassUID"):
        report.add("source", CheckStatus.FAIL, "SOP Class differs from the source's")
    _check_study_patient(ds, source_ds, report)
    _check_outside_mask(ds, path, report, src, mask)


def _check_study_patient(ds: Dataset, source_ds: Dataset, report: FileReport) -> None:
    differences = [k for k in ("StudyInstanceUID", *PATIENT_KEYWORDS)
                   if str(ds.get(k, "") or "") != str(source_ds.get(k, "") or "")]
    if ("FrameOfReferenceUID" in ds and "FrameOfReferenceUID" in source_ds
            and ds.FrameOfReferenceUID != source_ds.FrameOfReferenceUID
            and ds.get("Rows") == source_ds.get("Rows") and ds.get("Columns") == source_ds.get("Columns")):
        differences.append("FrameOfReferenceUID")
    if differences:
        report.add("study-patient", CheckStatus.FAIL, f"differs from the source in {', '.join(differences)}")
    else:
        report.add("study-patient", CheckStatus.PASS)


def source_frames(ds: Dataset) -> list[tuple[str, int | None]]:
    """For each output frame (in order), the source (SOP Instance UID, frame number or None)."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = [(f, item) for f, item in _source_items(ds) if f is not None]
    if per_frame:
        by_frame = {f: item for f, item in per_frame}
        return [(str(by_frame[f].ReferencedSOPInstanceUID), _first_int(by_frame[f].get("ReferencedFrameNumber")))
                for f in range(1, frames + 1)]
    item = ds.SourceImageSequence[0]
    numbers = item.get("ReferencedFrameNumber")
    if numbers is None:
        return [(str(item.ReferencedSOPInstanceUID), None if frames == 1 else f) for f in range(1, frames + 1)]
    if isinstance(numbers, (list, pydicom.multival.MultiValue)):
        numbers = [int(n) for n in numbers]
    else:
        numbers = [int(numbers)]
    return [(str(item.ReferencedSOPInstanceUID), n) for n in numbers]


def _first_int(value) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        return int(value[0])
    return int(value)


def _allowed_region(record: dict, src: _Source, mask_override: Path | None) -> tuple[np.ndarray | None, list[int], str]:
    """(allowed-change mask per source slice or None, inpainted slices, note) from the provenance."""
    from medgen.imaging.crop import blend_region
    from medgen.imaging.masks import read_mask

    parameters = record.get("parameters", {}) if record else {}
    slices = [int(k) for k in parameters.get("slices_inpainted", [])]
    mask_path = mask_override or (Path(parameters["mask"]) if parameters.get("mask") else None)
    if mask_path is None or not mask_path.exists():
        return None, slices, f"mask {mask_path or '(not recorded)'} not found"
    key = str(mask_path)
    if key not in src.masks:
        volume = src.volume
        mask = read_mask(mask_path, volume, segment=parameters.get("segment"), label=parameters.get("label"),
                         resample=bool(parameters.get("resample_mask")))  # as the run itself read it
        radius = float(parameters.get("mask_dilate_mm", 0.0))
        spacing = (volume.spacing[1], volume.spacing[2])
        allowed = np.zeros(mask.shape, dtype=bool)
        for k in slices:
            allowed[k] = blend_region(mask[k], radius, spacing)
        src.masks[key] = allowed
    return src.masks[key], slices, ""


def _check_outside_mask(ds: Dataset, path: Path, report: FileReport, src: _Source, mask: Path | None) -> None:
    from medgen.imaging.read import read_volume

    try:
        record = read_provenance(ds)
    except json.JSONDecodeError:
        record = None
    if not record or "slices_inpainted" not in record.get("parameters", {}):
        report.add("outside-mask", CheckStatus.WARN, "the provenance does not list the inpainted slices")
        return
    try:
        allowed, inpainted, note = _allowed_region(record, src, mask)
    except InputError as exc:
        report.add("outside-mask", CheckStatus.WARN, f"cannot read the mask: {exc}")
        return
    written = read_volume(path)
    frames = source_frames(ds)
    changed_outside: list[str] = []
    for j in range(written.num_slices):
        frame_index = (written.frame_numbers[j] - 1) if written.is_multiframe else j
        key = frames[frame_index]
        k = src.slice_of.get(key)
        if k is None:
            report.add("outside-mask", CheckStatus.FAIL, f"frame {frame_index + 1} references {key}, not in --source")
            return
        before, after = src.volume.pixels[k], written.pixels[j]
        if before.shape != after.shape or before.dtype != after.dtype:
            report.add("outside-mask", CheckStatus.FAIL,
                       f"slice {k}: {after.shape} {after.dtype} written for a {before.shape} {before.dtype} source")
            return
        changed = before != after
        if changed.ndim == 3:
            changed = changed.any(axis=-1)
        if allowed is not None:
            outside = changed & ~allowed[k]
        elif k in inpainted:
            outside = np.zeros_like(changed)
        else:
            outside = changed
        if outside.any():
            changed_outside.append(f"slice {k}: {int(outside.sum())} pixel(s)")
    if changed_outside:
        report.add("outside-mask", CheckStatus.FAIL, "stored values changed outside the dilated mask on "
                   + "; ".join(changed_outside))
    elif note:
        report.add("outside-mask", CheckStatus.WARN, f"{note}: compared only the slices that were not inpainted")
    else:
        report.add("outside-mask", CheckStatus.PASS)


# ---------------------------------------------------------------------- dciodvfy


def _check_dciodvfy(ds: Dataset, path: Path, report: FileReport, src: _Source | None) -> None:
    from medgen.dicom.dciodvfy import is_available, new_errors, run_dciodvfy

    if not is_available():
        return
    output = run_dciodvfy(path)
    if not output.errors:
        report.add("dciodvfy", CheckStatus.PASS)
        return
    source_path = None
    if src is not None and not _is_seg(ds):
        referenced = [str(item.get("ReferencedSOPInstanceUID", "")) for _, item in _source_items(ds)]
        source_path = src.path_of.get(referenced[0]) if referenced else None
    if source_path is not None:
        if source_path not in src.dciodvfy_reports:
            src.dciodvfy_reports[source_path] = run_dciodvfy(source_path)
        added = new_errors(output, src.dciodvfy_reports[source_path])
        if added:
            report.add("dciodvfy", CheckStatus.FAIL, f"{len(added)} new error(s): {added[0]}")
        else:
            report.add("dciodvfy", CheckStatus.PASS, f"{len(output.errors)} error(s), all inherited from the source")
    elif _is_seg(ds):
        report.add("dciodvfy", CheckStatus.FAIL, f"{len(output.errors)} error(s): {output.errors[0]}")
    else:
        report.add("dciodvfy", CheckStatus.WARN,
                   f"{len(output.errors)} error(s), e.g. {output.errors[0]!r}; give --source to tell inherited "
                   "from new")


# ---------------------------------------------------------------------- the set


def _check_set(datasets: dict[Path, Dataset], reports: dict[Path, FileReport], src: _Source | None) -> None:
    """UIDs unique across files, one folder per series, Study/Patient consistent within a series."""
    by_sop: dict[str, list[Path]] = defaultdict(list)
    folders_of_series: dict[str, set[Path]] = defaultdict(set)
    series_members: dict[str, list[Path]] = defaultdict(list)
    for path, ds in datasets.items():
        by_sop[str(ds.get("SOPInstanceUID", ""))].append(path)
        series = str(ds.get("SeriesInstanceUID", ""))
        folders_of_series[series].add(path.parent)
        series_members[series].append(path)
    for paths in by_sop.values():
        for path in paths:
            if len(paths) > 1:
                others = ", ".join(p.name for p in paths if p != path)
                reports[path].add("uids", CheckStatus.FAIL, f"SOP Instance UID also used by {others}")
    for series, folders in folders_of_series.items():
        if len(folders) > 1:
            for path in series_members[series]:
                reports[path].add("uids", CheckStatus.FAIL, f"Series Instance UID shared by {len(folders)} "
                                  "folders: each variant must be a new series")
    for paths in series_members.values():
        first = datasets[paths[0]]
        for path in paths[1:]:
            differences = [k for k in ("StudyInstanceUID", *PATIENT_KEYWORDS)
                           if str(datasets[path].get(k, "") or "") != str(first.get(k, "") or "")]
            if differences:
                reports[path].add("study-patient", CheckStatus.FAIL,
                                  f"differs from {paths[0].name} of the same series in {', '.join(differences)}")
    for path, report in reports.items():
        if path in datasets and not any(c.check == "uids" for c in report.checks):
            report.add("uids", CheckStatus.PASS)
    _check_seg_references(datasets, reports)


def _check_seg_references(datasets: dict[Path, Dataset], reports: dict[Path, FileReport]) -> None:
    """A SEG must reference synthetic instances; when they are among the checked files, verify them."""
    by_uid = {str(ds.get("SOPInstanceUID", "")): ds for ds in datasets.values()}
    for path, ds in datasets.items():
        if not _is_seg(ds):
            continue
        referenced = [str(i.ReferencedSOPInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])
                      for i in s.get("ReferencedInstanceSequence", [])]
        if not referenced:
            reports[path].add("seg-references", CheckStatus.FAIL, "the SEG references no instances")
            continue
        known = [by_uid[u] for u in referenced if u in by_uid]
        if any(r.get("SyntheticData") != codes.SYNTHETIC_DATA for r in known):
            reports[path].add("seg-references", CheckStatus.FAIL, "the SEG references instances that are not synthetic")
        elif any(str(r.get("StudyInstanceUID")) != str(ds.get("StudyInstanceUID")) for r in known):
            reports[path].add("seg-references", CheckStatus.FAIL, "the SEG is in another study than its images")
        elif len(known) < len(referenced):
            reports[path].add("seg-references", CheckStatus.WARN,
                              f"{len(referenced) - len(known)} referenced instance(s) are not among the checked files")
        else:
            reports[path].add("seg-references", CheckStatus.PASS)


# ---------------------------------------------------------------------- command line


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="medgen validate")
    parser.description = "Check synthetic DICOM against the synthetic-DICOM rules (and dciodvfy when installed)."
    parser.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders (searched recursively)")
    parser.add_argument("--source", type=Path, help="the source scan (file or series folder): compare with it")
    parser.add_argument("--mask", type=Path, help="mask file, when the one named in the provenance has moved")
    parser.add_argument("--no-dciodvfy", action="store_true", help="skip dciodvfy even when installed")
    return parser


def run_validate(args: argparse.Namespace) -> int:
    report = validate_paths(args.paths, args.source, mask=args.mask, run_dciodvfy=not args.no_dciodvfy)
    print(report.table())
    print(dciodvfy_status_line(ran=not args.no_dciodvfy, files=len(report.files)))
    return 0 if report.ok else 1


def dciodvfy_status_line(*, ran: bool, files: int) -> str:
    """Whether the DICOM conformance check ran: a table without a dciodvfy row must not read as a pass."""
    from medgen.dicom.dciodvfy import is_available

    if not ran:
        return "dciodvfy: skipped (--no-dciodvfy); DICOM conformance was not checked"
    if not is_available():
        return ("dciodvfy: not installed, so DICOM conformance was not checked "
                "(Debian/Ubuntu: apt-get install dicom3tools)")
    return f"dciodvfy: ran on each of the {files} file(s)"
