"""Seeded mutation fuzzing of the engine's input layer and pre-flight (no model needed).

Real files (pydicom's test files, and NIfTI/NRRD/PNG made from them) are truncated, bit-flipped,
given bad or missing tags and lying headers, then read as the source or as the mask and, when
they read, pre-flighted. Every case must end in success or a MedgenError; any other exception, or
a case running past its time limit (a hang), is a failure.

The default run does MEDGEN_FUZZ_CASES cases (default 200, seeded, so a failure is reproducible
by its case number); the long mode is the same test with MEDGEN_FUZZ_CASES=10000, or the slow-marked
test below. Each case's seed is printed with a failure.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import signal
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement

from testfiles import dicom_testfile

CASE_TIME_LIMIT_S = 20
DEFAULT_CASES = int(os.environ.get("MEDGEN_FUZZ_CASES", "200"))
LONG_CASES = 10_000

# Small real DICOM files of different kinds: CT, MR (explicit, implicit, big endian, RLE, J2K), NM
# single frame with NumberOfFrames, RT Dose multi-frame, colour SC (RLE), enhanced-style SEG
DICOM_SEEDS = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "rtdose.dcm", "SC_rgb_rle.dcm", "emri_small.dcm",
    "ExplVR_LitEndNoMeta.dcm", "liver_1frame.dcm",
)
# Header attributes a mutation sets to an odd value, and the odd values
ODD_TAGS = ("Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel",
            "PixelRepresentation", "PhotometricInterpretation", "PixelSpacing", "ImagePositionPatient",
            "ImageOrientationPatient", "RescaleSlope", "RescaleIntercept", "SliceThickness", "WindowCenter",
            "StudyInstanceUID", "SOPClassUID", "SpecificCharacterSet", "GridFrameOffsetVector", "PlanarConfiguration",
            "StudyTime", "PatientBirthDate")
ODD_VALUES = ("", "0", "-1", "65535", "1A", "nan", "inf", "1e300", "\\", "1\\2\\3", "MONOCHROME3", "PALETTE COLOR",
              "ISO 2022 IR 87", "99:99:99", "2**64", "  ", "1.2.3..4")


class CaseTimeout(Exception):
    """A case ran past CASE_TIME_LIMIT_S: a hang."""


@dataclass
class Case:
    number: int
    kind: str
    source: Path
    mask: Path | None


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """The real files the mutations start from, plus NIfTI/NRRD/PNG made from one of them."""
    import SimpleITK as sitk
    from PIL import Image

    folder = tmp_path_factory.mktemp("fuzz-seeds")
    dicoms = []
    for name in DICOM_SEEDS:
        try:
            dicoms.append(dicom_testfile(name))
        except pytest.fail.Exception:
            continue
    ct = pydicom.dcmread(dicom_testfile("CT_small.dcm")).pixel_array.astype(np.int16)
    volume = np.stack([ct, ct, ct])
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.66, 0.66, 5.0))
    nifti, nrrd = folder / "ct.nii.gz", folder / "ct.nrrd"
    sitk.WriteImage(image, str(nifti))
    sitk.WriteImage(image, str(nrrd), useCompression=False)
    labels = np.zeros(volume.shape, np.uint8)
    labels[1, 30:40, 30:40] = 1
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    nifti_mask, nrrd_mask = folder / "mask.nii.gz", folder / "mask.nrrd"
    sitk.WriteImage(label_image, str(nifti_mask))
    sitk.WriteImage(label_image, str(nrrd_mask), useCompression=False)
    png, png_mask = folder / "slice.png", folder / "slice-mask.png"
    Image.fromarray((ct // 16).clip(0, 255).astype(np.uint8)).save(png)
    mask2d = np.zeros(ct.shape, np.uint8)
    mask2d[30:40, 30:40] = 255
    Image.fromarray(mask2d).save(png_mask)
    return {"dicom": dicoms, "nifti": (nifti, nifti_mask), "nrrd": (nrrd, nrrd_mask), "png": (png, png_mask)}


# --- mutations ---------------------------------------------------------------------------------


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(0, max(1, len(data)))]


def _flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 16)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _overwrite(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    start = rng.randrange(len(out))
    for i in range(start, min(len(out), start + rng.randint(1, 64))):
        out[i] = rng.choice((0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    return bytes(out)


def _splice(data: bytes, rng: random.Random) -> bytes:
    a, b = sorted(rng.randrange(len(data)) for _ in range(2))
    return data[:a] + data[b:] if rng.random() < 0.5 else data[:a] + data[a:b] * 2 + data[b:]


BYTE_MUTATIONS = (_truncate, _flip_bits, _overwrite, _splice)


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    for _ in range(rng.randint(1, 2)):
        if data:
            data = rng.choice(BYTE_MUTATIONS)(data, rng)
    return data


def _mutate_dicom_tags(path: Path, rng: random.Random) -> bytes:
    """Delete an element or give one an odd value, then write the data set again."""
    ds = pydicom.dcmread(path, force=True)
    for _ in range(rng.randint(1, 3)):
        keyword = rng.choice(ODD_TAGS)
        if rng.random() < 0.4:
            if keyword in ds:
                delattr(ds, keyword)
            continue
        value = rng.choice(ODD_VALUES).encode()
        value += b" " * (len(value) % 2)
        tag = pydicom.tag.Tag(pydicom.datadict.tag_for_keyword(keyword))
        vr = "UN" if rng.random() < 0.2 else pydicom.datadict.dictionary_VR(tag)
        # a raw element is written as these bytes, whatever its VR would accept
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=False)
    except Exception:
        return path.read_bytes()[: rng.randrange(1, 4096)]  # pydicom itself refused: a truncation instead
    return buffer.getvalue()


def _lying_nrrd_header(rng: random.Random) -> bytes:
    sizes = [rng.choice((1, 2, 64, 65535, 2**31, 0, -3)) for _ in range(rng.choice((2, 3, 4)))]
    lines = [
        "NRRD0004",
        f"type: {rng.choice(('short', 'uchar', 'float', 'double', 'int64', 'block', 'nonsense'))}",
        f"dimension: {rng.choice((len(sizes), len(sizes) + 1, 0, 17))}",
        f"sizes: {' '.join(str(s) for s in sizes)}",
        f"encoding: {rng.choice(('raw', 'gzip', 'ascii', 'bzip2'))}",
        f"space directions: {rng.choice(('(1,0,0) (0,1,0) (0,0,1)', '(nan,0,0) (0,1,0) (0,0,1)', 'none', '(0,0,0) (0,0,0) (0,0,0)'))}",
        f"endian: {rng.choice(('little', 'big'))}",
    ]
    body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 2048)))
    return ("\n".join(lines) + "\n\n").encode() + body


def _lying_nifti_header(seed_file: Path, rng: random.Random) -> bytes:
    """A real NIfTI with header fields (dims, datatype, offset, pixdim) set to lies."""
    data = bytearray(gzip.decompress(seed_file.read_bytes()))
    field_offsets = {"dim": 40, "datatype": 70, "bitpix": 72, "pixdim": 76, "vox_offset": 108, "qform": 252}
    name = rng.choice(tuple(field_offsets))
    offset = field_offsets[name]
    if name == "dim":
        struct.pack_into("<8h", data, offset, *(rng.choice((0, 1, 3, 7, 8, -1, 32767)) for _ in range(8)))
    elif name == "pixdim":
        struct.pack_into("<8f", data, offset, *(rng.choice((0.0, -1.0, float("nan"), float("inf"), 1e30)) for _ in range(8)))
    elif name == "vox_offset":
        struct.pack_into("<f", data, offset, rng.choice((0.0, -352.0, 1e12, float("nan"), 348.0)))
    else:
        struct.pack_into("<h", data, offset, rng.choice((0, 1, 3, 255, 1536, 2304, -1, 32767)))
    raw = bytes(data)
    return gzip.compress(raw) if rng.random() < 0.5 else raw


def _odd_png(rng: random.Random, shape: tuple[int, int]) -> bytes:
    """A PNG mask of an odd mode or size, or one whose header claims a huge image."""
    from PIL import Image

    if rng.random() < 0.2:  # a valid PNG whose IHDR is rewritten to claim 60000 x 60000 pixels
        buffer = io.BytesIO()
        Image.new("L", (8, 8)).save(buffer, format="PNG")
        data = bytearray(buffer.getvalue())
        struct.pack_into(">II", data, 16, rng.choice((60000, 2**31 - 1)), rng.choice((60000, 1)))
        return bytes(data)
    mode = rng.choice(("1", "L", "LA", "P", "RGB", "RGBA", "I;16"))
    rows, columns = shape if rng.random() < 0.7 else (rng.randint(1, 300), rng.randint(1, 300))
    array = np.zeros((rows, columns), np.uint8)
    if rng.random() < 0.8:
        array[rows // 3: rows // 2 + 1, columns // 3: columns // 2 + 1] = rng.choice((1, 2, 255))
    image = Image.fromarray(array).convert(mode) if mode not in ("I;16",) else Image.fromarray(array.astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    return _mutate_bytes(data, rng) if rng.random() < 0.3 else data


# --- cases -------------------------------------------------------------------------------------


def make_case(number: int, seeds: dict, folder: Path) -> Case:
    """Case ``number`` (deterministic): which input is mutated how, written under ``folder``."""
    rng = random.Random(number)
    kind = rng.choice(("dicom-bytes", "dicom-bytes", "dicom-tags", "dicom-tags", "nifti", "nrrd", "png-mask",
                       "nifti-mask", "nrrd-mask"))
    folder.mkdir(parents=True, exist_ok=True)
    if kind.startswith("dicom"):
        seed = rng.choice(seeds["dicom"])
        data = _mutate_bytes(seed.read_bytes(), rng) if kind == "dicom-bytes" else _mutate_dicom_tags(seed, rng)
        source = folder / "source.dcm"
        source.write_bytes(data)
        return Case(number, kind, source, None)
    if kind in ("nifti", "nrrd"):
        seed, mask = seeds[kind]
        source = folder / seed.name
        if kind == "nrrd" and rng.random() < 0.5:
            source.write_bytes(_lying_nrrd_header(rng))
        elif kind == "nifti" and rng.random() < 0.6:
            source.write_bytes(_lying_nifti_header(seed, rng))
            if not source.read_bytes()[:2] == b"\x1f\x8b":
                source = source.rename(folder / "ct.nii")
        else:
            source.write_bytes(_mutate_bytes(seed.read_bytes(), rng))
        return Case(number, kind, source, mask)
    if kind == "png-mask":
        source, _ = seeds["png"]
        mask = folder / "mask.png"
        mask.write_bytes(_odd_png(rng, (128, 128)))
        return Case(number, kind, source, mask)
    image_kind = "nifti" if kind == "nifti-mask" else "nrrd"
    source, mask_seed = seeds[image_kind]
    mask = folder / mask_seed.name
    if image_kind == "nrrd" and rng.random() < 0.4:
        mask.write_bytes(_lying_nrrd_header(rng))
    elif image_kind == "nifti" and rng.random() < 0.5:
        mask.write_bytes(_lying_nifti_header(mask_seed, rng))
    else:
        mask.write_bytes(_mutate_bytes(mask_seed.read_bytes(), rng))
    return Case(number, kind, source, mask)


def run_case(case: Case) -> None:
    """Read the source (and the mask), pick the slices and pre-flight: success or a MedgenError only."""
    from medgen.dicom.preflight import preflight
    from medgen.imaging.masks import read_mask, select_slices
    from medgen.imaging.read import read_volume

    volume = read_volume(case.source)
    if case.mask is None:
        mask = np.zeros(volume.pixels.shape[:3], bool)
        rows, columns = volume.shape2d
        mask[volume.num_slices // 2, rows // 3: rows // 2 + 1, columns // 3: columns // 2 + 1] = True
    else:
        mask = read_mask(case.mask, volume)
    slices = select_slices(mask, None, True, volume)
    preflight(volume, {k: mask[k] for k in slices}, write_seg=True, write_dicom=True, only_modified=False)


def _alarm(signum, frame):
    raise CaseTimeout()


def fuzz(seeds: dict, folder: Path, cases: range) -> dict:
    """Run ``cases``; return the figures and the failures (uncaught exceptions and hangs)."""
    from medgen.errors import MedgenError

    figures = {"cases": 0, "ok": 0, "refused": 0, "uncaught": [], "hangs": []}
    previous = signal.signal(signal.SIGALRM, _alarm)
    started = time.perf_counter()
    try:
        for number in cases:
            case = make_case(number, seeds, folder / f"case-{number}")
            figures["cases"] += 1
            signal.alarm(CASE_TIME_LIMIT_S)
            try:
                run_case(case)
                figures["ok"] += 1
            except MedgenError:
                figures["refused"] += 1
            except CaseTimeout:
                figures["hangs"].append(f"case {number} ({case.kind})")
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # exactly what the fuzzing looks for (a Rust panic is a BaseException)
                figures["uncaught"].append(f"case {number} ({case.kind}): {type(exc).__name__}: {str(exc)[:200]}")
            finally:
                signal.alarm(0)
            for path in sorted((folder / f"case-{number}").glob("*"), reverse=True):
                if path.is_file():
                    path.unlink()
    finally:
        signal.signal(signal.SIGALRM, previous)
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    return figures


def test_fuzzed_inputs_give_medgen_errors_only(seeds, tmp_path, capsys):
    figures = fuzz(seeds, tmp_path, range(DEFAULT_CASES))
    with capsys.disabled():
        print(f"\nfuzz: {figures['cases']} cases, {figures['ok']} read and pre-flighted, {figures['refused']} refused, "
              f"{len(figures['uncaught'])} uncaught, {len(figures['hangs'])} hangs, {figures['wall_s']} s")
    assert not figures["uncaught"], "\n".join(figures["uncaught"][:20])
    assert not figures["hangs"], figures["hangs"]
    assert figures["refused"] > 0 and figures["ok"] > 0  # the mutations reach both outcomes


@pytest.mark.slow
def test_fuzzed_inputs_long_mode(seeds, tmp_path, capsys):
    """The nightly run: 10,000 cases, numbered after the default run's."""
    figures = fuzz(seeds, tmp_path, range(DEFAULT_CASES, DEFAULT_CASES + LONG_CASES))
    with capsys.disabled():
        print(f"\nfuzz long mode: {figures['cases']} cases, {figures['ok']} ok, {figures['refused']} refused, "
              f"{len(figures['uncaught'])} uncaught, {len(figures['hangs'])} hangs, {figures['wall_s']} s")
    assert not figures["uncaught"], "\n".join(figures["uncaught"][:20])
    assert not figures["hangs"], figures["hangs"]


def test_a_case_is_the_same_for_the_same_number(seeds, tmp_path):
    """A failing case number reproduces: the same number writes the same bytes."""
    first = make_case(17, seeds, tmp_path / "a")
    second = make_case(17, seeds, tmp_path / "b")
    assert first.kind == second.kind
    assert first.source.read_bytes() == second.source.read_bytes()
