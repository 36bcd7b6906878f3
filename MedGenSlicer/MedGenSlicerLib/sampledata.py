"""The phantom CT that MedGenSlicer offers in Slicer's Sample Data module, drawn here with numpy: no download.

``phantom_ct`` draws an abdomen in Hounsfield units (body wall, fat, liver, spleen, kidneys, aorta, spine
and scanner noise) and a labelmap with the liver and a lesion target inside it. The CT is healthy: the
"lesion" segment marks where to paint one with the panel ("hypodense liver lesion, 2 cm"), as the engine's
demo inpaints into a healthy twin. ``register_phantom_sample_data`` adds the sample to Sample Data; its
button writes the two files into Slicer's download cache the first time and loads them from there, so
the sample behaves like any other and works offline.

Only the ``register_...`` and ``load_...`` functions need Slicer, and they import it when called.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .nrrd import nrrd_bytes

SAMPLE_CATEGORY = "MedGenSlicer"
SAMPLE_NAME = "MedGenSlicer phantom CT"
CT_FILE_NAME = "MedGenSlicerPhantomCT.nrrd"
SEGMENTATION_FILE_NAME = "MedGenSlicerPhantomCT.seg.nrrd"
CT_NODE_NAME = SAMPLE_NAME
SEGMENTATION_NODE_NAME = SAMPLE_NAME + " segmentation"
LOAD_FILE_TYPES = ["VolumeFile", "SegmentationFile"]  # Slicer's IO file types for the two files

PHANTOM_SHAPE = (64, 256, 256)  # slices, rows, columns: Slicer's arrayFromVolume order (k, j, i)
PHANTOM_SPACING_MM = (1.4, 1.4, 2.5)  # column, row, slice
HU_MIN, HU_MAX = -1024, 3071  # the range a 12-bit CT stores
NOISE_HU = 10.0

HU = {
    # typical unenhanced values, as the engine's phantoms use (engine/PHANTOM.md)
    "air": -1000.0,
    "subcutaneous fat": -100.0,
    "muscle": 50.0,
    "visceral fat": -90.0,
    "liver": 60.0,
    "spleen": 50.0,
    "kidney": 35.0,
    "aorta": 45.0,
    "marrow": 250.0,
    "cortical bone": 700.0,
    "csf": 10.0,
}

LESION_RADIUS_MM = 10.0  # a 2 cm target
LESION_CENTER_MM = (-70.0, -10.0, 25.0)  # body frame, inside the liver


@dataclass(frozen=True)
class PhantomSegment:
    name: str
    label: int
    color: Tuple[float, float, float]


SEGMENTS = (
    PhantomSegment("liver", 1, (0.86, 0.51, 0.42)),
    PhantomSegment("lesion", 2, (0.95, 0.84, 0.34)),
)


@dataclass
class PhantomCT:
    """``hu``: int16 (k, j, i) in Hounsfield units; ``labels``: uint8 on the same grid (0 outside every
    segment, else a ``SEGMENTS`` label); ``ijk_to_ras``: the grid's 4x4 IJK-to-RAS matrix."""

    hu: np.ndarray
    labels: np.ndarray
    ijk_to_ras: np.ndarray


