"""The real-file corpus: every DICOM file that installed packages ship (pydicom, pydicom-data, nibabel,
pynetdicom, heudiconv; Debian's python3-pydicom, octave-dicom, dicomnifti, dicom3tools), found at test
time and never copied into the repository, each run through the engine and sorted into one outcome.

Run it as a script to measure the whole corpus (prints one line per case, then the counts and refusal
reasons per package):

    .venv/bin/python engine/tests/real_corpus.py [--steps 2] [--seg both|yes|no] [NAME_FILTER]
    .venv/bin/python engine/tests/real_corpus.py --preflight-only   # no model: outcome and pre-flight time
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUCCESS = "success"
REFUSED = "refused"  # a MedgenError whose reason is on medgen.imaging.unsupported's list
UNFAIR = "unfair refusal"  # a MedgenError with no listed reason
CRASH = "crash"  # any other exception
LATE = "late failure"  # a MedgenError after generation had started
WRONG = "wrong output"  # written, but the output breaks a rule
OUTCOMES = (SUCCESS, REFUSED, UNFAIR, CRASH, LATE, WRONG)


# Files that are surely not DICOM (notes, scripts, dumps, other image formats): never read. Everything
# else is read and counted only when it is DICOM (see is_dicom).
NOT_DICOM_SUFFIXES = (".py", ".pyc", ".txt", ".json", ".dump", ".icc", ".md", ".rst", ".nii", ".par", ".rec",
                      ".mnc", ".trk", ".tck", ".hdr", ".img", ".head", ".brik", ".bin", ".mat", ".npy", ".npz",
                      ".png", ".jpg", ".gif", ".lut", ".plist", ".inv3", ".vtp", ".dat")
NOT_DICOM_NAMES = ("README", ".gitignore")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

# Where packages install DICOM files: (package, importable name, folders inside it). Found through
# importlib without importing, so a package whose own dependencies are missing still counts.
PYTHON_PACKAGE_FOLDERS = (
    ("pydicom", "pydicom", ("data/test_files", "data/charset_files")),
    ("pydicom-data", "data_store", ("data",)),
    ("nibabel", "nibabel", ("nicom/tests/data", "tests/data")),
    ("pynetdicom", "pynetdicom", ("tests/dicom_files",)),
    ("heudiconv", "heudiconv", ("tests/data",)),
)
# Debian packages: (package, folder pattern). invesalius-examples (an InVesalius project) and
# mricron-data (NIfTI templates) ship no DICOM; dicom3tools and dicomnifti one example each.
DEBIAN_FOLDERS = (
    ("python3-pydicom", "/usr/lib/python3/dist-packages/pydicom/data/test_files"),
    ("python3-pydicom", "/usr/lib/python3/dist-packages/pydicom/data/charset_files"),
    ("octave-dicom", "/usr/share/octave/packages/dicom-*/imdata"),
    ("dicomnifti", "/usr/share/doc/dicomnifti/examples"),
    ("dicom3tools", "/usr/share/doc/dicom3tools/examples"),
)
# Gzipped DICOM (nibabel ships its Philips and Siemens files so) is unpacked here at test time
UNPACKED = Path(tempfile.gettempdir()) / "medgen-real-corpus"


def corpus_roots() -> list[tuple[str, Path]]:
    """(package, folder) for every installed package's DICOM folder, in a fixed order."""
    import glob
    import importlib.util

    roots = []
    for package, module, folders in PYTHON_PACKAGE_FOLDERS:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        base = Path(list(spec.submodule_search_locations)[0])
        roots += [(package, base / folder) for folder in folders]
    for package, pattern in DEBIAN_FOLDERS:
        roots += [(package, Path(folder)) for folder in sorted(glob.glob(pattern))]
    return [(package, root.resolve()) for package, root in roots if root.is_dir()]


def is_dicom(path: Path) -> bool:
    """A DICOM file: the Part-10 preamble, a DICOM file name, or (without either) a data set that
    pydicom's forced read finds real DICOM attributes in."""
    with open(path, "rb") as f:
        head = f.read(132)
    if head[128:132] == b"DICM" or path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, defer_size=1024)
            return any(keyword in ds for keyword in ("SOPClassUID", "StudyInstanceUID", "Modality"))
    except Exception:  # whatever the forced read of a non-DICOM file raises
        return False


def _unpacked(package: str, root: Path, path: Path) -> Path:
    """A gzipped file unpacked once into UNPACKED (written aside and renamed, so parallel runs agree)."""
    import gzip
    import os

    target = UNPACKED / package / path.relative_to(root).with_suffix("")
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        partial.write_bytes(gzip.decompress(path.read_bytes()))
        partial.replace(target)
    return target


