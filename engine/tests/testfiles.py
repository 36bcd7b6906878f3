"""Test inputs shared by the engine's tests: pydicom's real files and labelmaps on a volume's grid."""

from pathlib import Path

import numpy as np
import pytest


def dicom_testfile(name: str) -> Path:
    """A file from pydicom's test files or the pydicom-data package (installed, no download)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"pydicom test file {name} is not installed (pip install pydicom-data)")
    return Path(path)


def write_labelmap_like(volume, mask: np.ndarray, path: Path) -> Path:
    """A NIfTI/NRRD labelmap on exactly the volume's grid, made from its IJK-to-LPS matrix."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    matrix = np.asarray(volume.ijk_to_lps, dtype=float)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in matrix[:3, 3]])
    image.SetDirection([float(v) for v in (matrix[:3, :3] / spacing).flatten()])
    sitk.WriteImage(image, str(path))
    return path
