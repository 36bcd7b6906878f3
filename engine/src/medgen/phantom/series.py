"""Write a phantom case as real files: a DICOM CT series (and its healthy twin), the lesion as a
Slicer .seg.nrrd and as a DICOM SEG, and the ground truth as JSON.

UIDs are derived from the case seed, so the same seed writes the same files; every instance says
PHANTOM in the patient name and carries Synthetic Data = YES, because a phantom is not a person.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import slicerio
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

import medgen
from medgen.imaging.write import drop_nrrd_timestamp
from medgen.phantom.cases import PhantomCase
from medgen.phantom.lesions import LESION_SPECS
from medgen.reproducible import stamp_creation_time

RESCALE_INTERCEPT = -1024.0
BITS_STORED = 12
PHANTOM_DATE = "20000101"  # fixed, so a seed writes identical files; a phantom has no real scan date
PHANTOM_TIME = dt.datetime(2000, 1, 1, 12, 0, tzinfo=dt.timezone.utc)  # the same moment, for the SEG
MANUFACTURER = "MedGenSlicer"
MODEL_NAME = "medgen phantom"
SOFT_TISSUE_WINDOW = (40.0, 400.0)
PHANTOM_ALGORITHM_FAMILY = hd.sr.CodedConcept(
    value="PHANTOM-GT", scheme_designator="99MEDGEN", meaning="Procedural phantom ground truth"
)
"""A private code: no DICOM algorithm family fits a mask that was drawn before the image was."""
SEGMENT_COLORS = {
    "cyst": (0.35, 0.6, 1.0),
    "hyperdense": (1.0, 0.4, 0.2),
    "calcification": (1.0, 1.0, 0.4),
    "fat": (0.9, 0.8, 0.3),
    "spiculated": (0.9, 0.2, 0.7),
}


@dataclass
class CaseFiles:
    """Where one case was written."""

    folder: Path
    ct_dir: Path  # the scan with the lesion
    healthy_dir: Path  # the same scan without it: the inpainting source of the bench and the demo
    seg_nrrd: Path
    dicom_seg: Path
    truth_json: Path


def _uid(case: PhantomCase, *parts) -> str:
    return generate_uid(entropy_srcs=["medgen-phantom", *map(str, case.seed), *map(str, parts)])


def ct_datasets(case: PhantomCase, hu: np.ndarray, *, series_number: int, description: str) -> list[pydicom.Dataset]:
    """One CT Image Storage instance per slice of ``hu`` (integer HU), on the case's grid."""
    study_uid, frame_uid = _uid(case, "study"), _uid(case, "frame")
    series_uid = _uid(case, "series", series_number)
    stored = (hu.astype(np.int32) - int(RESCALE_INTERCEPT)).astype(np.uint16)
    if stored.max() >= 1 << BITS_STORED:
        raise ValueError(f"HU up to {int(hu.max())} does not fit {BITS_STORED} stored bits")
    s = case.grid.spacing_mm
    origin = case.ijk_to_lps[:3, 3]
    datasets = []
    for k in range(hu.shape[0]):
        sop_uid = _uid(case, "instance", series_number, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SyntheticData = "YES"
        # Patient and study: a phantom, named so nobody takes it for a person
        number = case.case_id.split("-")[-1]
        ds.PatientName = f"PHANTOM^CASE{number}"
        ds.PatientID = f"PHANTOM-{'-'.join(map(str, case.seed))}"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.PatientComments = "Procedural CT phantom made by medgen; not a person"
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = PHANTOM_DATE
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID = number
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "PHANTOM abdomen CT (procedural)"
        # Series, equipment, frame of reference
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.BodyPartExamined = "ABDOMEN"
        ds.PatientPosition = "HFS"
        ds.Manufacturer = MANUFACTURER
        ds.ManufacturerModelName = MODEL_NAME
        ds.SoftwareVersions = medgen.__version__
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        # Image
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = [round(float(v), 4) for v in (origin[0], origin[1], case.z_mm[k])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [s, s]
        ds.SliceThickness = case.slice_thickness_mm
        ds.SliceLocation = round(float(case.z_mm[k]), 4)
        ds.KVP = 120
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.BitsAllocated = 16
        ds.BitsStored = BITS_STORED
        ds.HighBit = BITS_STORED - 1
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = RESCALE_INTERCEPT
        ds.RescaleSlope = 1.0
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = SOFT_TISSUE_WINDOW
        ds.BurnedInAnnotation = "NO"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        datasets.append(ds)
    return datasets


def write_datasets(datasets: list[pydicom.Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_seg_nrrd(case: PhantomCase, path: Path) -> Path:
    """The lesion as a Slicer segmentation on the CT grid (one binary segment, label 1)."""
    spec = LESION_SPECS[case.lesion_type]
    segmentation = {
        # slicerio keeps NRRD's (i, j, k) = (column, row, slice) axis order
        "voxels": np.ascontiguousarray(case.lesion_mask.transpose(2, 1, 0)).astype(np.uint8),
        "ijkToLPS": case.ijk_to_lps,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": [
            {
                "id": "Segment_1",
                "labelValue": 1,
                "layer": 0,
                "name": spec.label,
                "color": list(SEGMENT_COLORS[case.lesion_type.value]),
            }
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    slicerio.write_segmentation(str(path), segmentation)
    drop_nrrd_timestamp(path)
    return path


def write_dicom_seg(case: PhantomCase, source: list[pydicom.Dataset], path: Path) -> Path:
    """The lesion as a binary DICOM SEG referencing the CT series it was drawn on."""
    spec = LESION_SPECS[case.lesion_type]
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=spec.label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="medgen phantom", family=PHANTOM_ALGORITHM_FAMILY, version=medgen.__version__
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=source,
        pixel_array=case.lesion_mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=_uid(case, "seg-series"),
        series_number=100,
        sop_instance_uid=_uid(case, "seg-instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=medgen.__version__,
        device_serial_number="0",
        series_description=f"PHANTOM ground truth: {spec.label}",
    )
    stamp_creation_time(seg, PHANTOM_TIME)  # a phantom's files depend on its seed alone, not on the clock
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def ground_truth(case: PhantomCase) -> dict:
    """What the case holds, for people and for the benchmark."""
    lesion = case.lesion
    return {
        "case_id": case.case_id,
        "seed": list(case.seed),
        "lesion_type": case.lesion_type.value,
        "label": lesion.spec.label,
        "prompt": lesion.spec.prompt,
        "organ": case.organ.name.lower(),
        "lesion_hu": lesion.hu,
        "nominal_hu": lesion.spec.hu,
        "radius_mm": lesion.radius_mm,
        "center_lps_mm": list(lesion.center_mm),
        "slices": case.lesion_slices,
        "voxels": int(case.lesion_mask.sum()),
        "spacing_mm": list(case.spacing),
        "noise_hu": case.body.noise_hu,
    }


def write_case(case: PhantomCase, folder: Path) -> CaseFiles:
    """Write the lesion series, its healthy twin, the lesion masks and the ground truth into ``folder``."""
    folder = Path(folder)
    label = LESION_SPECS[case.lesion_type].label
    sick = ct_datasets(case, case.hu, series_number=1, description=f"PHANTOM CT with {label}")
    healthy = ct_datasets(case, case.healthy_hu, series_number=2, description="PHANTOM CT healthy twin")
    files = CaseFiles(
        folder=folder,
        ct_dir=folder / "ct",
        healthy_dir=folder / "healthy",
        seg_nrrd=folder / "lesion.seg.nrrd",
        dicom_seg=folder / "lesion-seg.dcm",
        truth_json=folder / "truth.json",
    )
    write_datasets(sick, files.ct_dir)
    write_datasets(healthy, files.healthy_dir)
    write_seg_nrrd(case, files.seg_nrrd)
    write_dicom_seg(case, sick, files.dicom_seg)
    files.truth_json.write_text(json.dumps(ground_truth(case), indent=2) + "\n", encoding="utf-8")
    return files
