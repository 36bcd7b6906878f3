"""`medgen batch` in one process on a 12-row manifest of real DICOM (pydicom's CT, MR, enhanced MR and
enhanced CT) and a real NIfTI brain (mricron's ch2bet), with the tiny random-weight model (its output
is noise: these tests check the plumbing - folders, index, resume, failures).

`build_dataset`, `assert_same_outputs` (runs under --batch-invariant: the same bytes) and
`assert_close_outputs` (default batching: the same images within float rounding) are used by
test_batch_batched.py and test_batch_ray.py too.
"""

import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from testfiles import dicom_testfile, write_labelmap_like
from medgen.batch.index import read_index
from medgen.batch.run import run_batch
from medgen.cli import main
from medgen.imaging.read import read_volume

BRAIN_NIFTI = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
RUN_FIELDS = {"created_utc", "out"}
"""Provenance keys that name when and where a run wrote, not what it made."""
INDEX_RUN_FIELDS = {"timings", "attempts", "series_instance_uid", "sop_instance_uids", "seg_series_instance_uid"}
STORED_TOLERANCE = 1
"""Default batching runs the model's layers batched, so a row's model-space image moves by float
rounding (about 1e-6) with its batch size and thread count; where that moves a value across a rounding
boundary, a written stored value (or a preview's 8-bit value) differs by one."""