def corpus_cases() -> list[tuple[str, Path]]:
    """(package, file) for every DICOM file of the installed packages, sorted per folder; a file whose
    bytes an earlier package already shipped (Debian's pydicom, nibabel's two copies) is counted once."""
    import hashlib

    cases, seen = [], set()
    for package, root in corpus_roots():
        for path in sorted(root.rglob("*")):
            name = path.name.lower()
            if not path.is_file() or "__pycache__" in path.parts or path.name in NOT_DICOM_NAMES:
                continue
            if name.endswith(".gz"):
                if name.removesuffix(".gz").endswith(NOT_DICOM_SUFFIXES):
                    continue
                path = _unpacked(package, root, path)
            elif name.endswith(NOT_DICOM_SUFFIXES):
                continue
            if not is_dicom(path):
                continue
            digest = hashlib.sha1(path.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                cases.append((package, path))
    return cases


def corpus_files() -> list[Path]:
    """Every DICOM file of the corpus (see corpus_cases)."""
    return [path for _, path in corpus_cases()]


def case_package(path: Path) -> str:
    """The package a corpus file came from."""
    for package, root in corpus_roots():
        if path.is_relative_to(root) or path.is_relative_to(UNPACKED / package):
            return package
    return "?"


def case_id(path: Path) -> str:
    """A short stable name: the package and the path under its data folder."""
    for package, root in corpus_roots():
        if path.is_relative_to(root):
            return f"{package}/{root.name}/{path.relative_to(root).as_posix()}"
        if path.is_relative_to(UNPACKED / package):
            return f"{package}/{path.relative_to(UNPACKED / package).as_posix()}.gz"
    return path.name


@dataclass
class Outcome:
    kind: str
    message: str = ""
    seconds: float = 0.0
    reason: str | None = None  # the refusal's listed reason


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

    def outcome(kind: str, message: str = "", reason: str | None = None) -> Outcome:
        return Outcome(kind, message, time.perf_counter() - started, reason)

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
        if listed_reason(error):
            return outcome(REFUSED, str(error), error.reason)
        return outcome(UNFAIR, str(error))
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
        return Outcome(kind, str(error), time.perf_counter() - started, error.reason if kind == REFUSED else None)
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
        problem = private_element_problem(_read_as_written(path))
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


def _read_as_written(path: Path):
    """The file with each element in the VR it was written with: pydicom otherwise turns a private UN
    into its dictionary's VR on reading, and an element the writer rightly kept as UN would look guessed."""
    import pydicom

    saved = pydicom.config.replace_un_with_known_vr
    pydicom.config.replace_un_with_known_vr = False
    try:
        ds = pydicom.dcmread(path)
        for _ in ds.iterall():  # parse every element while the setting holds
            pass
        return ds
    finally:
        pydicom.config.replace_un_with_known_vr = saved


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
    results = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for n, (package, path) in enumerate(c for c in corpus_cases() if args.filter in str(c[1])):
            for write_seg in seg_modes:
                result = run_case(inpainter, path, Path(tmp) / f"{n}-{int(write_seg)}", write_seg=write_seg,
                                  steps=args.steps)
                results.append((package, result))
                print(f"{result.kind:15s} {'seg' if write_seg else '   '} {case_id(path)} "
                      f"({result.seconds:.1f}s) {result.message[:300]}", flush=True)
    print_summary(results)
    print(f"wall={time.perf_counter() - started:.0f}s")
    return 0


def print_summary(results: list[tuple[str, Outcome]]) -> None:
    """Outcomes per package and in all, and the refusal reasons met."""
    packages = list(dict.fromkeys(package for package, _ in results))
    for package in packages + ["all"]:
        kinds = [r.kind for p, r in results if package in ("all", p)]
        reasons = [r.reason for p, r in results if package in ("all", p) and r.kind == REFUSED]
        print(f"{package:16s} cases={len(kinds):4d} " + " ".join(f"{k.replace(' ', '-')}={kinds.count(k)}"
                                                            for k in OUTCOMES if kinds.count(k))
              + (" (" + ", ".join(f"{reason} {reasons.count(reason)}" for reason in sorted(set(reasons))) + ")"
                 if reasons else ""))


def _preflight_only(name_filter: str) -> int:
    """Outcome and seconds of reading plus pre-flight per file: the time a doomed request takes to fail."""
    results = []
    for package, path in (c for c in corpus_cases() if name_filter in str(c[1])):
        result = preflight_case(path, write_seg=True)
        results.append((package, result))
        print(f"{result.kind:15s} {case_id(path)} ({result.seconds:.2f}s) {result.message[:200]}", flush=True)
    print_summary(results)
    times = np.sort(np.array([r.seconds for _, r in results]))
    print(f"files={len(times)} median={np.median(times):.2f}s p95={times[int(0.95 * (len(times) - 1))]:.2f}s "
          f"max={times[-1]:.2f}s under-1s={int(np.sum(times < 1.0))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
