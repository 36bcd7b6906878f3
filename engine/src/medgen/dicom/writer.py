"""Write inpainted pixels back as a new DICOM series that no person or program can take for an acquisition.

Every instance follows "Synthetic DICOM: the rules every written instance obeys" in DESIGN.md:
new Series/SOP Instance UIDs, Study/Patient/Frame of Reference kept, Synthetic Data = YES,
Image Type DERIVED\\SECONDARY, Contributing Equipment (109100), Source Image references (121322),
Derivation Description, a "SYNTHETIC" Series Description and the full provenance JSON in a private
block. Output is always uncompressed Explicit VR Little Endian, so the stored values written are
exactly the values given, bit for bit.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    EnhancedCTImageStorage,
    EnhancedMRColorImageStorage,
    EnhancedMRImageStorage,
    EnhancedPETImageStorage,
    EnhancedUSVolumeStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    LegacyConvertedEnhancedPETImageStorage,
    MPEGTransferSyntaxes,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    PhotoacousticImageStorage,
)

from medgen.dicom import codes
from medgen.dicom.codes import MedgenCode
from medgen.dicom.provenance import provenance_to_json
from medgen.dicom.repair import (
    private_elements_as_unknown,
    repair_dates_and_times,
    repair_enumerated_values,
    uses_iso_2022,
)
from medgen.errors import InputError, OutputError
from medgen.imaging.volume import PixelFormat, SourceFormat, Volume
from medgen.reproducible import content_uid, creation_time, pixel_digest

logger = logging.getLogger(__name__)

PROVENANCE_FILENAME = "provenance.json"
# Value limits of the VRs we fill (PS3.5 6.2).
_LO_MAX = 64
_ST_MAX = 1024
_SH_MAX = 16

# Attributes of the source that would be false, or meaningless, for the derived instance.
_DROPPED_KEYWORDS = (
    # pixel data and its encodings: rewritten uncompressed
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths", "PixelDataProviderURL", "DataSetTrailingPadding", "PlanarConfiguration",
    # a thumbnail of the source pixels would show the unmodified image
    "IconImageSequence",
    # pixel statistics of the source are wrong for the new pixels
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    # the source's derivation history is replaced by ours (the source stays referenced)
    "SourceImageSequence", "DerivationCodeSequence", "DerivationDescription", "SourceImageEvidenceSequence",
    # the instance is new: its creator and any signature over the source content no longer apply
    "InstanceCreatorUID", "DigitalSignaturesSequence", "MACParametersSequence",
    # we write one standalone instance, never part of a concatenation
    "ConcatenationUID", "ConcatenationFrameOffsetNumber", "InConcatenationNumber",
    "InConcatenationTotalNumber", "SOPInstanceUIDOfConcatenationSource",
)
# Transfer syntaxes whose pixels have certainly been through lossy compression.
_LOSSY_TRANSFER_SYNTAXES = frozenset([JPEGBaseline8Bit, JPEGExtended12Bit, *MPEGTransferSyntaxes])
# Type 2 attributes of the Patient and General Study modules, present (maybe empty) in every image
# IOD: where a source lacks one, adding it empty is a safe repair (PS3.5 7.4: empty = unknown).
_TYPE2_EVERY_IMAGE = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
)
# Type 3 sequences that some sources carry with zero items, which the standard forbids (1-n).
_EMPTY_TYPE3_SEQUENCES = ("RequestAttributesSequence", "ReferencedPerformedProcedureStepSequence")
_COLOR_PHOTOMETRICS = ("RGB", "YBR_FULL")
# Enhanced IODs whose Image Type / Frame Type Value 2 is the Enumerated Value PRIMARY only
# (PS3.3 C.8.16.1): there we write DERIVED\PRIMARY, since SECONDARY would make the instance invalid.
_ENHANCED_SOP_CLASSES = frozenset([
    EnhancedCTImageStorage, EnhancedMRImageStorage, EnhancedMRColorImageStorage, EnhancedPETImageStorage,
    LegacyConvertedEnhancedCTImageStorage, LegacyConvertedEnhancedMRImageStorage,
    LegacyConvertedEnhancedPETImageStorage, EnhancedUSVolumeStorage, PhotoacousticImageStorage,
])
_ENHANCED_MR_SOP_CLASSES = frozenset([EnhancedMRImageStorage, EnhancedMRColorImageStorage])
# Enhanced MR attributes required only when Image Type Value 1 is ORIGINAL or MIXED (MR Pulse
# Sequence and Bulk Motion Synchronization modules). The standard lets a DERIVED image keep them,
# but dciodvfy (dicom3tools 2022) rejects them there; the source instance, which we reference,
# keeps them, so we drop them rather than add an error.
_MR_ORIGINAL_ONLY = (
    "PulseSequenceName", "MRAcquisitionType", "EchoPulseSequence", "MultipleSpinEcho", "MultiPlanarExcitation",
    "PhaseContrast", "TimeOfFlightContrast", "SteadyStatePulseSequence", "EchoPlanarPulseSequence",
    "SaturationRecovery", "SpectrallySelectedSuppression", "OversamplingPhase", "GeometryOfKSpaceTraversal",
    "RectilinearPhaseEncodeReordering", "SegmentedKSpaceTraversal", "CoverageOfKSpace",
    "NumberOfKSpaceTrajectories", "BulkMotionCompensationTechnique", "BulkMotionSignalSource",
)


class SyntheticSeriesWriter:
    """Writes one variant of an inpainted DICOM volume as a new synthetic series.

    Stricter than the standard in two places, on purpose: colour is written only as RGB or
    YBR_FULL with Planar Configuration 0 (what decoders agree on), and the caller must list every
    slice it changed in ``modified_slices`` (a mismatch is refused, never guessed).
    """

    def __init__(
        self,
        source: Volume,
        *,
        series_description: str,
        derivation_description: str,
        provenance: Mapping[str, Any],
        software_version: str,
        model_name: str,
        series_number: int | None = None,
        burn_in_label: bool = False,
    ):
        _check_source(source)
        for name, value in (
            ("series_description", series_description),
            ("derivation_description", derivation_description),
            ("software_version", software_version),
            ("model_name", model_name),
        ):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if series_number is not None and not (0 <= int(series_number) <= 2**31 - 1):
            raise ValueError(f"series_number must be in [0, 2**31-1], got {series_number}")
        # serialise now, so a bad provenance fails before anything is written
        self._provenance_json = provenance_to_json(provenance, indent=None, ascii_only=True)
        self._provenance_pretty = provenance_to_json(provenance)

        self.source = source
        self.series_description = _series_description(series_description)
        self.derivation_description = _fit(_single_line(derivation_description, keep_newlines=True), _ST_MAX)
        self.provenance = dict(provenance)
        self.software_version = _fit(_single_line(software_version), _LO_MAX)
        self.model_name = _fit(_single_line(model_name), _LO_MAX)
        self.burn_in_label = bool(burn_in_label)
        self.series_number = int(series_number) if series_number is not None else default_series_number(source)
        # notes of the source's values repaired in the derived instances (see medgen.dicom.repair)
        self.repairs: list[str] = []
        self._burned_in_text: bool | None = None  # decided once per series, on the first derived instance

    # ------------------------------------------------------------------ public

    def write(
        self,
        pixels: np.ndarray,
        out_dir: str | Path,
        *,
        modified_slices: Sequence[int],
        only_modified: bool = False,
    ) -> list[Path]:
        """Write the series into ``out_dir`` (which must not exist or be empty); return the DICOM files.

        ``pixels`` is the whole volume in stored values, same shape and dtype as ``source.pixels``,
        with the inpainted slices replaced. ``provenance.json`` is written beside the instances.
        The folder appears complete or not at all (written under a temporary name, then renamed).
        """
        # 1. Check inputs
        out_dir = Path(out_dir)
        _check_out_dir(out_dir)

        # 2. Build every instance, 3. write them into a temporary folder beside out_dir, then rename it
        instances = self.derive_instances(pixels, modified_slices=modified_slices, only_modified=only_modified)
        names: list[str] = []
        with _staged_series_dir(out_dir, self._provenance_pretty) as tmp_dir:
            for name, ds in instances:
                names.append(_save(ds, tmp_dir / name))
        logger.info("wrote %d synthetic instance(s) to %s", len(names), out_dir)
        return [out_dir / name for name in names]

    def derive_instances(
        self, pixels: np.ndarray, *, modified_slices: Sequence[int], only_modified: bool = False
    ) -> list[tuple[str, Dataset]]:
        """The (file name, dataset) of every instance ``write`` would save; the pre-flight builds them too."""
        modified = self._check_write_inputs(pixels, modified_slices, only_modified)
        slices = sorted(modified) if only_modified else list(range(self.source.num_slices))
        now = _now_like(self.source.datasets[0])
        if self.burn_in_label:
            pixels = pixels.copy()
            for k in slices:
                pixels[k] = burn_in(pixels[k], self.source.pixel_format)
        series_uid = self._series_uid(pixels, slices)
        if self.source.is_multiframe:
            order = sorted(slices, key=lambda k: self.source.frame_numbers[k])
            frames = [self.source.frame_numbers[k] for k in order]
            ds = self._derive(self.source.datasets[0], np.stack([pixels[k] for k in order]), series_uid, now,
                              frames=frames)
            return [("IM-0001.dcm", ds)]
        return [(f"IM-{k + 1:04d}.dcm", self._derive(self.source.datasets[k], pixels[k], series_uid, now, frames=None))
                for k in slices]

    def _series_uid(self, pixels: np.ndarray, slices: list[int]) -> UID:
        """Derived from everything the series holds, so the same request gives the same UID and any other
        pixels, settings or source give another (medgen.reproducible)."""
        settings = {k: v for k, v in self.provenance.items() if k != "created_utc"}
        return content_uid(
            "series", self.source.datasets[0].get("SeriesInstanceUID", ""), slices,
            pixel_digest(pixels[k] for k in slices), json.dumps(settings, sort_keys=True, default=str),
            self.series_description, self.derivation_description, self.series_number,
        )

    # ------------------------------------------------------------------ checks

    def _check_write_inputs(self, pixels: np.ndarray, modified_slices: Sequence[int], only_modified: bool) -> set[int]:
        src = self.source
        if not isinstance(pixels, np.ndarray):
            raise TypeError(f"pixels must be a numpy array, got {type(pixels).__name__}")
        if pixels.shape != src.pixels.shape or pixels.dtype != src.pixels.dtype:
            raise ValueError(
                f"pixels must match the source volume: expected {src.pixels.shape} {src.pixels.dtype}, "
                f"got {pixels.shape} {pixels.dtype}"
            )
        n = src.num_slices
        modified = {int(k) for k in modified_slices}
        if len(modified) != len(modified_slices) or any(k < 0 or k >= n for k in modified):
            raise ValueError(f"modified_slices must be distinct indices in [0, {n}), got {list(modified_slices)}")
        if only_modified and not modified:
            raise ValueError("only_modified=True needs at least one slice in modified_slices")
        changed = [k for k in range(n) if k not in modified and not np.array_equal(pixels[k], src.pixels[k])]
        if changed:
            raise ValueError(f"slices {changed} differ from the source but are not in modified_slices")
        fmt = src.pixel_format
        lo, hi = int(pixels.min()), int(pixels.max())
        if lo < fmt.stored_min or hi > fmt.stored_max:
            raise ValueError(
                f"pixel values must lie in the source's stored range [{fmt.stored_min}, {fmt.stored_max}] "
                f"(BitsStored {fmt.bits_stored}, signed={fmt.signed}), got [{lo}, {hi}]"
            )
        return modified

    # ------------------------------------------------------------------ building one instance

    def _derive(self, src: Dataset, pixels: np.ndarray, series_uid: UID, now: dt.datetime, *,
                frames: list[int] | None) -> Dataset:
        """The derived dataset for one source instance; ``frames`` (1-based) when it is multi-frame."""
        ds = _copy_without(src, _DROPPED_KEYWORDS)
        _drop_group_lengths(ds)
        notes = private_elements_as_unknown(ds, src)
        if uses_iso_2022(ds):
            ds.decode()  # text becomes str and is written as UTF-8: same characters, no escape sequences
            ds.SpecificCharacterSet = "ISO_IR 192"
            notes.append(f"text in {'/'.join(_as_list(src.SpecificCharacterSet))} (ISO 2022) re-encoded as UTF-8")
        _use_utf8_if_needed(ds, [self.series_description, self.derivation_description, self.model_name,
                                 self.software_version])
        notes += repair_dates_and_times(ds)
        notes += repair_enumerated_values(ds)
        notes += self._add_missing_frame_of_reference(ds)
        notes += self._mark_burned_in_text(ds, src, pixels)
        self.repairs += [note for note in notes if note not in self.repairs]

        # identity: new series and instance, same study, patient and frame of reference
        sop_uid = content_uid("instance", series_uid, src.get("SOPInstanceUID", ""), frames)
        ds.SOPInstanceUID = sop_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = self.series_number
        ds.SeriesDescription = self.series_description
        _set_date_time(ds, "Series", now)
        _set_date_time(ds, "Content", now)
        _set_date_time(ds, "InstanceCreation", now)

        # the synthetic marks
        ds.SyntheticData = codes.SYNTHETIC_DATA
        ds.ImageType = _image_type(src)
        equipment = DicomSequence(copy.deepcopy(list(src.get("ContributingEquipmentSequence", []))))
        equipment.append(self._equipment_item(now))
        ds.ContributingEquipmentSequence = equipment
        if self.burn_in_label:
            ds.BurnedInAnnotation = "YES"
        block = ds.private_block(codes.PRIVATE_GROUP, codes.PRIVATE_CREATOR, create=True)
        block.add_new(codes.PRIVATE_PROVENANCE_OFFSET, "UT", self._provenance_json)
        _declare_private_coding_scheme(ds)

        # derivation: where the pixels came from, and how
        reference = _source_reference(src)
        if "PerFrameFunctionalGroupsSequence" in src:
            self._derive_functional_groups(ds, src, reference, frames)
        else:
            if frames is not None:
                reference.ReferencedFrameNumber = frames if len(frames) > 1 else frames[0]
            ds.SourceImageSequence = [reference]
            ds.DerivationDescription = self.derivation_description
            ds.DerivationCodeSequence = [MedgenCode.GENERATIVE_INPAINTING.to_item()]

        # pixels: exactly the given stored values, uncompressed
        if frames is not None:
            ds.NumberOfFrames = len(frames)
            _subset_frame_vectors(ds, src, frames)
        _set_pixels(ds, pixels, self.source.pixel_format)
        source_syntax = getattr(src, "file_meta", Dataset()).get("TransferSyntaxUID")
        if source_syntax in _LOSSY_TRANSFER_SYNTAXES and "LossyImageCompression" not in src:
            ds.LossyImageCompression = "01"  # the content was lossy-compressed once; that stays true

        if src.SOPClassUID in _ENHANCED_MR_SOP_CLASSES:
            for keyword in _MR_ORIGINAL_ONLY:
                if keyword in ds:
                    delattr(ds, keyword)
        _repair(ds, enhanced=src.SOPClassUID in _ENHANCED_SOP_CLASSES)
        ds.file_meta = _file_meta(ds.SOPClassUID, sop_uid)
        return ds

    def _mark_burned_in_text(self, ds: Dataset, src: Dataset, pixels: np.ndarray) -> list[str]:
        """US/SC/OT images with text in their pixels get Burned In Annotation YES (imaging.burned_in)."""
        from medgen.imaging.burned_in import SCREENED_MODALITIES, has_burned_in_text

        if str(src.get("Modality", "")) not in SCREENED_MODALITIES or src.get("BurnedInAnnotation") == "YES":
            return []
        if self._burned_in_text is None:
            first = pixels if pixels.ndim == (2 if self.source.pixel_format.samples_per_pixel == 1 else 3) else pixels[0]
            self._burned_in_text = has_burned_in_text(first)
        if not self._burned_in_text:
            return []
        ds.BurnedInAnnotation = "YES"
        said = src.get("BurnedInAnnotation")
        return [f"text found burned into the pixels; Burned In Annotation set to YES (the source said {said or 'nothing'})"]

    def _add_missing_frame_of_reference(self, ds: Dataset) -> list[str]:
        """A source with patient positions but no Frame of Reference UID (Type 1 in CT/MR/PET images, yet
        missing in some exports) gets one new UID for the whole synthetic series, so the positions it
        carries can be used (a SEG needs it); the source is left unchanged. The UID is derived from the
        source series, not drawn at random: every variant and every run of the same source (in this
        process or a batch worker) has the same one, and so the same bytes."""
        if "FrameOfReferenceUID" in ds or "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            return []
        if getattr(self, "_new_frame_of_reference", None) is None:
            first = self.source.datasets[0]
            self._new_frame_of_reference = content_uid(
                "frame-of-reference", first.get("StudyInstanceUID", ""), first.get("SeriesInstanceUID", ""),
                first.get("SOPInstanceUID", ""),
            )
        ds.FrameOfReferenceUID = self._new_frame_of_reference
        if "PositionReferenceIndicator" not in ds:
            ds.PositionReferenceIndicator = ""
        return ["the source has positions but no Frame of Reference UID; the synthetic series has a new one"]

    def _equipment_item(self, now: dt.datetime) -> Dataset:
        item = Dataset()
        item.PurposeOfReferenceCodeSequence = [MedgenCode.SYNTHESIZING_EQUIPMENT.to_item()]
        item.Manufacturer = codes.MANUFACTURER
        item.ManufacturerModelName = self.model_name
        item.SoftwareVersions = self.software_version
        item.ContributionDateTime = _dt_string(now)
        item.ContributionDescription = codes.CONTRIBUTION_DESCRIPTION
        return item

    def _derive_functional_groups(self, ds: Dataset, src: Dataset, reference: Dataset, frames: list[int]) -> None:
        """Enhanced multi-frame: frames subset, Frame Type DERIVED, a Derivation Image item per frame."""
        per_frame = src.PerFrameFunctionalGroupsSequence
        ds.PerFrameFunctionalGroupsSequence = [copy.deepcopy(per_frame[f - 1]) for f in frames]
        for item in ds.get("SharedFunctionalGroupsSequence", []):
            if "DerivationImageSequence" in item:
                del item.DerivationImageSequence  # a functional group is either shared or per frame
        for group in [*ds.get("SharedFunctionalGroupsSequence", []), *ds.PerFrameFunctionalGroupsSequence]:
            for element in group:
                if element.VR == "SQ":
                    for sub in element.value:
                        if "FrameType" in sub:
                            sub.FrameType = ["DERIVED", *list(_as_list(sub.FrameType))[1:]]
        for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence):
            derivation = Dataset()
            derivation.DerivationDescription = self.derivation_description
            derivation.DerivationCodeSequence = [MedgenCode.GENERATIVE_INPAINTING.to_item()]
            frame_ref = copy.deepcopy(reference)
            frame_ref.ReferencedFrameNumber = frame
            derivation.SourceImageSequence = [frame_ref]
            group.DerivationImageSequence = [derivation]
        # Source Image Evidence (Type 1C once a Derivation Image item references a source), and
        # the Common Instance Reference module listing the same instance
        evidence = Dataset()
        evidence.StudyInstanceUID = src.StudyInstanceUID
        series = Dataset()
        series.SeriesInstanceUID = src.SeriesInstanceUID
        instance = Dataset()
        instance.ReferencedSOPClassUID = src.SOPClassUID
        instance.ReferencedSOPInstanceUID = src.SOPInstanceUID
        series.ReferencedSOPSequence = [instance]
        evidence.ReferencedSeriesSequence = [series]
        ds.SourceImageEvidenceSequence = [evidence]
        _reference_in_common_instance_module(ds, src)


# ---------------------------------------------------------------------- Secondary Capture


def write_secondary_capture(
    volume: Volume,
    pixels: np.ndarray,
    out_dir: str | Path,
    *,
    series_description: str,
    derivation_description: str,
    provenance: Mapping[str, Any],
    software_version: str,
    model_name: str,
    patient_name: str = "ANONYMOUS",
    patient_id: str = "ANONYMOUS",
    study_instance_uid: str | None = None,
    series_number: int = 1,
    modality: str = "OT",
    burn_in_label: bool = False,
) -> list[Path]:
    """Write a non-DICOM volume (NIfTI/NRRD/PNG) as one Multi-frame Secondary Capture instance.

    Unsigned integers up to 16 bits are written unchanged (Byte or Word SC). Signed integers are
    shifted (exactly) and floats quantised onto 0..65535, with the mapping recorded in the
    provenance ("dicom_value_mapping"), because SC images must be unsigned with an identity rescale. SC IODs have no Image Plane module, so geometry survives only as Pixel Spacing,
    slice locations and Patient Orientation. Pass ``study_instance_uid`` to keep all variants of
    one input in one study.
    """
    # 1. Check inputs
    if pixels.shape != volume.pixels.shape:
        raise ValueError(f"pixels must have the volume's shape {volume.pixels.shape}, got {pixels.shape}")
    if pixels.ndim not in (3, 4) or (pixels.ndim == 4 and pixels.shape[3] != 3):
        raise ValueError(f"pixels must be (S,R,C) or (S,R,C,3), got {pixels.shape}")
    for name, value in (("series_description", series_description), ("derivation_description", derivation_description),
                        ("software_version", software_version), ("model_name", model_name)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    record = dict(provenance)

    # 2. Choose the SC IOD and the stored values
    stored, fmt, sop_class, mapping = _secondary_capture_values(pixels)
    if mapping is not None:
        record["dicom_value_mapping"] = mapping
    if burn_in_label:
        stored = np.stack([burn_in(frame, fmt) for frame in stored])
    provenance_json = provenance_to_json(record, indent=None, ascii_only=True)

    # 3. Build the dataset
    now = creation_time().astimezone()
    ds = Dataset()
    _use_utf8_if_needed(ds, [series_description, derivation_description, model_name, software_version,
                             patient_name, patient_id])
    settings = json.dumps({k: v for k, v in record.items() if k != "created_utc"}, sort_keys=True, default=str)
    sop_uid = content_uid("sc-instance", settings, pixel_digest(stored), series_description, series_number)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    _set_date_time(ds, "InstanceCreation", now)
    # Patient and General Study
    ds.PatientName = patient_name
    ds.PatientID = _fit(_single_line(patient_id), _LO_MAX)
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_instance_uid or content_uid(
        "sc-study", *[str(i.get("sha256")) for i in record.get("inputs", []) if isinstance(i, dict)]
    )  # every variant of one input lands in one study
    _set_date_time(ds, "Study", now)
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    # General Series, General Equipment, SC Equipment
    ds.Modality = modality
    ds.SeriesInstanceUID = content_uid("sc-series", sop_uid)
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = _series_description(series_description)
    _set_date_time(ds, "Series", now)
    ds.Laterality = ""  # Type 2C; the body part is unknown here, and empty means unknown
    ds.Manufacturer = codes.MANUFACTURER
    ds.SoftwareVersions = _fit(_single_line(software_version), _LO_MAX)
    ds.ConversionType = codes.CONVERSION_TYPE_SYNTHETIC
    # General Image
    ds.InstanceNumber = 1
    ds.PatientOrientation = _patient_orientation(volume.ijk_to_lps)
    _set_date_time(ds, "Content", now)
    ds.ImageType = list(codes.IMAGE_TYPE_PREFIX)
    ds.SyntheticData = codes.SYNTHETIC_DATA
    ds.DerivationDescription = _fit(_single_line(derivation_description, keep_newlines=True), _ST_MAX)
    ds.DerivationCodeSequence = [MedgenCode.GENERATIVE_INPAINTING.to_item()]
    ds.BurnedInAnnotation = "YES" if burn_in_label else "NO"
    # Multi-frame and SC Multi-frame Image: frames are slices along k
    ds.NumberOfFrames = stored.shape[0]
    ds.FrameIncrementPointer = pydicom.tag.Tag("SliceLocationVector")
    ds.SliceLocationVector = [round(float(k) * float(volume.spacing[0]), 6) for k in range(stored.shape[0])]
    ds.PixelSpacing = [float(volume.spacing[1]), float(volume.spacing[2])]
    if fmt.samples_per_pixel == 1:
        ds.PresentationLUTShape = "IDENTITY"
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
    # SOP Common: who made it, and everything needed to reproduce it
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [MedgenCode.SYNTHESIZING_EQUIPMENT.to_item()]
    item.Manufacturer = codes.MANUFACTURER
    item.ManufacturerModelName = _fit(_single_line(model_name), _LO_MAX)
    item.SoftwareVersions = ds.SoftwareVersions
    item.ContributionDateTime = _dt_string(now)
    item.ContributionDescription = codes.CONTRIBUTION_DESCRIPTION
    ds.ContributingEquipmentSequence = [item]
    block = ds.private_block(codes.PRIVATE_GROUP, codes.PRIVATE_CREATOR, create=True)
    block.add_new(codes.PRIVATE_PROVENANCE_OFFSET, "UT", provenance_json)
    _declare_private_coding_scheme(ds)
    _set_pixels(ds, stored, fmt)
    ds.file_meta = _file_meta(sop_class, sop_uid)

    # 4. Write atomically
    with _staged_series_dir(out_dir, provenance_to_json(record)) as tmp_dir:
        name = _save(ds, tmp_dir / "IM-0001.dcm")
    return [out_dir / name]


def _secondary_capture_values(pixels: np.ndarray) -> tuple[np.ndarray, PixelFormat, UID, dict | None]:
    """Stored values, their encoding, the SC SOP class and (when values had to be mapped) the mapping.

    Multi-frame grayscale SC allows only unsigned pixels with an identity rescale (PS3.3 C.8.6.4),
    so signed or wide integers are shifted (exactly, when their range spans at most 65536 values)
    and floats are quantised onto 0..65535; the mapping back goes into the provenance.
    """
    if pixels.ndim == 4:
        if pixels.dtype != np.uint8:
            raise InputError(None, f"colour volumes are written as 8-bit RGB; got dtype {pixels.dtype}")
        return pixels, PixelFormat(8, 8, False, "RGB", 3), MultiFrameTrueColorSecondaryCaptureImageStorage, None
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8)
    if pixels.dtype == np.uint8:
        return pixels, PixelFormat(8, 8, False, "MONOCHROME2"), MultiFrameGrayscaleByteSecondaryCaptureImageStorage, None
    word = PixelFormat(16, 16, False, "MONOCHROME2")
    word_sc = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    if np.issubdtype(pixels.dtype, np.integer):
        lo, hi = int(pixels.min()), int(pixels.max())
        if 0 <= lo and hi <= 65535:
            return pixels.astype(np.uint16), word, word_sc, None
        if hi - lo <= 65535:
            stored = (pixels.astype(np.int64) - lo).astype(np.uint16)
            return stored, word, word_sc, _value_mapping(1.0, lo, exact=True, dtype=pixels.dtype)
    values = pixels.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError(None, "the volume holds NaN or infinite values, which DICOM cannot store")
    lo, hi = float(values.min()), float(values.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.rint((values - lo) / slope).astype(np.uint16)
    return stored, word, word_sc, _value_mapping(slope, lo, exact=False, dtype=pixels.dtype)


def _value_mapping(slope: float, intercept: float, *, exact: bool, dtype: np.dtype) -> dict[str, Any]:
    return {"formula": "value = stored * slope + intercept", "slope": float(slope), "intercept": float(intercept),
            "exact": exact, "source_dtype": str(dtype)}


# ---------------------------------------------------------------------- burned-in label

# 5x7 glyphs of the letters in "SYNTHETIC"; drawn by hand so no font file is needed.
_GLYPHS = {
    "S": (".###.", "#...#", "#....", ".###.", "....#", "#...#", ".###."),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "N": ("#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "#...#"),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
}


def _label_mask(text: str) -> np.ndarray:
    columns = []
    for i, char in enumerate(text):
        glyph = np.array([[c == "#" for c in row] for row in _GLYPHS[char]], dtype=bool)
        if i:
            columns.append(np.zeros((7, 1), dtype=bool))
        columns.append(glyph)
    return np.concatenate(columns, axis=1)


def burn_in(image: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """A copy of one slice with "SYNTHETIC" in its top-left corner, bright on a dark box.

    Brightest/darkest are the stored extremes, swapped for MONOCHROME1, so the label shows under
    any window. It is an extra mark only; the DICOM attributes are what programs read.
    """
    out = image.copy()
    rows, cols = out.shape[:2]
    mask = _label_mask(codes.BURNED_IN_LABEL)
    scale = max(1, min(cols // 170, rows // 120))
    mask = np.kron(mask, np.ones((scale, scale), dtype=bool))
    pad = scale
    box_h, box_w = min(rows, mask.shape[0] + 2 * pad), min(cols, mask.shape[1] + 2 * pad)
    mask = mask[: max(0, box_h - pad), : max(0, box_w - pad)]
    bright, dark = fmt.stored_max, fmt.stored_min
    if fmt.photometric == "MONOCHROME1":
        bright, dark = dark, bright
    out[:box_h, :box_w] = dark
    region = out[pad: pad + mask.shape[0], pad: pad + mask.shape[1]]
    region[mask] = bright
    return out


# ---------------------------------------------------------------------- helpers


def _check_source(source: Volume) -> None:
    if not isinstance(source, Volume):
        raise TypeError(f"source must be a medgen.imaging.Volume, got {type(source).__name__}")
    where = source.source_paths[0] if source.source_paths else None
    if source.source_format != SourceFormat.DICOM or not source.datasets:
        raise InputError(where, "the synthetic series writer needs a DICOM source with its datasets; "
                                "use write_secondary_capture for NIfTI/NRRD/PNG input")
    fmt = source.pixel_format
    if fmt is None:
        raise InputError(where, "the DICOM volume has no pixel format")
    if fmt.bits_allocated not in (8, 16, 32):
        raise InputError(where, f"BitsAllocated {fmt.bits_allocated} is not supported (8, 16 or 32)")
    if fmt.samples_per_pixel == 3 and fmt.photometric not in _COLOR_PHOTOMETRICS:
        raise InputError(where, f"colour pixels must be decoded to RGB (or YBR_FULL), got {fmt.photometric}")
    if source.is_multiframe:
        if len(source.datasets) != 1 or len(source.frame_numbers) != source.num_slices:
            raise InputError(where, "a multi-frame volume needs one dataset and one frame number per slice")
        n_frames = int(source.datasets[0].get("NumberOfFrames", 1))
        frames = source.frame_numbers
        if len(set(frames)) != len(frames) or min(frames) < 1 or max(frames) > n_frames:
            raise InputError(where, f"frame numbers must be distinct and in [1, {n_frames}], got {frames}")
    elif len(source.datasets) != source.num_slices:
        raise InputError(where, f"{len(source.datasets)} datasets for {source.num_slices} slices")
    for ds in source.datasets:
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"):
            if not ds.get(keyword):
                raise InputError(where, f"source instance lacks {keyword}", reason="missing-uid")


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputError(out_dir, "already exists and is not an empty folder; choose a new output folder")


@contextmanager
def _staged_series_dir(out_dir: Path, provenance_json: str) -> Iterator[Path]:
    """A temporary folder beside out_dir that becomes out_dir (with provenance.json) only if all went well."""
    tmp_dir = _make_temp_dir(out_dir)
    try:
        yield tmp_dir
        (tmp_dir / PROVENANCE_FILENAME).write_text(provenance_json + "\n", encoding="utf-8")
        _move_into_place(tmp_dir, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise OutputError(out_dir, f"cannot write the series: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _make_temp_dir(out_dir: Path) -> Path:
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    except OSError as exc:
        raise OutputError(out_dir, f"cannot create the output folder: {exc.strerror or exc}") from exc


def _move_into_place(tmp_dir: Path, out_dir: Path) -> None:
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked before writing); a file that appeared since raises OSError
    os.replace(tmp_dir, out_dir)


def _save(ds: Dataset, path: Path) -> str:
    ds.save_as(path, enforce_file_format=True)
    return path.name


def _copy_without(src: Dataset, keywords: Iterable[str]) -> Dataset:
    """A deep copy of the source's elements, minus the dropped ones (pixel data never copied)."""
    dropped = {pydicom.datadict.tag_for_keyword(k) for k in keywords}
    implicit = getattr(src, "original_encoding", (False, True))[0]
    ds = Dataset()
    for tag in src.keys():
        if tag in dropped:
            continue
        if implicit and tag.is_private and tag.element > 0x00FF:
            ds[tag] = copy.deepcopy(src.get_item(tag))  # left raw: private_elements_as_unknown decides its VR
            continue
        ds.add(copy.deepcopy(src[tag]))
    return ds


