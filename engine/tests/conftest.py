"""Shared fixtures: a tiny random-weight model built once per session, and real DICOM test files."""

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight 9-channel SD inpainting model (its output is noise; for plumbing)."""
    from medgen.generate.tiny import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("models") / "tiny-inpaint", kind="inpaint", seed=0)


@pytest.fixture(scope="session")
def tiny_base_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight 4-channel (base, non-inpainting) SD model."""
    from medgen.generate.tiny import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("models") / "tiny-base", kind="base", seed=0)


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
