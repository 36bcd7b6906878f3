"""The phantom generator's ground truth, its files, its vocabulary and the training recipe.

Each test checks something a broken generator would get wrong: lesion HU, shape, seed determinism,
DICOM tags and geometry, segmentations that read back onto the CT grid, and whole-word tokens.
"""

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
import slicerio
from scipy import ndimage

from medgen.phantom.anatomy import HU, Tissue
from medgen.phantom.cases import make_case, reference_hu
from medgen.phantom.commands import make_main
from medgen.phantom.dataset import HEALTHY, hu_to_model, make_training_pairs
from medgen.phantom.lesions import (
    BASE_TYPES,
    HELD_OUT_TYPES,
    LESION_SPECS,
    LesionType,
    border_irregularity,
    largest_slice,
    prompt_words,
    sample_prompt,
)
from medgen.phantom.series import RESCALE_INTERCEPT, write_case
from medgen.phantom.vocab import build_tokenizer

SEEDS = [(5, 0), (5, 1), (5, 2)]


@pytest.fixture(scope="module")
def cases():
    return {(t, s): make_case(s, t) for t in LesionType for s in SEEDS}


@pytest.mark.parametrize("lesion_type", list(LesionType))
def test_lesion_hu_matches_its_type(cases, lesion_type):
    for seed in SEEDS:
        case = cases[(lesion_type, seed)]
        k = largest_slice(case.lesion_mask)
        core = ndimage.binary_erosion(case.lesion_mask[k])  # away from the blurred rim
        assert core.sum() >= 5
        measured = case.hu[k][core].mean()
        tolerance = max(10.0, 0.05 * abs(case.lesion.hu))
        assert abs(measured - case.lesion.hu) < tolerance, (lesion_type, seed, measured, case.lesion.hu)
        # the lesion's own value is drawn around the type's nominal HU
        assert abs(case.lesion.hu - LESION_SPECS[lesion_type].hu) <= LESION_SPECS[lesion_type].hu_spread


def test_healthy_twin_differs_only_at_the_lesion(cases):
    for case in cases.values():
        near = ndimage.binary_dilation(case.lesion_mask, iterations=4)  # the blur reaches a few pixels
        assert np.array_equal(case.hu[~near], case.healthy_hu[~near])
        organ_hu = case.body.organ_hu[case.organ]
        assert abs(case.healthy_hu[case.lesion_mask].mean() - organ_hu) < 12


