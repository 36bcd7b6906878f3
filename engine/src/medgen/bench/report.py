"""`medgen bench report`: how large the run report of a long run is, and how long it takes to build.

The run is the engine's own: a 512 x 512 x 300 CT-like phantom (the phantom's abdominal anatomy
drawn at 0.7 mm with its scanner blur and 10-15 HU noise, written as NRRD), a mask that touches
every slice (so `--all-slices` inpaints all of them), and `Inpainter.run` with V variants: reading,
cropping, composing with the source's noise texture, writing the series and the provenance are the
engine's code. Only the diffusion model's output is replaced, by a synthetic lesion (a darker,
softly textured region under the mask, another one per seed), so the benchmark costs seconds of
model loading and minutes of writing (8 on two cores for 300 x 4, 4 GB of memory at the peak)
instead of hours of denoising. Then `medgen report` of that run, timed, and the size of the file it
wrote.

`--without-engine` writes the variants directly instead (the same kind of lesion with fresh
scanner noise pasted into the dilated mask, the run folder as `medgen.qa.run` reads it): seconds
instead of minutes, for iterating on the report code; the default test of the report's size uses it.
`--reuse-run` reports again on the run an earlier call left in --work-dir, to compare report code
on one run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medgen.cli_help import new_parser

PIXEL_SPACING_MM = 0.7  # a 358 mm field of view on 512 pixels, the phantom body's own field
SLICE_THICKNESS_MM = 1.0
REPORT_BUDGET_MB = 50.0
"""What the report of a 300-slice, 4-variant run may weigh (MB = 10**6 bytes) and still open at once."""


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("medgen bench report", __doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=300, dest="num_slices", metavar="N",
                   help="slices of the phantom, every one touched by the mask, in slices (default: %(default)s)")
    p.add_argument("--variants", type=int, default=4, dest="num_variants", metavar="N",
                   help="variants of the run, in variants (default: %(default)s)")
    p.add_argument("--matrix", type=int, default=512, metavar="PX",
                   help="rows and columns of each slice, in pixels (default: %(default)s)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here (default: none)")
    p.add_argument("--work-dir", type=Path, metavar="DIR",
                   help="folder for the phantom, the run and the report (default: a temporary one, deleted)")
    p.add_argument("--without-engine", action="store_true",
                   help="write the variants directly instead of through Inpainter.run (no model loaded; seconds "
                        "instead of minutes)")
    p.add_argument("--reuse-run", action="store_true",
                   help="report on the run an earlier call left in --work-dir instead of writing it again "
                        "(to compare report code on the same run)")
    return p


@dataclass
class ReportSize:
    slices: int
    variants: int
    matrix: int
    report_bytes: int
    report_seconds: float
    run_seconds: float

    @property
    def megabytes(self) -> float:
        return self.report_bytes / 1e6

    @property
    def bytes_per_slice_variant(self) -> float:
        """The report's bytes over slices x (variants + 1): the source counts as one more image per slice."""
        return self.report_bytes / (self.slices * (self.variants + 1))


