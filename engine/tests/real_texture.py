"""Real scans through the whole engine with the shipped demo model: noise and seam figures on a CT, an
MR and a CR from pydicom/pydicom-data, the invesalius-examples head CT (as a NIfTI without modality,
a 3D mask over five slices) and the mricron-data T1 MR (ch2, NIfTI).

Run it as a script to print the figures (default settings; the MR and CR take the demo model's MR and
CR contracts and adapters; the ch2 NIfTI states no modality, so its case states MR as `--modality MR`):

    .venv/bin/python engine/tests/real_texture.py [--steps N] [--no-noise-match] [NAME_FILTER]
"""

from __future__ import annotations

import plistlib
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

INVESALIUS_PROJECT = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
MRICRON_T1 = Path("/usr/share/mricron/templates/ch2.nii.gz")


@dataclass
class RealCase:
    """A source file, a disk mask (centre row/col, radius in pixels, on ``slices``) and the modality to
    state for a file that states none (``--modality``)."""

    name: str
    kind: str  # CT, MR or CR: the band the figures are checked against
    centre: tuple[int, int]
    radius_px: float
    modality: str | None = None
    slices: tuple[int, ...] | None = None  # None: the middle slice


def pydicom_file(name: str) -> Path | None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    return Path(path) if path else None


def pydicom_data_file(name: str) -> Path | None:
    try:
        import data_store
    except ImportError:
        return None
    path = Path(data_store.__file__).parent / "data" / name
    return path if path.is_file() else None


def invesalius_nifti(folder: Path) -> Path | None:
    """The invesalius-examples head CT as an int16 HU NIfTI with no modality (as converters write it)."""
    if not INVESALIUS_PROJECT.is_file():
        return None
    import SimpleITK as sitk

    out = Path(folder) / "cranium.nii.gz"
    if out.is_file():
        return out
    with tarfile.open(INVESALIUS_PROJECT, "r:gz") as archive:
        members = {Path(m.name).name: m for m in archive.getmembers()}
        header = plistlib.loads(archive.extractfile(members["main.plist"]).read())
        raw = archive.extractfile(members[header["matrix"]["filename"]]).read()
    shape = tuple(header["matrix"]["shape"])
    # InVesalius keeps one extra row and column of padding in front of the volume: (S+1, R+1, C+1)
    voxels = np.frombuffer(raw, dtype=header["matrix"]["dtype"])
    count = int(np.prod(shape))
    if voxels.size != count:
        voxels = voxels[-count:]
    pixels = voxels.reshape(shape)
    image = sitk.GetImageFromArray(np.ascontiguousarray(pixels))
    image.SetSpacing([float(s) for s in header["spacing"]])
    sitk.WriteImage(image, str(out))
    return out


def source_for(case: RealCase, folder: Path) -> Path | None:
    if case.name == "CT_small.dcm" or case.name == "MR_small.dcm":
        return pydicom_file(case.name)
    if case.name.endswith("_UNCR.dcm"):
        return pydicom_data_file(case.name)
    if case.name == "invesalius-cranium":
        return invesalius_nifti(folder)
    if case.name == "mricron-ch2":
        return MRICRON_T1 if MRICRON_T1.is_file() else None
    raise ValueError(case.name)


CASES = (
    RealCase("CT_small.dcm", "CT", centre=(96, 40), radius_px=7),
    RealCase("MR_small.dcm", "MR", centre=(44, 20), radius_px=5),
    RealCase("RG1_UNCR.dcm", "CR", centre=(900, 560), radius_px=40),
    RealCase("invesalius-cranium", "CT", centre=(128, 100), radius_px=8, slices=(52, 53, 54, 55, 56)),
    RealCase("mricron-ch2", "MR", centre=(100, 60), radius_px=10, modality="MR", slices=(90,)),
)


def write_disk_mask(volume, case: RealCase, path: Path) -> list[int]:
    """A disk on each of the case's slices (a sphere-like stack for several), on the volume's grid."""
    from testfiles import write_labelmap_like

    mask = np.zeros(volume.pixels.shape[:3], np.uint8)
    slices = list(case.slices) if case.slices else [volume.num_slices // 2]
    rows, cols = np.mgrid[: volume.shape2d[0], : volume.shape2d[1]]
    middle = (len(slices) - 1) / 2
    for n, k in enumerate(slices):
        shrink = np.sqrt(max(1.0 - ((n - middle) / (middle + 1)) ** 2, 0.0)) if len(slices) > 1 else 1.0
        r = case.radius_px * shrink
        mask[k][(rows - case.centre[0]) ** 2 + (cols - case.centre[1]) ** 2 <= r**2] = 1
    write_labelmap_like(volume, mask, path)
    return slices


def run_real_case(inpainter, case: RealCase, work: Path, **options):
    """The engine's result for one case (None when its data package is absent)."""
    from medgen.api import InpaintRequest
    from medgen.imaging.read import read_volume

    work.mkdir(parents=True, exist_ok=True)
    source = source_for(case, work)
    if source is None:
        return None
    volume = read_volume(source)
    mask_path = work / "mask.nii.gz"
    slices = write_disk_mask(volume, case, mask_path)
    request = InpaintRequest(
        input=source, mask=mask_path, prompt="hypodense lesion", out=work / "out", slices=slices,
        seed=0, source_modality=case.modality, **options,
    )
    return inpainter(request)


def main(argv: list[str]) -> int:
    import argparse
    import logging
    import tempfile

    from medgen.api import Inpainter
    from medgen.phantom.model import demo_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filter", nargs="?", default="", help="only cases whose name contains this text")
    parser.add_argument("--steps", type=int, help="diffusion steps (default: the model's medgen.json)")
    parser.add_argument("--no-noise-match", action="store_false", dest="match_noise")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    inpainter = Inpainter(demo_model_path(), device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if args.filter not in case.name:
                continue
            result = run_real_case(inpainter, case, Path(tmp) / case.name, num_inference_steps=args.steps,
                                   match_noise=args.match_noise)
            if result is None:
                print(f"{case.name:20s} skipped: data package not installed")
                continue
            figures = result.texture[0]
            print(f"{case.name:20s} {case.kind}  noise std ratio {figures['noise_std_ratio']:.3f}  "
                  f"seam strength ratio {figures['seam_strength_ratio']:.3f}  | {result.notes[0]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
