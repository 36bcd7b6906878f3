"""The label is what was drawn: the lesion traced from the pixels, not the request's mask.

On phantom truth (the scan with its lesion against its healthy twin) the traced lesion is the true
footprint; on the engine's output the SEG carries it as segment 1 beside the request's mask, the
provenance and the batch index give their Dice, and the figures recompute from the written files."""

import json

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from medgen.generate.drawn_label import dice, drawn_lesion_mask
from medgen.phantom.cases import make_case
from medgen.phantom.lesions import BASE_TYPES, largest_slice


@pytest.mark.parametrize("lesion_type", [t.value for t in BASE_TYPES])
def test_the_traced_lesion_of_a_real_phantom_lesion_is_its_true_footprint(lesion_type):
    scores = []
    for i in range(6):
        case = make_case((77, i), lesion_type, num_slices=4)
        k = largest_slice(case.lesion_mask)
        traced = drawn_lesion_mask(case.healthy_hu[k], case.hu[k], case.lesion_mask[k])
        scores.append(dice(traced, case.lesion_mask[k]))
    assert min(scores) >= 0.85, scores


def test_a_lesion_drawn_smaller_than_its_mask_is_labelled_as_drawn():
    case = make_case((77, 1), "hyperdense", num_slices=4)
    k = largest_slice(case.lesion_mask)
    drawn_truth = ndimage.binary_erosion(case.lesion_mask[k], iterations=1)  # a ring thinner
    output = case.healthy_hu[k].astype(np.float64)
    output[drawn_truth] += 120.0
    traced = drawn_lesion_mask(case.healthy_hu[k], output, case.lesion_mask[k])
    assert dice(traced, drawn_truth) > 0.9
    assert dice(traced, case.lesion_mask[k]) < 0.85  # the request's mask would have taught a wrong border


def test_nothing_drawn_beyond_the_noise_gives_an_empty_label():
    case = make_case((77, 2), "cyst", num_slices=4)
    k = largest_slice(case.lesion_mask)
    source = case.healthy_hu[k].astype(np.float64)
    assert not drawn_lesion_mask(source, source, case.lesion_mask[k]).any()
    rng = np.random.default_rng(0)
    noisy = source.copy()
    dilated = ndimage.binary_dilation(case.lesion_mask[k], iterations=4)
    noisy[dilated] += rng.normal(0.0, 1.0, int(dilated.sum()))  # new noise, far below the scan's own
    assert drawn_lesion_mask(source, noisy, case.lesion_mask[k]).sum() <= 2


def test_inpainted_seg_holds_the_drawn_lesion_and_the_request_mask(tmp_path, phantom_model_dir):
    from medgen.api import Inpainter, InpaintRequest, run_alone
    from medgen.imaging.intensity import modality_gray
    from medgen.imaging.read import read_volume
    from medgen.phantom.series import ct_datasets, write_datasets, write_seg_nrrd

    case = make_case((78, 0), "fat", num_slices=4)
    write_datasets(ct_datasets(case, case.healthy_hu, series_number=2, description="PHANTOM twin"), tmp_path / "ct")
    write_seg_nrrd(case, tmp_path / "lesion.seg.nrrd")
    result = run_alone(Inpainter(phantom_model_dir, device="cpu"), InpaintRequest(
        input=tmp_path / "ct", mask=tmp_path / "lesion.seg.nrrd", prompt="fat-containing lesion", out=tmp_path / "out",
        slices=case.lesion_slices, seed=3, num_inference_steps=4, write_seg=True, window="soft_tissue",
    ))
    provenance = json.loads(result.provenance_path.read_text())
    figures = provenance["label"][0]
    assert figures["requested_voxels"] == int(case.lesion_mask[case.lesion_slices].sum())
    assert 0 < figures["drawn_voxels"]

    seg = pydicom.dcmread(result.out / "variant-01-seg" / "SEG.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["fat-containing lesion",
                                                            "requested mask: fat-containing lesion"]
    per_segment = {int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber): 0
                   for item in seg.PerFrameFunctionalGroupsSequence}
    pixels = seg.pixel_array.reshape(len(seg.PerFrameFunctionalGroupsSequence), seg.Rows, seg.Columns)
    for item, frame in zip(seg.PerFrameFunctionalGroupsSequence, pixels):
        per_segment[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)] += int(frame.sum())
    assert per_segment[1] == figures["drawn_voxels"]
    assert per_segment[2] == figures["requested_voxels"]

    # the label recomputes from the files alone
    source, output = read_volume(tmp_path / "ct"), read_volume(result.out / "variant-01")
    traced = {k: drawn_lesion_mask(modality_gray(source, k), modality_gray(output, k), case.lesion_mask[k])
              for k in case.lesion_slices}
    recomputed = dice(np.stack([traced[k] for k in case.lesion_slices]), case.lesion_mask[case.lesion_slices])
    assert recomputed == pytest.approx(figures["dice_drawn_vs_requested"], abs=0.05)

    from medgen.dicom.dciodvfy import is_available, run_dciodvfy

    if is_available():
        assert not run_dciodvfy(result.out / "variant-01-seg" / "SEG.dcm").errors