def write_phantom(folder: Path, num_slices: int, matrix: int = 512, seed: int = 11) -> tuple[Path, Path]:
    """source.nrrd (int16 HU, LPS geometry) and mask.nrrd (a tube through the liver that changes
    size and drifts a little from slice to slice, on every slice)."""
    import SimpleITK as sitk

    from medgen.phantom.anatomy import Grid, Tissue, object_slice, random_body, scan

    rng = np.random.default_rng(seed)
    body = random_body(rng)
    grid = Grid(rows=matrix, cols=matrix, spacing_mm=PIXEL_SPACING_MM * 512 / matrix)
    # The anatomy changes over z in [-60, 60] mm; drawn every 10 mm there and reused in between, the
    # scanner noise is new on every slice
    z_anatomy = np.linspace(-60.0, 60.0, num_slices)
    objects: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    hu = np.empty((num_slices, matrix, matrix), np.int16)
    for k, z in enumerate(z_anatomy):
        key = round(float(z) / 10.0) * 10.0
        if key not in objects:
            objects[key] = object_slice(body, key, grid)
        blurred, noise = scan(objects[key][0], body, rng)
        hu[k] = np.clip(np.rint(blurred + noise), -1024, 3071)
    # The mask: radius 8 to 24 mm (a 1.6 to 4.8 cm lesion), centred in the liver of the middle slice;
    # its size runs through that range twice whatever the number of slices, so a short run has the
    # same mix of crop sizes as a long one
    labels = objects[round(float(z_anatomy[num_slices // 2]) / 10.0) * 10.0][1]
    liver = np.argwhere(labels == Tissue.LIVER)
    centre = liver.mean(axis=0) if len(liver) else np.array([matrix / 2, matrix / 2])
    rows, cols = np.mgrid[:matrix, :matrix]
    mask = np.zeros(hu.shape, np.uint8)
    for k in range(num_slices):
        phase = 4 * np.pi * k / num_slices
        radius = (16.0 + 8.0 * np.sin(phase)) / grid.spacing_mm
        r0 = centre[0] + 10.0 / grid.spacing_mm * np.sin(phase / 2)
        c0 = centre[1] + 10.0 / grid.spacing_mm * np.cos(phase / 3)
        mask[k] = ((rows - r0) ** 2 + ((cols - c0) / 1.2) ** 2) <= radius**2
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((grid.spacing_mm, grid.spacing_mm, SLICE_THICKNESS_MM))
    image.SetOrigin((-(matrix - 1) / 2 * grid.spacing_mm, -(matrix - 1) / 2 * grid.spacing_mm, 0.0))
    folder.mkdir(parents=True, exist_ok=True)
    source, mask_path = folder / "source.nrrd", folder / "mask.nrrd"
    sitk.WriteImage(image, str(source))
    mask_image = sitk.GetImageFromArray(mask)
    mask_image.CopyInformation(image)
    sitk.WriteImage(mask_image, str(mask_path), useCompression=True)
    return source, mask_path


def synthetic_generation(work) -> np.ndarray:
    """Stands in for the model: per seed, each crop with a darker lesion under its mask, textured by
    smooth noise, as float32 (slices, variants, H, W) in model space, like `Inpainter.generate`."""
    from scipy import ndimage

    crops, masks = np.asarray(work.crops, np.float32), np.asarray(work.masks, np.float32)
    out = np.empty((len(crops), len(work.seeds)) + crops.shape[1:], np.float32)
    for v, seed in enumerate(work.seeds):
        rng = np.random.default_rng(seed)
        texture = ndimage.gaussian_filter(rng.standard_normal(crops.shape), sigma=(0, 2.0, 2.0))
        lesion = -0.25 - 0.05 * (v % 4) + 0.3 * texture / max(float(texture.std()), 1e-6)
        out[:, v] = np.clip(crops * (1 - masks) + lesion * masks, -1, 1)
    return out


def write_run(folder: Path, num_slices: int, num_variants: int, matrix: int = 512) -> Path:
    """The phantom and a finished `medgen inpaint --all-slices` run on it (the demo model loaded for
    its settings; the synthetic lesion in place of its output). Returns the run folder."""
    from medgen.api import Inpainter, InpaintRequest

    source, mask = write_phantom(folder / "inputs", num_slices, matrix)
    request = InpaintRequest(input=source, mask=mask, prompt="hypodense liver lesion", out=folder / "run",
                             all_slices=True, num_variants=num_variants, seed=7, window="soft_tissue")
    Inpainter(None, device="cpu").run(request, synthetic_generation)
    return folder / "run"


def write_run_without_engine(folder: Path, num_slices: int, num_variants: int, matrix: int = 512) -> Path:
    """The same phantom and a run folder as `medgen.qa.run` reads it, the variants made here: in the
    mask dilated by 2 mm (the engine's default, feathered over 4 px like its paste), the source
    smoothed, darkened by 60 HU or more under the mask with a soft +-30 HU texture, and new scanner
    noise of the phantom's kind; outside it the source's values. Written with the engine's NRRD writer
    and provenance record. On the same phantom its report costs what the engine's run costs (3.5 kB
    per slice and variant for both)."""
    import SimpleITK as sitk
    from scipy import ndimage

    from medgen.dicom.provenance import build_provenance, write_provenance_json
    from medgen.imaging.crop import dilate_mask, feather_weights
    from medgen.imaging.read import read_volume
    from medgen.imaging.write import write_like_source
    from medgen.phantom.model import demo_model_path

    source_path, mask_path = write_phantom(folder / "inputs", num_slices, matrix)
    volume = read_volume(source_path)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))).astype(bool)
    spacing = (volume.spacing[1], volume.spacing[2])
    seeds = [7 + v for v in range(num_variants)]
    out = folder / "run"
    for v, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        pixels = volume.pixels.copy()
        for k in range(num_slices):
            dilated = dilate_mask(mask[k], 2.0, spacing)
            weights = feather_weights(mask[k], dilated, 4.0)
            texture = ndimage.gaussian_filter(rng.standard_normal(mask[k].shape), 3.0)
            lesion = -60.0 - 10.0 * v + 30.0 * texture / max(float(texture.std()), 1e-6)
            noise = ndimage.gaussian_filter(rng.standard_normal(mask[k].shape), 0.6)
            signal = ndimage.gaussian_filter(volume.pixels[k].astype(float), 2.0) + lesion * mask[k]
            generated = signal + 14.0 * noise / max(float(noise.std()), 1e-6)
            blended = weights * generated + (1 - weights) * volume.pixels[k]
            pixels[k][dilated] = np.rint(blended[dilated]).astype(pixels.dtype)
        write_like_source(volume, pixels, out / f"variant-{v + 1:02d}")
    parameters = {"input": str(source_path), "mask": str(mask_path), "prompt": "hypodense liver lesion",
                  "all_slices": True, "num_variants": num_variants, "mask_dilate_mm": 2.0, "mask_blur_px": 4.0,
                  "crop_padding_px": 16, "window_center": 40.0, "window_width": 400.0,
                  "slices_inpainted": list(range(num_slices)), "seeds": seeds,
                  "variant_prompts": ["hypodense liver lesion"] * num_variants}
    provenance = build_provenance(input_paths=[source_path, mask_path], model_path=demo_model_path(),
                                  parameters=parameters, seeds=seeds, device="none", dtype="none",
                                  extra={"written_by": "medgen bench report --without-engine"})
    write_provenance_json(out / "provenance.json", provenance)
    return out


def measure(folder: Path, num_slices: int, num_variants: int, matrix: int = 512, *,
            reuse_run: bool = False, without_engine: bool = False) -> ReportSize:
    """Write the run (unless ``reuse_run``: FOLDER/run is one already), then time its report."""
    from medgen.qa.report import write_report
    from medgen.qa.run import read_provenance_file

    start = time.perf_counter()
    if reuse_run:
        run_dir = folder / "run"
        parameters = read_provenance_file(run_dir)["parameters"]
        num_slices, num_variants = len(parameters["slices_inpainted"]), len(parameters["seeds"])
        matrix = _matrix_of(Path(parameters["input"]))
    else:
        writer = write_run_without_engine if without_engine else write_run
        run_dir = writer(folder, num_slices, num_variants, matrix)
    run_seconds = time.perf_counter() - start
    start = time.perf_counter()
    report = write_report(run_dir, folder / "report.html")
    report_seconds = time.perf_counter() - start
    return ReportSize(num_slices, num_variants, matrix, report.stat().st_size, report_seconds, run_seconds)


def _matrix_of(source: Path) -> int:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(source))
    reader.ReadImageInformation()
    return int(reader.GetSize()[0])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("num_slices", "num_variants", "matrix"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('num_', '')} must be at least 1, got {getattr(args, name)}")
    if args.reuse_run and args.work_dir is None:
        parser.error("--reuse-run needs the --work-dir of an earlier call")
    with tempfile.TemporaryDirectory(prefix="medgen-bench-report-") as scratch:
        result = measure(args.work_dir or Path(scratch), args.num_slices, args.num_variants, args.matrix,
                         reuse_run=args.reuse_run, without_engine=args.without_engine)
    if args.reuse_run:
        written = "an earlier call's run"
    elif args.without_engine:
        written = f"written in {result.run_seconds:.1f} s (variants made directly, no engine)"
    else:
        written = f"written in {result.run_seconds:.1f} s (the engine's, a synthetic lesion in place of the model)"
    print(f"run: {result.slices} slices of {result.matrix} x {result.matrix}, {result.variants} variant(s), "
          f"{written}")
    print(f"report: {result.megabytes:.1f} MB in {result.report_seconds:.1f} s, "
          f"{result.bytes_per_slice_variant / 1e3:.1f} kB per slice and image (slices x (variants + 1))")
    if args.json:
        args.json.write_text(json.dumps({**asdict(result), "megabytes": result.megabytes}, indent=2) + "\n")
    return 0