def phantom_ct(
    shape: Sequence[int] = PHANTOM_SHAPE,
    spacing_mm: Sequence[float] = PHANTOM_SPACING_MM,
    seed: int = 0,
) -> PhantomCT:
    """An axial abdominal CT of ``shape`` (slices, rows, columns), centred on the body.

    Body frame in millimetres: x to the patient's left, y to the back, z up. Column 0 is the patient's
    right and row 0 the front (radiological convention), so IJK-to-RAS is diag(-sx, -sy, sz).
    """
    # 1. Check inputs
    nk, nj, ni = (int(n) for n in shape)
    sx, sy, sz = (float(s) for s in spacing_mm)
    if min(nk, nj, ni) < 1:
        raise ValueError(f"shape must be three positive sizes, got {tuple(shape)}")
    if min(sx, sy, sz) <= 0:
        raise ValueError(f"spacing_mm must be three positive spacings, got {tuple(spacing_mm)}")

    # 2. The grid: voxel centres in the body frame, broadcastable to (k, j, i)
    x = ((np.arange(ni) - (ni - 1) / 2) * sx).astype(np.float32)[np.newaxis, np.newaxis, :]
    y = ((np.arange(nj) - (nj - 1) / 2) * sy).astype(np.float32)[np.newaxis, :, np.newaxis]
    z = ((np.arange(nk) - (nk - 1) / 2) * sz).astype(np.float32)[:, np.newaxis, np.newaxis]
    ijk_to_ras = np.array([
        [-sx, 0.0, 0.0, (ni - 1) / 2 * sx],
        [0.0, -sy, 0.0, (nj - 1) / 2 * sy],
        [0.0, 0.0, sz, -(nk - 1) / 2 * sz],
        [0.0, 0.0, 0.0, 1.0],
    ])
    hu = np.full((nk, nj, ni), HU["air"], np.float32)

    def paint(region: np.ndarray, tissue: str) -> None:
        hu[np.broadcast_to(region, hu.shape)] = HU[tissue]

    # 3. Body wall: skin-deep fat, a muscle layer, visceral fat inside
    body = _ellipse(x, y, (0.0, 0.0), (155.0, 115.0))
    paint(body, "subcutaneous fat")
    paint(_ellipse(x, y, (0.0, 0.0), (141.0, 101.0)), "muscle")
    interior = _ellipse(x, y, (0.0, 0.0), (131.0, 91.0))
    paint(interior, "visceral fat")

    # 4. Organs, back to front so the liver lies over the right kidney
    for side in (-1.0, 1.0):
        paint(interior & _ellipsoid(x, y, z, (60.0 * side, 55.0, -15.0), (25.0, 28.0, 45.0)), "kidney")
    paint(interior & _ellipsoid(x, y, z, (80.0, 40.0, 35.0), (28.0, 40.0, 45.0)), "spleen")
    liver = interior & _ellipsoid(x, y, z, (-65.0, -5.0, 25.0), (70.0, 60.0, 85.0))
    paint(liver, "liver")
    paint(_ellipse(x, y, (12.0, 45.0), (11.0, 11.0)), "aorta")

    # 5. Spine: vertebral body (cortex around marrow), canal, posterior arch
    paint(_ellipse(x, y, (0.0, 72.0), (17.0, 17.0)), "cortical bone")
    paint(_ellipse(x, y, (0.0, 72.0), (14.0, 14.0)), "marrow")
    paint(_ellipse(x, y, (0.0, 97.0), (12.0, 12.0)), "cortical bone")
    paint(_ellipse(x, y, (0.0, 97.0), (7.0, 7.0)), "csf")

    # 6. Labels: what is still liver after the vessels and bone, and the lesion target inside it
    liver = np.broadcast_to(liver, hu.shape) & (hu == HU["liver"])
    lesion = liver & _ellipsoid(x, y, z, LESION_CENTER_MM, (LESION_RADIUS_MM,) * 3)
    labels = np.zeros(hu.shape, np.uint8)
    labels[liver] = SEGMENTS[0].label
    labels[lesion] = SEGMENTS[1].label

    # 7. Scanner noise, then the stored range
    rng = np.random.default_rng(seed)
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(NOISE_HU)
    stored = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    return PhantomCT(hu=stored, labels=labels, ijk_to_ras=ijk_to_ras)


def _ellipse(x: np.ndarray, y: np.ndarray, center: Tuple[float, float], semi_axes: Tuple[float, float]) -> np.ndarray:
    """An elliptic cylinder along z, as a (1, j, i) mask."""
    return ((x - center[0]) / semi_axes[0]) ** 2 + ((y - center[1]) / semi_axes[1]) ** 2 <= 1.0


def _ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, center: Sequence[float], semi_axes: Sequence[float]) -> np.ndarray:
    return (((x - center[0]) / semi_axes[0]) ** 2 + ((y - center[1]) / semi_axes[1]) ** 2
            + ((z - center[2]) / semi_axes[2]) ** 2) <= 1.0


def segmentation_nrrd_bytes(labels: np.ndarray, ijk_to_ras: np.ndarray,
                            segments: Sequence[PhantomSegment] = SEGMENTS) -> bytes:
    """A one-layer ``.seg.nrrd`` as Slicer writes one: the labelmap plus, per segment, its ID, name,
    colour, label value and extent (the keys vtkMRMLSegmentationStorageNode reads)."""
    labels = np.asarray(labels)
    key_values: Dict[str, str] = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for index, segment in enumerate(segments):
        prefix = f"Segment{index}_"
        key_values.update({
            prefix + "ID": segment.name,
            prefix + "Name": segment.name,
            prefix + "NameAutoGenerated": "0",
            prefix + "Color": " ".join(repr(float(c)) for c in segment.color),
            prefix + "ColorAutoGenerated": "0",
            prefix + "LabelValue": str(segment.label),
            prefix + "Layer": "0",
            prefix + "Extent": _extent(labels == segment.label),
        })
    return nrrd_bytes(labels.astype(np.uint8), ijk_to_ras, key_values=key_values)


