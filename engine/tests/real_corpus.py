"""The real-file corpus: every DICOM file pydicom and pydicom-data ship, found at test time, each run
through the engine and sorted into one outcome.

Run it as a script to measure the whole corpus (prints one line per case and the counts):

    .venv/bin/python engine/tests/real_corpus.py [--steps 2] [--seg both|yes|no] [NAME_FILTER]
    .venv/bin/python engine/tests/real_corpus.py --preflight-only   # no model: outcome and pre-flight time
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Files in the data folders that are not DICOM (pydicom's own notes, dumps and test fixtures).
NOT_DICOM_SUFFIXES = (".py", ".pyc", ".txt", ".json", ".dump", ".icc", ".gz", ".md")
NOT_DICOM_NAMES = ("README",)

SUCCESS = "success"
REFUSED = "refused"  # a MedgenError whose reason is on medgen.imaging.unsupported's list
UNFAIR = "unfair refusal"  # a MedgenError with no listed reason
CRASH = "crash"  # any other exception
LATE = "late failure"  # a MedgenError after generation had started
WRONG = "wrong output"  # written, but the output breaks a rule
OUTCOMES = (SUCCESS, REFUSED, UNFAIR, CRASH, LATE, WRONG)


def corpus_roots() -> list[Path]:
    """The data folders of the installed packages (pydicom's test and charset files, pydicom-data)."""
    roots = []
    try:
        import pydicom

        data = Path(pydicom.__file__).parent / "data"
        roots += [data / "test_files", data / "charset_files"]
    except ImportError:
        pass
    try:
        import data_store

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return [root for root in roots if root.is_dir()]


def corpus_files() -> list[Path]:
    """Every file under the data folders that could be DICOM (by name), sorted, de-duplicated by name."""
    files = []
    for root in corpus_roots():
        for path in sorted(root.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            if path.name.lower().endswith(NOT_DICOM_SUFFIXES) or path.name in NOT_DICOM_NAMES:
                continue
            files.append(path)
    return files


def case_id(path: Path) -> str:
    """A short stable name: the path under its data folder."""
    for root in corpus_roots():
        if path.is_relative_to(root):
            return f"{root.name}/{path.relative_to(root).as_posix()}"
    return path.name


@dataclass
class Outcome:
    kind: str
    message: str = ""
    seconds: float = 0.0


def centre_mask(volume) -> tuple[np.ndarray, int]:
    """A small square in the centre of the middle slice (the slice index is returned too)."""
    k = volume.num_slices // 2
    rows, cols = volume.shape2d
    half = max(1, min(rows, cols) // 16)
    mask = np.zeros((volume.num_slices, rows, cols), dtype=np.uint8)
    mask[k, rows // 2 - half: rows // 2 + half, cols // 2 - half: cols // 2 + half] = 1
    return mask, k


def write_centre_mask(volume, path: Path) -> tuple[Path, int]:
    """The centre mask as a NIfTI labelmap on exactly the volume's grid."""
    from testfiles import write_labelmap_like

    mask, k = centre_mask(volume)
    return write_labelmap_like(volume, mask, path), k


def run_case(inpainter, source: Path, work: Path, *, write_seg: bool, steps: int = 2) -> Outcome:
    """Run one corpus file through the engine and sort the result into one of OUTCOMES."""
    from medgen.api import InpaintRequest
    from medgen.errors import MedgenError
    from medgen.imaging.read import read_volume

    started = time.perf_counter()
    generation_started = []

    def outcome(kind: str, message: str = "") -> Outcome:
        return Outcome(kind, message, time.perf_counter() - started)

    work.mkdir(parents=True, exist_ok=True)
    try:
        volume = read_volume(source)
        mask_path, k = write_centre_mask(volume, work / "mask.nii.gz")
        # the demo model is a CT model; the corpus is about files, so every modality is run with it
        extra = {"force_modality": True} if "force_modality" in InpaintRequest.__dataclass_fields__ else {}
        request = InpaintRequest(
            input=source, mask=mask_path, prompt="lesion", out=work / "out", slices=[k],
            num_inference_steps=steps, seed=0, write_seg=write_seg, **extra,
        )
        result = inpainter(request, progress=lambda done, total: generation_started.append(done))
    except MedgenError as error:
        if generation_started and getattr(error, "reason", None) != "unchanged":  # only knowable afterwards
            return outcome(LATE, str(error))
        return outcome(REFUSED if listed_reason(error) else UNFAIR, str(error))
    except Exception as error:  # the corpus measures exactly these
        return outcome(CRASH, f"{type(error).__name__}: {error}".splitlines()[0])
    problem = output_problem(result, volume, write_seg)
    return outcome(WRONG, problem) if problem else outcome(SUCCESS)


def preflight_case(source: Path, *, write_seg: bool) -> Outcome:
    """Read one corpus file and run the pre-flight on the centre mask (no model): what a request meets
    before any generation."""
    from medgen.dicom.preflight import preflight
    from medgen.errors import MedgenError
    from medgen.imaging.read import read_volume

    started = time.perf_counter()
    try:
        volume = read_volume(source)
        mask, k = centre_mask(volume)
        preflight(volume, {k: mask[k].astype(bool)}, write_seg=write_seg, write_dicom=False, only_modified=False)
    except MedgenError as error:
        kind = REFUSED if listed_reason(error) else UNFAIR
        return Outcome(kind, str(error), time.perf_counter() - started)
    except Exception as error:  # the corpus measures exactly these
        return Outcome(CRASH, f"{type(error).__name__}: {error}".splitlines()[0], time.perf_counter() - started)
    return Outcome(SUCCESS, "", time.perf_counter() - started)


def listed_reason(error) -> bool:
    """True when the error carries a reason on the written list of what the engine does not support."""
    from medgen.imaging.unsupported import UNSUPPORTED

    reason = getattr(error, "reason", None)
    return reason is not None and reason in UNSUPPORTED


def output_problem(result, volume, write_seg: bool) -> str | None:
    """What is wrong with a written result, or None: every instance reads back, carries the synthetic
    marks, keeps private elements readable in their VR, changed some voxel, and its SEG reads in highdicom."""
    import highdicom as hd
    import pydicom

    dicom_files = [f for f in result.files if f.suffix == ".dcm"]
    changed = False
    for path in dicom_files:
        ds = pydicom.dcmread(path)
        if ds.get("Modality") == "SEG":
            try:
                hd.seg.segread(path)
            except Exception as exc:  # highdicom's own reader is the judge of a SEG
                return f"{path.name}: highdicom cannot read the SEG: {type(exc).__name__}: {exc}"
            continue
        if ds.get("SyntheticData") != "YES":
            return f"{path.name}: Synthetic Data is not YES"
        problem = private_element_problem(ds)
        if problem:
            return f"{path.name}: {problem}"
        try:
            ds.pixel_array
        except Exception as exc:
            return f"{path.name}: pixel data does not decode: {exc}"
    for variant in result.variant_dirs:
        if not variant.is_dir():
            return f"{variant} was not written"
    changed = _any_voxel_changed(result, volume)
    if not changed:
        return "no voxel changed, yet a synthetic series was written"
    if write_seg and not any(f.parent.name.endswith("-seg") for f in dicom_files):
        return "--seg asked for, but no SEG written"
    return None


def _any_voxel_changed(result, volume) -> bool:
    from medgen.imaging.read import read_volume

    written = read_volume(result.variant_dirs[0] if len(list(result.variant_dirs[0].glob("*.dcm"))) != 1
                          else next(result.variant_dirs[0].glob("*.dcm")))
    if written.pixels.shape != volume.pixels.shape:
        return True  # only-modified output; a different shape is a change of its own
    return not np.array_equal(written.pixels, volume.pixels)


# Longest value each text VR holds (PS3.5 6.2), in characters.
_VR_MAX_LENGTH = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "IS": 12, "LO": 64, "SH": 16, "TM": 14, "UI": 64}


def private_element_problem(ds) -> str | None:
    """A private element written with a VR its value does not fit (a VR guessed from a dictionary)."""
    for element in ds.iterall():
        limit = _VR_MAX_LENGTH.get(element.VR)
        if not element.tag.is_private or limit is None or element.value is None:
            continue
        values = element.value if isinstance(element.value, (list, tuple)) or hasattr(element.value, "_list") else [element.value]
        for value in values:
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            if len(text.strip()) > limit:
                return f"private {element.tag} written as {element.VR} holds {len(text.strip())} characters (max {limit})"
    return None


def main(argv: list[str]) -> int:
    import argparse
    import logging
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from medgen.api import Inpainter
    from medgen.phantom.model import demo_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filter", nargs="?", default="", help="only files whose path contains this text")
    parser.add_argument("--steps", type=int, default=2, help="diffusion steps per case (default 2)")
    parser.add_argument("--seg", choices=["both", "yes", "no"], default="both", help="with --seg, without, or both")
    parser.add_argument("--preflight-only", action="store_true",
                        help="read and pre-flight each file with --seg (no model); print the time it took")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.preflight_only:
        return _preflight_only(args.filter)
    inpainter = Inpainter(demo_model_path(), device="cpu")
    seg_modes = {"both": (False, True), "yes": (True,), "no": (False,)}[args.seg]
    counts = {kind: 0 for kind in OUTCOMES}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for n, path in enumerate(f for f in corpus_files() if args.filter in str(f)):
            for write_seg in seg_modes:
                result = run_case(inpainter, path, Path(tmp) / f"{n}-{int(write_seg)}", write_seg=write_seg,
                                  steps=args.steps)
                counts[result.kind] += 1
                print(f"{result.kind:15s} {'seg' if write_seg else '   '} {case_id(path)} "
                      f"({result.seconds:.1f}s) {result.message[:300]}", flush=True)
    print(" ".join(f"{kind}={count}" for kind, count in counts.items()),
          f"cases={sum(counts.values())} wall={time.perf_counter() - started:.0f}s")
    return 0


def _preflight_only(name_filter: str) -> int:
    """Outcome and seconds of reading plus pre-flight per file: the time a doomed request takes to fail."""
    counts = {kind: 0 for kind in OUTCOMES}
    seconds = []
    for path in (f for f in corpus_files() if name_filter in str(f)):
        result = preflight_case(path, write_seg=True)
        counts[result.kind] += 1
        seconds.append(result.seconds)
        print(f"{result.kind:15s} {case_id(path)} ({result.seconds:.2f}s) {result.message[:200]}", flush=True)
    times = np.sort(np.array(seconds))
    print(" ".join(f"{kind}={count}" for kind, count in counts.items() if count),
          f"files={len(times)} median={np.median(times):.2f}s p95={times[int(0.95 * (len(times) - 1))]:.2f}s "
          f"max={times[-1]:.2f}s under-1s={int(np.sum(times < 1.0))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