def disk_mask(volume, slices, radius=6):
    depth, rows, cols = volume.pixels.shape[:3]
    rr, cc = np.mgrid[:rows, :cols]
    mask = np.zeros((depth, rows, cols), np.uint8)
    for k in slices:
        mask[k] = (rr - rows // 2) ** 2 + (cc - cols // 2) ** 2 <= radius**2
    return mask


def build_dataset(folder: Path) -> Path:
    """12 rows on 4 real DICOM files and a real NIfTI volume; masks beside the manifest (relative paths)."""
    if not BRAIN_NIFTI.is_file():
        pytest.skip(f"{BRAIN_NIFTI} is not installed (Debian package mricron-data)")
    folder.mkdir(parents=True, exist_ok=True)
    sources = {
        "ct": (dicom_testfile("CT_small.dcm"), [0]),
        "mr": (dicom_testfile("MR_small.dcm"), [0]),
        "emr": (dicom_testfile("emri_small.dcm"), [3, 4]),
        "ect": (dicom_testfile("eCT_Supplemental.dcm"), [1]),
        "brain": (BRAIN_NIFTI, [90]),
    }
    for name, (path, slices) in sources.items():
        write_labelmap_like(read_volume(path), disk_mask(read_volume(path), slices), folder / f"{name}-mask.nii.gz")
    ct, mr, emr, ect, brain = (str(sources[n][0]) for n in ("ct", "mr", "emr", "ect", "brain"))
    # one step without classifier-free guidance (guidance 1): the plumbing, not the images, is under test
    lines = [
        "id,input,mask,prompt,slice,all-slices,variants,seed,steps,strength,negative-prompt,seg,dicom,guidance",
        f"ct-1,{ct},ct-mask.nii.gz,hypodense lesion,,,1,1,2,,,,,1",
        f"ct-2,{ct},ct-mask.nii.gz,hyperdense lesion,,,2,2,2,,,yes,,1",
        f",{ct},ct-mask.nii.gz,cyst,,,1,,2,,,,,1",  # no id, no seed: both derived from the row
        f"mr-1,{mr},mr-mask.nii.gz,bright lesion,,,1,4,2,,,,,1",
        f"mr-2,{mr},mr-mask.nii.gz,dark lesion,,,1,5,2,,artifact,,,1",
        f"mr-3,{mr},mr-mask.nii.gz,lesion,,,1,6,2,0.8,,,,1",
        f"emr-1,{emr},emr-mask.nii.gz,lesion,3 4,,1,7,2,,,,,1",
        f"emr-2,{emr},emr-mask.nii.gz,lesion,,yes,1,8,2,,,,,1",
        f"ect-1,{ect},ect-mask.nii.gz,lesion,1,,1,9,2,,,,,1",
        f"brain-1,{brain},brain-mask.nii.gz,lesion,90,,1,10,2,,,,,1",
        f"brain-2,{brain},brain-mask.nii.gz,lesion,90,,2,11,2,,,,,1",
        f"brain-3,{brain},brain-mask.nii.gz,lesion,90,,1,12,2,,,,yes,1",
    ]
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def without_run_fields(value):
    """A JSON value with the keys that say when and where it was written taken out, at any depth."""
    if isinstance(value, dict):
        return {k: without_run_fields(v) for k, v in value.items() if k not in RUN_FIELDS}
    if isinstance(value, list):
        return [without_run_fields(v) for v in value]
    return value


def dicom_content(dataset) -> list:
    """Every element, UIDs included (derived from content: the same row gives the same UIDs wherever it
    runs), except the creation dates/times, and the private provenance JSON without its run fields,
    recursively through sequences."""
    content = []
    for element in dataset:
        if element.VR in ("DA", "TM", "DT"):
            continue
        if element.VR == "SQ":
            content.append((element.tag, [dicom_content(item) for item in element.value]))
            continue
        value = element.value
        if isinstance(value, str) and value.startswith("{"):
            try:
                value = without_run_fields(json.loads(value))
            except json.JSONDecodeError:
                pass
        content.append((element.tag, value))
    return content


def assert_same_outputs(a: Path, b: Path) -> None:
    """Two batch output folders hold the same rows, files and index: NIfTI, PNG and JSON sidecars byte
    for byte (provenance less its run fields), DICOM pixel data byte for byte and every other
    attribute (UIDs included) except the creation dates/times."""
    files_a = sorted(p.relative_to(a) for p in (a / "rows").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in (b / "rows").rglob("*") if p.is_file())
    assert files_a == files_b
    for relative in files_a:
        if relative.suffix == ".dcm":
            ds_a, ds_b = pydicom.dcmread(a / relative), pydicom.dcmread(b / relative)
            assert ds_a.PixelData == ds_b.PixelData, relative
            assert dicom_content(ds_a) == dicom_content(ds_b), relative
        elif relative.name == "provenance.json":
            assert without_run_fields(json.loads((a / relative).read_text())) == without_run_fields(
                json.loads((b / relative).read_text())
            ), relative
        else:
            assert (a / relative).read_bytes() == (b / relative).read_bytes(), relative
    index_a, index_b = (
        [{k: v for k, v in json.loads(line).items() if k not in INDEX_RUN_FIELDS} for line in (d / "index.jsonl").open()]
        for d in (a, b)
    )
    assert index_a == index_b


def _image_array(path: Path) -> np.ndarray:
    """The pixels of an output image file, as written (stored values for DICOM)."""
    if path.suffix == ".dcm":
        return pydicom.dcmread(path).pixel_array
    if path.suffix == ".png":
        from PIL import Image

        return np.asarray(Image.open(path))
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def assert_close_outputs(a: Path, b: Path, tolerance: int = STORED_TOLERANCE) -> None:
    """Two batch output folders hold the same rows, files and settings, and every written image (DICOM,
    NIfTI, PNG preview) is the same within ``tolerance`` stored values per pixel: what default batching
    promises across batch sizes and between this process and Ray workers."""
    files_a = sorted(p.relative_to(a) for p in (a / "rows").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in (b / "rows").rglob("*") if p.is_file())
    assert files_a == files_b
    images = 0
    for relative in files_a:
        if relative.name == "provenance.json":
            settings_a, settings_b = (json.loads((d / relative).read_text()) for d in (a, b))
            assert settings_a.get("parameters") == settings_b.get("parameters"), relative
        elif relative.suffix in (".dcm", ".png") or relative.name.endswith((".nii.gz", ".nii", ".nrrd")):
            pixels_a, pixels_b = _image_array(a / relative), _image_array(b / relative)
            assert pixels_a.shape == pixels_b.shape, relative
            difference = np.abs(pixels_a.astype(np.int64) - pixels_b.astype(np.int64)).max()
            assert difference <= tolerance, f"{relative}: differs by {difference} stored values"
            images += 1
    assert images
    rows_a, rows_b = ([json.loads(line)["row_id"] for line in (d / "index.jsonl").open()] for d in (a, b))
    assert rows_a == rows_b


def assert_complete(out: Path, manifest_ids: list[str]) -> None:
    """Every row once in the index (in manifest order), one folder per row, no staging folder left."""
    lines = [json.loads(line) for line in (out / "index.jsonl").open()]
    ids_in_order = list(dict.fromkeys(line["row_id"] for line in lines))
    assert ids_in_order == manifest_ids
    pairs = [(line["row_id"], line["variant"]) for line in lines]
    assert len(pairs) == len(set(pairs)), "a row and variant is in the index twice"
    assert sorted(p.name for p in (out / "rows").iterdir()) == sorted(manifest_ids)
    for line in lines:
        assert all((out / f).is_file() for f in line["files"]), line["row_id"]


def file_states(folder: Path) -> dict:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("batch-data"))


