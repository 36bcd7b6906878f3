"""Rows generated together in shared model calls against rows run one at a time, with the tiny
random-weight model (its output is noise: the tests are about bytes and rounding, not images) on the
12-row real DICOM and NIfTI manifest of test_batch.py. Ten of its rows share their call settings; one
has a negative prompt and one another strength, so they run in calls of their own.

Under --batch-invariant a row's files are the same bytes for every batch size and thread count; by
default (layers batched) its model-space image is the same within MODEL_TOLERANCE and its written
stored values within test_batch.STORED_TOLERANCE.
"""

import json

import pytest

from medgen.batch.local import batches
from medgen.batch.manifest import read_manifest
from medgen.cli import main
from test_batch import (  # noqa: F401
    assert_close_outputs, assert_complete, assert_same_outputs, dataset, disk_mask, local_run, manifest_ids,
)
from testfiles import dicom_testfile, write_labelmap_like

MODEL_TOLERANCE = 1e-4
"""Largest difference, in model space ([-1, 1]), between a crop generated batched by default and the
same crop alone (measured: below 1e-6)."""


def test_tiny_random_weight_batch_invariant_rows_batched_equal_rows_one_at_a_time(
    dataset, local_run, tiny_model_dir, tmp_path
):
    """local_run (--batch-invariant) uses the default batch size (8); this run takes each row alone."""
    out = tmp_path / "one-at-a-time"
    assert main(["batch", str(dataset), "--out", str(out), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--batch-size", "1", "--batch-invariant"]) == 0
    assert_complete(out, manifest_ids(dataset))
    assert_same_outputs(local_run, out)


def test_tiny_random_weight_rows_batched_by_default_equal_rows_one_at_a_time_within_rounding(
    dataset, tiny_model_dir, tmp_path
):
    """Default batching (layers batched, 8 rows per call) against each row alone: the same files, every
    written image within one stored value."""
    outs = {}
    for size in ("8", "1"):
        outs[size] = tmp_path / f"batch-{size}"
        assert main(["batch", str(dataset), "--out", str(outs[size]), "--model", str(tiny_model_dir), "--device",
                     "cpu", "--batch-size", size]) == 0
        assert_complete(outs[size], manifest_ids(dataset))
    assert_close_outputs(outs["8"], outs["1"])


def test_tiny_random_weight_shared_calls_stack_crops_of_several_rows(dataset, tiny_model_dir, tmp_path):
    """run_together puts the crops of several rows into one UNet call, and under batch_invariant each
    row's files equal the same row run alone (run_alone, also under batch_invariant)."""
    from medgen.api import Inpainter
    from medgen.api import run_alone, run_together

    rows = read_manifest(dataset).rows
    same_settings = [r for r in rows if r.id in ("ct-1", "ct-2", "mr-1", "brain-1", "emr-1")]
    inpainter = Inpainter(tiny_model_dir, device="cpu")
    unet_batches = []
    inpainter.model.pipe.unet.register_forward_pre_hook(lambda module, args: unet_batches.append(args[0].shape[0]))
    results = run_together(inpainter, [r.request(tmp_path / "together" / "rows" / r.id) for r in same_settings],
                           batch_invariant=True)
    # 1 + 2 variants + 1 + 2 slices + 1 = 7 crops in one call per step (guidance 1: no unconditional half)
    assert unet_batches == [7, 7]
    assert all(not isinstance(result, Exception) for result in results), results
    unet_batches.clear()
    for r in same_settings:
        run_alone(inpainter, r.request(tmp_path / "alone" / "rows" / r.id), batch_invariant=True)
    assert unet_batches == [1, 1, 2, 2, 1, 1, 2, 2, 1, 1]  # ct-1, ct-2, mr-1, emr-1, brain-1
    for r in same_settings:
        files = sorted(p.relative_to(tmp_path / "alone") for p in (tmp_path / "alone" / "rows" / r.id).rglob("*"))
        assert files and files == sorted(
            p.relative_to(tmp_path / "together") for p in (tmp_path / "together" / "rows" / r.id).rglob("*")
        )
        for relative in files:
            if relative.name == "provenance.json" or (tmp_path / "alone" / relative).is_dir():
                continue
            if relative.suffix == ".dcm":
                import pydicom

                a, b = pydicom.dcmread(tmp_path / "alone" / relative), pydicom.dcmread(tmp_path / "together" / relative)
                assert a.PixelData == b.PixelData and a.SOPInstanceUID == b.SOPInstanceUID, relative
            else:
                assert (tmp_path / "alone" / relative).read_bytes() == (tmp_path / "together" / relative).read_bytes()


def test_rows_are_grouped_by_call_settings_in_manifest_order(dataset):
    rows = read_manifest(dataset).rows
    groups = [[r.id for r in group] for group in batches(rows, 4)]
    assert groups[0] == ["ct-1", "ct-2", rows[2].id, "mr-1"]
    assert ["mr-2"] in groups and ["mr-3"] in groups  # a negative prompt, another strength: calls of their own
    assert sorted(r for g in groups for r in g) == sorted(r.id for r in rows)
    assert all(len(g) <= 4 for g in groups)
    assert [[r.id for r in g] for g in batches(rows, 1)] == [[r.id] for r in rows]


def test_batch_size_is_refused_with_ray_and_when_below_one(dataset, tiny_model_dir, tmp_path, capsys):
    assert main(["batch", str(dataset), "--out", str(tmp_path / "a"), "--model", str(tiny_model_dir),
                 "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1, got 0" in capsys.readouterr().err
    assert main(["batch", str(dataset), "--out", str(tmp_path / "b"), "--model", str(tiny_model_dir),
                 "--batch-size", "4", "--ray", "auto"]) == 2
    assert "--batch-size is for runs in this process" in capsys.readouterr().err


def test_index_records_the_shared_generation_time_per_row(local_run):
    lines = [json.loads(line) for line in (local_run / "index.jsonl").open()]
    assert all(line["timings"]["generate_s"] > 0 for line in lines)
    assert all(line["timings"]["row_s"] >= line["timings"]["generate_s"] for line in lines)


# one torch thread: on a busy 2-core machine two spinning threads make runs erratic (batch-invariant
# generations take one thread anyway); the thread-count test sets its own
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.usefixtures("one_torch_thread")]


def _works(inpainter, dataset, tmp_path, guidance):
    """The Generations of five rows (3 steps), with a prompt per variant (one a weighted blend) and a
    negative prompt (a call of its own)."""
    from dataclasses import replace

    rows = [r for r in read_manifest(dataset).rows if r.id in ("ct-1", "ct-2", "mr-1", "emr-1", "brain-2")]
    works = []
    for r in rows:
        steps = inpainter.steps(r.request(tmp_path / r.id))
        works.append(replace(next(steps), guidance_scale=guidance, num_inference_steps=3))
        steps.close()
    works[1] = replace(works[1], prompts=["[healthy liver:0.3|liver cyst:0.7]", "liver cyst"])
    works[4] = replace(works[4], negative_prompt="artifact")
    return [r.id for r in rows], works


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_tiny_random_weight_generated_crops_are_bit_identical_batched_or_alone_when_batch_invariant(
    dataset, tiny_model_dir, tmp_path, guidance
):
    """Before any rounding to stored values: the float32 crops of rows generated together equal those
    of each row alone, bit for bit (convolutions, linear layers and group norms would round
    differently per batch size without batch_invariant)."""
    from medgen.api import Inpainter
    from medgen.api import generate_alone
    from medgen.generate.batched import generate_together

    inpainter = Inpainter(tiny_model_dir, device="cpu")
    ids, works = _works(inpainter, dataset, tmp_path, guidance)
    together = generate_together(inpainter.model, works, invariant=True)
    alone = [generate_alone(inpainter, work, batch_invariant=True) for work in works]
    assert [a.shape for a in alone] == [(1, 1, 64, 64), (1, 2, 64, 64), (1, 1, 64, 64), (2, 1, 64, 64), (1, 2, 64, 64)]
    for row_id, a, b in zip(ids, alone, together):
        assert a.tobytes() == b.tobytes(), row_id


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_tiny_random_weight_generated_crops_batched_by_default_equal_alone_within_float_rounding(
    dataset, tiny_model_dir, tmp_path, guidance
):
    """Default batching: the float32 crops of rows generated together are those of each row alone
    within MODEL_TOLERANCE in model space, and the layers really ran batched (one UNet call per step
    for the rows of one call setting)."""
    import numpy as np

    from medgen.api import Inpainter
    from medgen.api import generate_alone
    from medgen.generate.batched import generate_together

    inpainter = Inpainter(tiny_model_dir, device="cpu")
    ids, works = _works(inpainter, dataset, tmp_path, guidance)
    conv_batches = []
    first_conv = inpainter.model.pipe.unet.conv_in
    hook = first_conv.register_forward_pre_hook(lambda module, args: conv_batches.append(args[0].shape[0]))
    together = generate_together(inpainter.model, works)
    hook.remove()
    # 1 + 2 + 1 + 2 + 2 variants and slices in 2 calls (the negative prompt apart), doubled with guidance
    pairs = 6 if guidance == 1.0 else 12
    assert max(conv_batches) == pairs, conv_batches
    alone = [generate_alone(inpainter, work) for work in works]
    for row_id, a, b in zip(ids, alone, together):
        assert a.shape == b.shape and np.abs(a - b).max() <= MODEL_TOLERANCE, (row_id, np.abs(a - b).max())


@pytest.mark.parametrize("invariant", [False, True], ids=["batched", "batch-invariant"])
def test_bench_batch_times_one_row_per_call_against_n_with_the_demo_model(tmp_path, capsys, invariant):
    """`medgen bench batch` on the shipped demo model (trained weights), 3 rows of one step, no Ray: both
    local runs in one command, their rows per minute and ratio printed and in --json; the rows' images
    the same within rounding (bytes under --batch-invariant)."""
    from medgen.bench.batch import main as bench_main

    figures_path = tmp_path / "figures.json"
    assert bench_main(["--rows", "3", "--steps", "1", "--no-ray", "--device", "cpu", "--batch-size", "3",
                       "--work-dir", str(tmp_path), "--json", str(figures_path)]
                      + (["--batch-invariant"] if invariant else [])) == 0
    table = capsys.readouterr().out
    assert "local, batch 3 / local, batch 1 rows per minute: " in table
    assert ("batch-invariant (layers crop by crop)" in table) == invariant
    figures = json.loads(figures_path.read_text())
    assert [r["path"] for r in figures["results"]] == ["plain loop", "local, batch 1", "local, batch 3"]
    assert figures["rows"] == 3 and figures["batch_size"] == 3 and figures["batch_invariant"] == invariant
    one, three = (r["rows_per_min"] for r in figures["results"][1:])
    assert (figures["rows_per_min_batch_1"], figures["rows_per_min_batch_n"]) == (one, three) and one > 0
    assert figures["ratio"] == pytest.approx(three / one)
    (assert_same_outputs if invariant else assert_close_outputs)(tmp_path / "local-1", tmp_path / "local-3")


def test_demo_model_ct_and_mr_rows_share_calls_by_adapter_set_each_prepared_once(dataset, tmp_path):
    """With the demo model an MR row carries the MR adapter and a CT row none: run_together gives each
    set its own shared call, prepares every row once, and (batch-invariant) writes what each row alone
    writes."""
    import dataclasses

    from medgen.api import Inpainter
    from medgen.api import run_alone, run_together
    from medgen.phantom.model import demo_model_path

    rows = {r.id: r for r in read_manifest(dataset).rows}
    chosen = [rows["ct-1"], rows["mr-1"], rows["ct-2"]]

    def requests(folder):
        return [dataclasses.replace(r.request(tmp_path / folder / "rows" / r.id), num_inference_steps=2)
                for r in chosen]

    inpainter = Inpainter(demo_model_path(), device="cpu")
    prepared = []
    steps = inpainter.steps
    inpainter.steps = lambda request: (prepared.append(request.input), steps(request))[1]
    unet_batches = []
    inpainter.model.pipe.unet.register_forward_pre_hook(lambda module, args: unet_batches.append(args[0].shape[0]))
    results = run_together(inpainter, requests("together"), batch_invariant=True)
    assert all(not isinstance(result, Exception) for result in results), results
    assert len(prepared) == 3  # no row read and cropped twice
    mr = json.loads((results[1].out / "provenance.json").read_text())
    assert mr["adapters"][0]["from_model_contract"] == "modalities/mr"
    assert not json.loads((results[0].out / "provenance.json").read_text()).get("adapters")
    inpainter.steps = steps
    alone = [run_alone(Inpainter(demo_model_path(), device="cpu"), request, batch_invariant=True)
             for request in requests("alone")]
    import pydicom

    for together_result, alone_result in zip(results, alone):
        for variant_dir in together_result.variant_dirs:
            files = sorted(variant_dir.rglob("*.dcm"))
            assert files
            for path in files:  # the same pixels and UIDs (creation times are the run's own)
                a, b = pydicom.dcmread(path), pydicom.dcmread(alone_result.out / variant_dir.name / path.name)
                assert a.PixelData == b.PixelData and a.SOPInstanceUID == b.SOPInstanceUID, path


def test_demo_model_mr2_j2kr_row_batch_invariant_is_the_same_bytes_on_one_torch_thread_or_two(tmp_path):
    """The row that differed between `medgen batch` here (torch's default: a thread per core) and a Ray
    worker (one thread): pydicom's MR2_J2KR (1024 x 1024, JPEG 2000), a centre disk, seed 13. oneDNN's
    convolutions round by thread count (about 4e-7 in model space), which now and then moves a stored
    value by one; under batch_invariant the model runs on one thread whatever the process's setting,
    so the generated crop is the same float32 bytes and so are the written pixels and UIDs."""
    import pydicom
    import torch

    from medgen.api import Inpainter, InpaintRequest, generate_alone
    from medgen.imaging.read import read_volume
    from medgen.phantom.model import demo_model_path

    source = dicom_testfile("MR2_J2KR.dcm")
    volume = read_volume(source)
    mask = write_labelmap_like(volume, disk_mask(volume, [0]), tmp_path / "mask.nii.gz")
    inpainter = Inpainter(demo_model_path(), device="cpu")
    generated, written = {}, {}
    before = torch.get_num_threads()
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)

            def generate(work, threads=threads):
                generated[threads] = generate_alone(inpainter, work, batch_invariant=True)
                return generated[threads]

            out = tmp_path / f"threads-{threads}"
            inpainter.run(InpaintRequest(input=source, mask=mask, prompt="lesion", seed=13, out=out), generate)
            assert torch.get_num_threads() == threads  # the process's own setting is given back
            written[threads] = pydicom.dcmread(next(out.rglob("*.dcm")))
    finally:
        torch.set_num_threads(before)
    assert generated[2].tobytes() == generated[1].tobytes()
    assert written[2].PixelData == written[1].PixelData and written[2].SOPInstanceUID == written[1].SOPInstanceUID