def _extent(mask: np.ndarray) -> str:
    """"i0 i1 j0 j1 k0 k1" of the voxels set in a (k, j, i) mask; "0 -1 0 -1 0 -1" when none is."""
    if not mask.any():
        return "0 -1 0 -1 0 -1"
    k, j, i = (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    return f"{i[0]} {i[-1]} {j[0]} {j[-1]} {k[0]} {k[-1]}"


def write_phantom_files(ct_path: Path, segmentation_path: Path, seed: int = 0) -> Tuple[Path, Path]:
    """Draw the phantom and write both files, each through a temporary name so that a reader never
    finds half a file."""
    phantom = phantom_ct(seed=seed)
    for path, data in ((Path(ct_path), nrrd_bytes(phantom.hu, phantom.ijk_to_ras)),
                       (Path(segmentation_path), segmentation_nrrd_bytes(phantom.labels, phantom.ijk_to_ras))):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, path)
    return Path(ct_path), Path(segmentation_path)


def ensure_phantom_files(paths: Sequence[Path]) -> List[Path]:
    """The CT and segmentation files at ``paths``, drawn and written unless both are already there."""
    ct_path, segmentation_path = (Path(p) for p in paths)
    if not all(p.is_file() and p.stat().st_size > 0 for p in (ct_path, segmentation_path)):
        write_phantom_files(ct_path, segmentation_path)
    return [ct_path, segmentation_path]


def file_uri(path: Path) -> str:
    return Path(path).resolve().as_uri()


def uri_path(uri: str) -> Path:
    """The local path of a ``file:`` URI (the inverse of ``file_uri``)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "file":
        raise ValueError(f"the phantom sample's files are local, got {uri!r}")
    return Path(urllib.request.url2pathname(parts.path))


def phantom_source_arguments(cache_dir: Path, thumbnail: Optional[str] = None) -> dict:
    """The keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` for the phantom.

    The URIs are ``file:`` URIs of the files in Slicer's download cache itself: Sample Data finds them there
    and loads them without copying. ``loadFileType`` (a list) is the spelling every Slicer since 5.6 accepts;
    5.8 renamed it ``loadFileTypes`` and kept the old name.
    """
    cache_dir = Path(cache_dir)
    return dict(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        uris=[file_uri(cache_dir / CT_FILE_NAME), file_uri(cache_dir / SEGMENTATION_FILE_NAME)],
        fileNames=[CT_FILE_NAME, SEGMENTATION_FILE_NAME],
        nodeNames=[CT_NODE_NAME, SEGMENTATION_NODE_NAME],
        loadFileType=list(LOAD_FILE_TYPES),
        thumbnailFileName=thumbnail,
        customDownloader=load_phantom_sample,
    )


def register_phantom_sample_data(sample_data_module=None, cache_dir: Optional[Path] = None,
                                 thumbnail: Optional[str] = None) -> bool:
    """Add "MedGenSlicer phantom CT" to Slicer's Sample Data module; False when that module is not loaded.

    Called when Slicer has started (``startupCompleted()``); ``sample_data_module`` and ``cache_dir``
    default to Slicer's ``SampleData`` module and its download cache.
    """
    if sample_data_module is None:
        import slicer

        if getattr(getattr(slicer, "modules", None), "sampledata", None) is None:
            return False  # Sample Data disabled or not loaded (--modules-to-ignore SampleData)
        import SampleData as sample_data_module
    if cache_dir is None:
        import slicer

        cache_dir = Path(slicer.mrmlScene.GetCacheManager().GetRemoteCacheDirectory())
    logic = sample_data_module.SampleDataLogic
    if hasattr(logic, "registerCustomSampleDataCategory"):  # Slicer 5.12 and later
        logic.registerCustomSampleDataCategory(SAMPLE_CATEGORY, title=SAMPLE_CATEGORY)
    logic.registerCustomSampleDataSource(**phantom_source_arguments(cache_dir, thumbnail))
    return True


def load_phantom_sample(source, sample_data_module=None) -> list:
    """The Sample Data button's action (``customDownloader``): write the files where the source's URIs
    point if they are not there yet, then let Sample Data load them. Returns the loaded nodes (the CT
    volume, then the segmentation)."""
    ensure_phantom_files([uri_path(uri) for uri in source.uris])
    if sample_data_module is None:
        import SampleData as sample_data_module
    return sample_data_module.SampleDataLogic().downloadFromSource(source)