@pytest.fixture(scope="module")
def local_run(dataset, tiny_model_dir, tmp_path_factory) -> Path:
    """The 12 rows through `medgen batch --batch-invariant` in this process (8 rows per model call): the
    bytes every batch size and every Ray run under --batch-invariant must give."""
    out = tmp_path_factory.mktemp("batch-local") / "out"
    assert main(["batch", str(dataset), "--out", str(out), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--batch-invariant"]) == 0
    return out


def manifest_ids(manifest: Path) -> list[str]:
    from medgen.batch.manifest import read_manifest

    return [row.id for row in read_manifest(manifest).rows]


def test_local_run_writes_every_row_and_an_index_line_per_variant(dataset, local_run):
    ids = manifest_ids(dataset)
    assert_complete(local_run, ids)
    lines = [json.loads(line) for line in (local_run / "index.jsonl").open()]
    assert len(lines) == 14  # 12 rows, two of them with 2 variants
    by_key = {(line["row_id"], line["variant"]): line for line in lines}
    ct2 = by_key[("ct-2", 2)]
    assert ct2["seed"] == 3 and ct2["prompt"] == "hyperdense lesion"  # variant v: seed + v
    assert ct2["series_dir"] == "rows/ct-2/variant-02" and ct2["seg_file"] == "rows/ct-2/variant-02-seg/SEG.dcm"
    series = [pydicom.dcmread(local_run / f) for f in ct2["files"] if f.endswith(".dcm")]
    assert [ds.SeriesInstanceUID for ds in series] == [ct2["series_instance_uid"]]
    assert [ds.SOPInstanceUID for ds in series] == ct2["sop_instance_uids"]
    assert pydicom.dcmread(local_run / ct2["seg_file"]).SeriesInstanceUID == ct2["seg_series_instance_uid"]
    provenance = json.loads((local_run / ct2["provenance"]).read_text())
    assert ct2["model_sha256"] == provenance["model"]["sha256"] and len(ct2["model_sha256"]) == 64
    assert ct2["timings"]["generate_s"] > 0 and ct2["timings"]["row_s"] >= ct2["timings"]["generate_s"]
    # NIfTI rows are written back as NIfTI (no UIDs), and as DICOM too on request
    brain1 = by_key[("brain-1", 1)]
    assert brain1["files"][-1].endswith("ch2bet.nii.gz") and brain1["series_instance_uid"] is None
    brain3 = by_key[("brain-3", 1)]
    assert brain3["series_instance_uid"] and any(f.endswith(".dcm") for f in brain3["files"])
    # the row without an id or a seed got both from its content
    hashed = next(line for line in lines if line["manifest_line"] == 4)
    assert len(hashed["row_id"]) == 16 and hashed["seed"] is not None
    assert (local_run / "failed.jsonl").read_text() == ""


def test_index_parquet_has_the_same_lines(local_run):
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(local_run / "index.parquet").to_pylist()
    lines = [json.loads(line) for line in (local_run / "index.jsonl").open()]
    assert [(r["row_id"], r["variant"], r["files"]) for r in table] == [
        (line["row_id"], line["variant"], line["files"]) for line in lines
    ]


def test_rerun_skips_finished_rows_and_rewrites_nothing(dataset, local_run, tiny_model_dir, capsys):
    before = file_states(local_run / "rows")
    index_before = (local_run / "index.jsonl").read_text()
    assert main(["batch", str(dataset), "--out", str(local_run), "--model", str(tiny_model_dir)]) == 0
    assert "0 made by this run, 12 finished before" in capsys.readouterr().out
    assert file_states(local_run / "rows") == before
    assert (local_run / "index.jsonl").read_text() == index_before  # timings of the first run kept


def test_a_changed_row_is_refused_and_force_makes_it_again(dataset, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    small = tmp_path / "manifest.csv"
    lines = dataset.read_text().splitlines()
    small.write_text("\n".join(lines[:3]) + "\n")
    for mask in ("ct-mask.nii.gz",):
        (tmp_path / mask).write_bytes((dataset.parent / mask).read_bytes())
    assert main(["batch", str(small), "--out", str(out), "--model", str(tiny_model_dir)]) == 0
    untouched = file_states(out / "rows" / "ct-1")
    small.write_text("\n".join([lines[0], lines[1], lines[2].replace("hyperdense lesion", "calcified lesion")]) + "\n")
    capsys.readouterr()
    assert main(["batch", str(small), "--out", str(out), "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{small}:3: id ct-2: prompt: 'hyperdense lesion' -> 'calcified lesion'" in err and "--force" in err
    assert main(["batch", str(small), "--out", str(out), "--model", str(tiny_model_dir), "--force"]) == 0
    assert "1 made by this run, 1 finished before" in capsys.readouterr().out
    prompts = {(e["row_id"], e["variant"]): e["prompt"] for e in map(json.loads, (out / "index.jsonl").open())}
    assert prompts == {("ct-1", 1): "hypodense lesion", ("ct-2", 1): "calcified lesion", ("ct-2", 2): "calcified lesion"}
    assert file_states(out / "rows" / "ct-1") == untouched
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".batch.lock"]


def test_failed_and_skipped_rows_are_listed_never_silent(dataset, tiny_model_dir, tmp_path, capsys):
    """A row whose mask is on another grid fails at work time (no retry: bad input fails the same way
    each time); a bad row is skipped on request; both are in failed.jsonl, the others run."""
    lines = dataset.read_text().splitlines()
    manifest = tmp_path / "manifest.csv"
    wrong_grid = lines[1].replace("ct-1,", "wrong-grid,").replace("ct-mask.nii.gz", "mr-mask.nii.gz")
    bad = lines[4].replace("mr-1,", "bad,").replace(",2,,,,", ",0,,,,")  # steps 0
    manifest.write_text("\n".join([lines[0], wrong_grid, bad, lines[4]]) + "\n")
    for mask in ("mr-mask.nii.gz",):
        (tmp_path / mask).write_bytes((dataset.parent / mask).read_bytes())
    out = tmp_path / "out"
    assert main(["batch", str(manifest), "--out", str(out), "--model", str(tiny_model_dir), "--skip-bad-rows"]) == 1
    captured = capsys.readouterr()
    assert f"failures: {out / 'failed.jsonl'}" in captured.out
    failures = {e["row_id"]: e for e in map(json.loads, (out / "failed.jsonl").open())}
    assert failures["bad"]["kind"] == "invalid" and failures["bad"]["manifest_line"] == 3
    assert "--steps must be at least 1, got 0" in failures["bad"]["error"]
    assert failures["wrong-grid"]["kind"] == "input" and failures["wrong-grid"]["attempts"] == 1
    assert "mr-mask.nii.gz" in failures["wrong-grid"]["error"]
    assert [e["row_id"] for e in map(json.loads, (out / "index.jsonl").open())] == ["mr-1"]
    assert sorted(p.name for p in (out / "rows").iterdir()) == ["mr-1"]


def test_python_api_reports_progress_and_rows(dataset, tiny_model_dir, tmp_path):
    import io

    manifest = tmp_path / "manifest.csv"
    lines = dataset.read_text().splitlines()
    manifest.write_text("\n".join([lines[0], lines[4], lines[5]]) + "\n")
    (tmp_path / "mr-mask.nii.gz").write_bytes((dataset.parent / "mr-mask.nii.gz").read_bytes())
    stream, seen = io.StringIO(), []
    summary = run_batch(manifest, tmp_path / "out", model=tiny_model_dir, progress_stream=stream,
                        progress_every_s=0, on_row=lambda row, outcome: seen.append((row.id, outcome.ok)))
    assert seen == [("mr-1", True), ("mr-2", True)]
    assert (summary.done, summary.failed, summary.rows, summary.workers_count) == (2, 0, 2, 1)
    progress = stream.getvalue().splitlines()
    assert progress[0].startswith("batch: 1/2 done, 0 failed, 1 left |") and "rows/min | ETA" in progress[0]
    assert progress[-1].startswith("batch: 2/2 done, 0 failed, 0 left")
    assert set(read_index(tmp_path / "out" / "index.jsonl")) == {"mr-1", "mr-2"}
    assert os.listdir(tmp_path / "out" / "rows") and summary.ok
