"""`medgen demo`: the whole path once, on a real CT slice shipped with pydicom and a tiny random model.

Until the phantom demo model exists the generator is a tiny random-weight model, so the inpainted
region is noise; the point is that reading, windowing, cropping, generation, paste-back and the
synthetic DICOM writing all run end to end with nothing downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from medgen.api import Inpainter, InpaintRequest, InpaintResult, ProgressCallback

DEMO_PROMPT = "hypodense liver lesion, 2 cm"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medgen"


def demo_model_path() -> Path:
    """The tiny random model, built once into the user's cache (a few MB, a few seconds)."""
    from medgen.generate.tiny import create_tiny_model

    path = _cache_dir() / "models" / "tiny-inpaint-v1"
    if not (path / "model_index.json").exists():
        create_tiny_model(path, kind="inpaint", seed=0)
    return path


def demo_inputs(work_dir: Path) -> tuple[Path, Path]:
    """pydicom's CT_small.dcm (a real 128x128 CT slice) and a round 12-pixel mask inside the body."""
    from pydicom.data import get_testdata_file

    source = Path(get_testdata_file("CT_small.dcm"))
    work_dir.mkdir(parents=True, exist_ok=True)
    rows, cols = np.mgrid[:128, :128]
    disk = ((rows - 70) ** 2 + (cols - 60) ** 2) <= 12**2
    mask_path = work_dir / "demo-mask.png"
    Image.fromarray((disk * 255).astype(np.uint8)).save(mask_path)
    return source, mask_path


def _first_free(out: Path) -> Path:
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return out
    number = 2
    while Path(f"{out}-{number}").exists():
        number += 1
    return Path(f"{out}-{number}")


def run_demo(out: Path, *, device: str = "auto", progress: ProgressCallback | None = None) -> InpaintResult:
    out = _first_free(Path(out))
    source, mask = demo_inputs(_cache_dir() / "demo-inputs")
    print("medgen demo: the built-in model is a tiny random-weight model, so the inpainted region is noise.")
    request = InpaintRequest(
        input=source,
        mask=mask,
        prompt=DEMO_PROMPT,
        out=out,
        num_variants=2,
        seed=1234,
        num_inference_steps=10,
        guidance_scale=7.5,
    )
    return Inpainter(demo_model_path(), device=device)(request, progress)