def _drop_group_lengths(ds: Dataset) -> None:
    """Group lengths (gggg,0000) are retired and would be wrong after our changes."""
    for tag in [element.tag for element in ds if element.tag.element == 0]:
        del ds[tag]


def _use_utf8_if_needed(ds: Dataset, texts: Iterable[str]) -> None:
    """Our added text may be non-ASCII (a prompt); then re-encode the whole instance as UTF-8."""
    if all(t.isascii() for t in texts):
        return
    ds.decode()  # every text value becomes str, so it is re-encoded in the new character set
    ds.SpecificCharacterSet = "ISO_IR 192"


def _set_pixels(ds: Dataset, pixels: np.ndarray, fmt: PixelFormat) -> None:
    # one frame is (rows, columns[, samples]); a source may carry NumberOfFrames = 1 on a single frame
    single_frame_ndim = 2 if fmt.samples_per_pixel == 1 else 3
    frames = pixels[None] if pixels.ndim == single_frame_ndim else pixels
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.SamplesPerPixel = fmt.samples_per_pixel
    ds.PhotometricInterpretation = fmt.photometric
    if fmt.samples_per_pixel > 1:
        ds.PlanarConfiguration = 0  # colour-by-pixel, which is numpy's (R, C, 3) layout
    ds.BitsAllocated = fmt.bits_allocated
    ds.BitsStored = fmt.bits_stored
    ds.HighBit = fmt.bits_stored - 1
    ds.PixelRepresentation = 1 if fmt.signed else 0
    dtype = np.dtype(f"<{'i' if fmt.signed else 'u'}{fmt.bits_allocated // 8}")
    data = np.ascontiguousarray(frames).astype(dtype, copy=False).tobytes()
    if len(data) % 2:
        data += b"\x00"  # values have even length (PS3.5 7.1.1)
    ds.add_new(0x7FE00010, "OB" if fmt.bits_allocated <= 8 else "OW", data)