def test_anatomy_is_ct_like(cases):
    case = cases[(LesionType.CYST, SEEDS[0])]
    middle = case.healthy_hu[len(case.hu) // 2]
    labels = case.labels[len(case.hu) // 2]
    assert middle[0, 0] <= -990  # air in the corner
    for tissue in (Tissue.SUBCUTANEOUS_FAT, Tissue.LIVER, Tissue.SPLEEN, Tissue.KIDNEY, Tissue.BONE, Tissue.VESSEL):
        assert (labels == tissue).sum() > 20, tissue
    assert abs(np.median(middle[labels == Tissue.LIVER]) - HU[Tissue.LIVER]) < 10
    assert abs(np.median(middle[labels == Tissue.SUBCUTANEOUS_FAT]) - HU[Tissue.SUBCUTANEOUS_FAT]) < 15
    assert np.percentile(middle[labels == Tissue.BONE], 90) > 400
    # scanner noise: the liver's spread is the body's noise level, give or take the texture of vessels
    flat = ndimage.binary_erosion(labels == Tissue.LIVER, iterations=3)
    assert abs(middle[flat].std() - case.body.noise_hu) < 3


@pytest.mark.parametrize("lesion_type", list(LesionType))
def test_lesion_shape(cases, lesion_type):
    for seed in SEEDS:
        case = cases[(lesion_type, seed)]
        k = largest_slice(case.lesion_mask)
        assert len(case.lesion_slices) >= 2  # a 3D lesion spans slices
        assert np.isin(case.labels[k][case.lesion_mask[k]], [case.organ, Tissue.VESSEL]).mean() > 0.95
        assert ndimage.label(case.lesion_mask[k])[1] == 1  # one connected footprint
        irregularity = border_irregularity(case.lesion_mask[k])
        if lesion_type in HELD_OUT_TYPES:
            assert irregularity > 0.25, (seed, irregularity)
        else:
            assert irregularity < 0.2, (seed, irregularity)


def test_border_irregularity_of_known_shapes():
    rows, cols = np.mgrid[:64, :64]
    disk = (rows - 32) ** 2 + (cols - 32) ** 2 <= 15**2
    assert border_irregularity(np.ones((10, 10), bool)) == pytest.approx(0.0)
    assert border_irregularity(disk) < 0.06
    star = disk.copy()
    star[:] = ((rows - 32) ** 2 + (cols - 32) ** 2 <= 6**2) | (np.abs(rows - 32) <= 1) | (np.abs(cols - 32) <= 1)
    assert border_irregularity(star) > 0.5


def test_same_seed_same_case_other_seed_other_case():
    a, b = make_case(11, "fat"), make_case(11, "fat")
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.lesion_mask, b.lesion_mask)
    c = make_case(12, "fat")
    assert not np.array_equal(a.hu, c.hu)


def test_reference_hu_orders_the_types(cases):
    case = cases[(LesionType.CYST, SEEDS[0])]
    window = (40.0, 400.0)
    ref = {t: reference_hu(case, t, window) for t in LesionType}
    healthy = reference_hu(case, None, window)
    assert ref[LesionType.FAT] < ref[LesionType.CYST] < ref[LesionType.SPICULATED] < healthy
    assert healthy < ref[LesionType.HYPERDENSE] < ref[LesionType.CALCIFICATION]
    assert ref[LesionType.CALCIFICATION] == pytest.approx(240.0)  # clipped at the window's top


def test_written_series_tags_geometry_and_values(tmp_path):
    case = make_case(3, "hyperdense", num_slices=5)
    files = write_case(case, tmp_path / "case")
    paths = sorted(files.ct_dir.glob("*.dcm"))
    assert len(paths) == 5
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        assert "PHANTOM" in str(ds.PatientName)
        assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert ds.SyntheticData == "YES"
        assert float(ds.RescaleIntercept) == RESCALE_INTERCEPT and float(ds.RescaleSlope) == 1.0
        assert [float(v) for v in ds.PixelSpacing] == [case.grid.spacing_mm] * 2
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(case.z_mm[k])
        assert float(ds.SliceThickness) == case.slice_thickness_mm
        hu = ds.pixel_array.astype(np.int32) + int(RESCALE_INTERCEPT)
        assert np.array_equal(hu, case.hu[k])
    healthy = pydicom.dcmread(min(files.healthy_dir.glob("*.dcm")))
    first = pydicom.dcmread(paths[0])
    assert healthy.StudyInstanceUID == first.StudyInstanceUID
    assert healthy.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert healthy.SeriesInstanceUID != first.SeriesInstanceUID
    truth = json.loads(files.truth_json.read_text())
    assert truth["lesion_type"] == "hyperdense" and truth["slices"] == case.lesion_slices


def test_segmentations_read_back_on_the_ct_grid(tmp_path):
    from medgen.imaging.masks import read_mask
    from medgen.imaging.read import read_volume

    case = make_case(4, "calcification", num_slices=5)
    files = write_case(case, tmp_path / "case")
    seg = slicerio.read_segmentation(str(files.seg_nrrd))
    assert seg["segments"][0]["name"] == "calcification"
    assert np.allclose(seg["ijkToLPS"], case.ijk_to_lps)
    dicom_seg = hd.seg.segread(files.dicom_seg)
    assert dicom_seg.SegmentSequence[0].SegmentLabel == "calcification"
    # the engine reads both onto the CT series' grid, voxel for voxel
    volume = read_volume(files.healthy_dir)
    assert np.array_equal(read_mask(files.seg_nrrd, volume), case.lesion_mask)
    assert np.array_equal(read_mask(files.dicom_seg, volume), case.lesion_mask)


def test_written_ct_passes_dciodvfy(tmp_path):
    from medgen.dicom.dciodvfy import is_available, run_dciodvfy

    if not is_available():
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    files = write_case(make_case(6, "cyst", num_slices=3), tmp_path / "case")
    for path in [next(files.ct_dir.glob("*.dcm")), files.dicom_seg]:
        report = run_dciodvfy(path)
        errors = [line for line in report.errors if "0x0008,0x001c" not in line]  # Synthetic Data predates dicom3tools
        assert not errors, errors


def test_make_command_is_deterministic(tmp_path):
    assert make_main(["--out", str(tmp_path / "a"), "--cases", "2", "--seed", "9", "--slices", "4"]) == 0
    assert make_main(["--out", str(tmp_path / "b"), "--cases", "2", "--seed", "9", "--slices", "4"]) == 0
    index = json.loads((tmp_path / "a" / "cases.json").read_text())
    assert [c["lesion_type"] for c in index] == ["cyst", "hyperdense"]
    for name in ["case-002/ct/0002.dcm", "case-002/lesion.seg.nrrd", "case-001/truth.json", "cases.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_cases_json_names_folders_relative_to_itself(tmp_path):
    assert make_main(["--out", str(tmp_path / "a"), "--cases", "2", "--seed", "9", "--slices", "4"]) == 0
    (tmp_path / "a").rename(tmp_path / "moved")
    index = json.loads((tmp_path / "moved" / "cases.json").read_text())
    assert [c["folder"] for c in index] == ["case-001", "case-002"]
    for case in index:
        assert (tmp_path / "moved" / case["folder"] / "lesion.seg.nrrd").is_file()


def test_vocabulary_words_are_single_tokens_and_the_held_out_type_is_not():
    words = prompt_words()
    tokenizer = build_tokenizer(words)
    for word in words:
        assert len(tokenizer(word).input_ids) == 3, word  # BOS, the word, EOS
    assert "spiculated" not in words
    assert len(tokenizer("spiculated").input_ids) > 3
    rng = np.random.default_rng(0)
    for lesion_type in BASE_TYPES:
        prompt = sample_prompt(lesion_type, "liver", 10.0, rng)
        assert any(phrase.split()[-1] in prompt for phrase in LESION_SPECS[lesion_type].phrases)


def test_training_pairs_are_engine_crops():
    pairs = make_training_pairs(40, seed=3, resolution=64, healthy_fraction=0.25)
    again = make_training_pairs(40, seed=3, resolution=64, healthy_fraction=0.25)
    assert np.array_equal(pairs.images, again.images)
    assert pairs.images.shape == (40, 64, 64) and pairs.masks.shape == (40, 64, 64)
    assert pairs.masks.reshape(40, -1).any(axis=1).all()
    assert np.abs(pairs.images.astype(np.float32)).max() <= 1.0
    assert (pairs.lesion_types == HEALTHY).any() and (pairs.lesion_types >= 0).any()
    # inside a cyst's mask the crop is near the cyst's windowed HU
    cyst = np.flatnonzero(pairs.lesion_types == BASE_TYPES.index(LesionType.CYST))
    inner = [pairs.images[i][ndimage.binary_erosion(pairs.masks[i])].astype(float) for i in cyst]
    inner = np.concatenate([v for v in inner if v.size])
    assert abs(inner.mean() - hu_to_model(LESION_SPECS[LesionType.CYST].hu)) < 0.12


def test_train_base_writes_a_loadable_model(tmp_path):
    """A two-step run of the real recipe: the folder loads through the engine like any model."""
    from medgen.generate.models import load_model
    from medgen.phantom.train_base import TrainSettings, train_base_model

    settings = TrainSettings(num_pairs=16, vae_steps=2, unet_steps=2, warmup_steps=1, vae_batch_size=4, unet_batch_size=4)
    out = train_base_model(tmp_path / "model", settings)
    model = load_model(out, device="cpu")
    assert model.resolution == 64 and model.in_channels == 9
    record = json.loads((out / "training.json").read_text())
    assert record["settings"]["unet_steps"] == 2
    assert (out / "tokenizer" / "vocab.json").is_file() and (out / "tokenizer" / "merges.txt").is_file()