def _declare_private_coding_scheme(ds: Dataset) -> None:
    """Add our coding scheme to Coding Scheme Identification Sequence (kept items stay)."""
    items = list(ds.get("CodingSchemeIdentificationSequence", []))
    if not any(i.get("CodingSchemeDesignator") == codes.PRIVATE_CODING_SCHEME for i in items):
        items.append(codes.coding_scheme_identification_item())
    ds.CodingSchemeIdentificationSequence = items


def _source_reference(src: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = src.SOPClassUID
    item.ReferencedSOPInstanceUID = src.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [MedgenCode.SOURCE_IMAGE_FOR_PROCESSING.to_item()]
    return item


def _reference_in_common_instance_module(ds: Dataset, src: Dataset) -> None:
    """Instances referenced from functional groups are also listed in Referenced Series Sequence."""
    series = list(ds.get("ReferencedSeriesSequence", []))
    entry = next((s for s in series if s.get("SeriesInstanceUID") == src.SeriesInstanceUID), None)
    if entry is None:
        entry = Dataset()
        entry.SeriesInstanceUID = src.SeriesInstanceUID
        entry.ReferencedInstanceSequence = []
        series.append(entry)
    instances = entry.setdefault("ReferencedInstanceSequence", []).value
    if not any(i.get("ReferencedSOPInstanceUID") == src.SOPInstanceUID for i in instances):
        ref = Dataset()
        ref.ReferencedSOPClassUID = src.SOPClassUID
        ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
        instances.append(ref)
    ds.ReferencedSeriesSequence = series


def _subset_frame_vectors(ds: Dataset, src: Dataset, frames: list[int]) -> None:
    """Keep the per-frame vectors named by Frame Increment Pointer in step with the frames kept."""
    n_source = int(src.get("NumberOfFrames", 1))
    for tag in _as_list(src.get("FrameIncrementPointer")):
        if tag in src and src[tag].VM == n_source and n_source > 1:
            values = list(src[tag].value)
            ds[tag].value = [values[f - 1] for f in frames]


def _repair(ds: Dataset, *, enhanced: bool) -> None:
    """Fix the source's defects that are safe to fix: missing Type 2 attributes, empty Type 3 sequences."""
    for keyword in _TYPE2_EVERY_IMAGE:
        if keyword not in ds:
            setattr(ds, keyword, "")
    for keyword in _EMPTY_TYPE3_SEQUENCES:
        if keyword in ds and len(ds[keyword].value) == 0:
            del ds[keyword]
    if not enhanced:
        # General Equipment: Manufacturer is Type 2 (Type 1 in Enhanced General Equipment: not ours to invent)
        if "Manufacturer" not in ds:
            ds.Manufacturer = ""
        # General Image Patient Orientation (2C, needed when there is no Image Plane module)
        if "PatientOrientation" not in ds and "ImageOrientationPatient" not in ds:
            ds.PatientOrientation = ""


def _image_type(src: Dataset) -> list[str]:
    """DERIVED\\SECONDARY followed by the source's own values 3..n (DERIVED\\PRIMARY for enhanced IODs)."""
    values = [str(v) for v in _as_list(src.get("ImageType"))]
    if src.SOPClassUID in _ENHANCED_SOP_CLASSES:
        return ["DERIVED", "PRIMARY", *values[2:]]
    return [*codes.IMAGE_TYPE_PREFIX, *values[2:]]


def _file_meta(sop_class: UID, sop_uid: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = codes.IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = codes.IMPLEMENTATION_VERSION_NAME
    return meta


def _now_like(src: Dataset) -> dt.datetime:
    """Now, in the source's Timezone Offset From UTC when it declares one (dates must agree)."""
    now = creation_time()
    offset = str(src.get("TimezoneOffsetFromUTC", "") or "")
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        minutes = int(offset[1:3]) * 60 + int(offset[3:])
        return now.astimezone(dt.timezone(dt.timedelta(minutes=minutes if offset[0] == "+" else -minutes)))
    return now.astimezone()


def _set_date_time(ds: Dataset, prefix: str, when: dt.datetime) -> None:
    setattr(ds, f"{prefix}Date", when.strftime("%Y%m%d"))
    setattr(ds, f"{prefix}Time", when.strftime("%H%M%S.%f"))


def _dt_string(when: dt.datetime) -> str:
    return when.strftime("%Y%m%d%H%M%S.%f%z")


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _single_line(text: str, *, keep_newlines: bool = False) -> str:
    """Text safe for LO/ST: no backslash (the multi-value separator in LO) and no control chars."""
    text = text.replace("\\", "/")
    allowed = "\r\n\t" if keep_newlines else ""
    return "".join(c if (c.isprintable() or c in allowed) else " " for c in text).strip()


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _series_description(description: str) -> str:
    """'SYNTHETIC <description>' cut to LO's 64 characters, the prefix always kept."""
    text = _single_line(description)
    if not text.upper().startswith(codes.SERIES_DESCRIPTION_PREFIX):
        text = f"{codes.SERIES_DESCRIPTION_PREFIX} {text}"
    return text if len(text) <= _LO_MAX else text[:_LO_MAX].rstrip()


def default_series_number(source: Volume, variant_index: int = 0) -> int:
    """Source series number + 1000 (+ the variant's index), the usual convention for a derived series."""
    try:
        number = int(source.datasets[0].get("SeriesNumber") or 0) if source.datasets else 0
    except (TypeError, ValueError):
        number = 0
    return min(number + 1000 + variant_index, 2**31 - 1)


def _patient_orientation(ijk_to_lps: np.ndarray) -> list[str]:
    """Patient Orientation letters of the row (+i) and column (+j) directions, e.g. ["L", "P"]."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    result = []
    for axis in (0, 1):
        vector = np.asarray(ijk_to_lps, dtype=float)[:3, axis]
        norm = np.linalg.norm(vector)
        if norm == 0:
            return ["", ""]
        vector = vector / norm
        parts = [letters[i][0 if vector[i] > 0 else 1] for i in np.argsort(-np.abs(vector)) if abs(vector[i]) > 1e-3]
        result.append("".join(parts[:3]))
    return result
