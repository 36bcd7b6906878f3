"""`medgen report` on a real run of the shipped phantom model: the numbers, the embedded images, and the
page in headless Debian chromium (renders, scrolls, windows, no console error, no network)."""

import base64
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from qa_chromium import console_errors, quit_chromium, save_screenshot, start_chromium


@pytest.fixture(scope="module")
def phantom_run(phantom_demo_run):
    """`medgen demo`'s path at small size: a phantom CT twin inpainted under a cyst mask, 2 variants."""
    return phantom_demo_run


@pytest.fixture(scope="module")
def report_path(phantom_run):
    from medgen.qa.report import write_report

    return write_report(phantom_run.out)


def _report_data(path):
    text = path.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    return text, json.loads(match.group(1).replace("<\\/", "</"))


def test_report_figures_marks_and_lossless_slices(phantom_run, report_path):
    from medgen.imaging.intensity import modality_gray
    from medgen.qa.images import radiological_view
    from medgen.qa.run import load_run

    text, data = _report_data(report_path)
    run = load_run(phantom_run.out)
    # every inpainted slice, source + both variants
    assert [s["k"] for s in data["slices"]] == phantom_run.slices
    assert data["panels"] == ["source", "variant-01", "variant-02"]
    # outside-mask identity of the written series, and all synthetic marks found in all files
    assert text.count("100.0000% (0 changed of") == 2
    assert text.count("4 / 4") == 2 * 9 and "FAIL" not in text
    # the packed PNG gives back the HU of the source slice exactly (after the radiological flips)
    s = data["slices"][0]
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(s["images"][0].split(",", 1)[1]))).convert("RGB"))
    values = data["coding"]["offset"] + data["coding"]["scale"] * (rgb[..., 0].astype(float) * 256 + rgb[..., 1])
    expected = radiological_view(run.source.ijk_to_lps).apply(modality_gray(run.source, s["k"]))
    np.testing.assert_array_equal(values, expected)
    # the variants differ from the source under the mask, so the difference maps are not black
    assert all(d["limit"] > 1.0 for d in s["diffs"])
    # self-contained: nothing fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert "No training-crop index" in text


def test_report_renders_and_scrolls_in_chromium(report_path, tmp_path):
    driver = start_chromium()
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(report_path.as_uri())
        wait = WebDriverWait(driver, 20)
        wait.until(lambda d: d.execute_script("return document.body.dataset.renderedSlice") == "1")
        canvases = driver.find_elements(By.CSS_SELECTOR, ".view canvas")
        assert len(canvases) == 2 * (3 + 2)  # full + crop for source, 2 variants, 2 difference maps
        # the source canvas really holds the slice (not blank): many gray levels
        levels = driver.execute_script(
            "const c = arguments[0]; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "const s = new Set(); for (let i = 0; i < d.length; i += 4) s.add(d[i]); return s.size;", canvases[0])
        assert levels > 20
        # scroll with a real key press on the slider, then window with a real click
        slider = driver.find_element(By.ID, "slice")
        slider.click()
        before = driver.find_element(By.ID, "slice-label").text
        slider.send_keys(Keys.ARROW_RIGHT)
        wait.until(lambda d: d.find_element(By.ID, "slice-label").text != before)
        driver.execute_script("document.querySelectorAll('h2')[0].scrollIntoView()")
        save_screenshot(driver, tmp_path / "report.png")
        driver.find_element(By.CSS_SELECTOR, '#presets button[data-preset="lung"]').click()
        wait.until(lambda d: d.execute_script("return document.body.dataset.renderedPreset") == "lung")
        assert driver.find_element(By.ID, "slice-label").text.startswith("slice ")
        # the value under the pointer is the source's HU there (rows and columns of the displayed slice)
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(driver).move_to_element_with_offset(canvases[0], 0, 0).perform()  # the view's centre
        probe = driver.find_element(By.ID, "probe").text
        match = re.fullmatch(r"source \((\d+), (\d+)\): (-?[\d.]+) HU", probe)
        assert match, probe
        from medgen.imaging.intensity import modality_gray
        from medgen.qa.images import radiological_view
        from medgen.qa.run import load_run

        run = load_run(report_path.parent)
        k = run.slices[int(driver.find_element(By.ID, "slice").get_attribute("value"))]
        shown = radiological_view(run.source.ijk_to_lps).apply(modality_gray(run.source, k))
        assert float(match[3]) == pytest.approx(shown[int(match[1]), int(match[2])], abs=0.05)
        images = driver.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert all(images)
        assert console_errors(driver) == []
    finally:
        quit_chromium(driver)


def _generated_crop(run, variant, k):
    from medgen.imaging.crop import mask_crop_box, resize_image, resize_mask
    from medgen.imaging.intensity import IntensityMap

    box = mask_crop_box(run.mask[k], int(run.parameters["crop_padding_px"]))
    model_space = IntensityMap(variant.volume, run.window).to_model(k)
    lesion = resize_mask(run.mask[k][box.slices], (64, 64))
    return np.clip(resize_image(model_space[box.slices], (64, 64)), -1, 1), lesion


def test_memorization_check_flags_a_copied_crop_only(phantom_run, tmp_path):
    from medgen.imaging.crop_index import COPY_THRESHOLD, write_crop_index
    from medgen.qa.report import write_report
    from medgen.qa.run import load_run
    from medgen.train.data import phantom_lesion_crops

    run = load_run(phantom_run.out)
    crops = phantom_lesion_crops(24, prompt="cyst", seed=3)
    run_copy = tmp_path / "run"
    shutil.copytree(phantom_run.out, run_copy)
    provenance = json.loads((run_copy / "provenance.json").read_text())

    def report_with_index(images, masks, origins):
        adapter = tmp_path / f"adapter-{len(images)}"
        write_crop_index(adapter, images, masks, origins)
        provenance["adapters"] = [{"path": str(adapter), "kind": "lora", "sha256": "0" * 64}]
        (run_copy / "provenance.json").write_text(json.dumps(provenance))
        return write_report(run_copy, tmp_path / f"report-{len(images)}.html").read_text()

    unrelated = report_with_index(crops.images, crops.masks, crops.origins)
    similarities = [float(x) for x in re.findall(r"<td>([01]\.\d{3}) \(distinct\)", unrelated)]
    assert len(similarities) == 2 * len(run.slices) and max(similarities) < COPY_THRESHOLD
    assert "(possible copy)" not in unrelated and "<b>0</b> of 6" in unrelated
    # the same index plus one generated lesion itself: exactly that lesion is flagged, with similarity 1
    k = run.slices[1]
    copied, lesion = _generated_crop(run, run.variants[0], k)
    with_copy = report_with_index(np.concatenate([crops.images, copied[None]]),
                                  np.concatenate([crops.masks, lesion[None]]),
                                  crops.origins + [{"file": "copied.dcm", "slice": k, "crop_box": [0, 1, 0, 1]}])
    assert with_copy.count("(possible copy)") == 1
    assert re.search(r"<td>1\.000 \(possible copy\)</td><td>copied\.dcm, slice", with_copy)


def test_training_writes_its_crop_index(tmp_path):
    from medgen.imaging.crop_index import CropIndex
    from medgen.train.data import phantom_lesion_crops
    from medgen.train.loop import write_training_crop_index

    crops = phantom_lesion_crops(5, prompt="spiculated mass", seed=1)
    write_training_crop_index(tmp_path, crops)
    index = CropIndex.find(tmp_path)
    assert len(index.records) == 5 and index.embeddings.shape == (5, 1024) and index.thumbnails.shape == (5, 32, 32)
    assert index.records[0]["prompt"] == "spiculated mass"
    # each crop is its own nearest neighbour
    assert index.nearest(crops.images[3], crops.masks[3]) == (3, pytest.approx(1.0, abs=1e-5))


def test_report_command_errors_are_one_line_with_exit_2(tmp_path):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    done = subprocess.run([sys.executable, "-m", "medgen.cli", "report", str(not_a_run)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "provenance.json" in done.stderr
    assert not (not_a_run / "report.html").exists()


def test_trained_adapter_index_reaches_the_report_of_a_run_that_used_it(tmp_path, phantom_model_dir, capsys):
    """`medgen train` on a CSV (pydicom's CT_small under a painted disc) writes the crop index; a run with
    that adapter gets a memorization row naming the training file, slice and crop box."""
    from medgen.cli import main
    from medgen.imaging.read import read_volume
    from medgen.train.cli import train_main
    from testfiles import dicom_testfile, write_labelmap_like

    ct_small = dicom_testfile("CT_small.dcm")
    volume = read_volume(ct_small)
    rows, cols = np.mgrid[: volume.shape2d[0], : volume.shape2d[1]]
    mask = write_labelmap_like(volume, ((rows - 70) ** 2 + (cols - 60) ** 2 <= 8**2)[None], tmp_path / "disc.nii.gz")
    (tmp_path / "train.csv").write_text(f"image,mask,prompt\n{ct_small},{mask},<spiculated> mass\n")
    adapter = tmp_path / "ti"
    assert train_main(["textual-inversion", "--data", str(tmp_path / "train.csv"), "--steps", "1", "--batch-size", "1",
                       "--device", "cpu", "--out", str(adapter)]) == 0
    records = json.loads((adapter / "training-crops.json").read_text())["crops"]
    assert records == [{"file": str(ct_small), "slice": 0, "prompt": "<spiculated> mass",
                        "crop_box": records[0]["crop_box"]}] and len(records[0]["crop_box"]) == 4
    out = tmp_path / "run"
    assert main(["inpaint", str(ct_small), "--mask", str(mask), "--prompt", "<spiculated> mass", "--model",
                 str(phantom_model_dir), "--adapter", str(adapter), "--steps", "2", "--seed", "3", "--window",
                 "soft_tissue", "--device", "cpu", "--out", str(out), "--report"]) == 0
    page = (out / "report.html").read_text()
    assert "1 training crop(s) in 1 index(es)" in page
    assert re.search(r"<td>-?[01]\.\d{3} \((distinct|possible copy)\)</td><td>[^<]*CT_small\.dcm, slice 0, box \[",
                     page)


@pytest.mark.parametrize(
    "columns, rows, flips, edges",
    [
        ((1, 0, 0), (0, 1, 0), (False, False, False), "RLAP"),  # axial as most scanners store it
        ((-1, 0, 0), (0, 1, 0), (False, False, True), "RLAP"),  # columns run to the patient's right
        ((0, 1, 0), (1, 0, 0), (True, False, False), "RLAP"),  # rows and columns swapped
        ((1, 0, 0), (0, 0, -1), (False, False, False), "RLSI"),  # coronal
        ((0, 1, 0), (0, 0, 1), (False, True, False), "APSI"),  # sagittal stored feet first
    ],
)
def test_radiological_view(columns, rows, flips, edges):
    from medgen.qa.images import radiological_view

    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1] = columns, rows
    matrix[:3, 2] = np.cross(columns, rows)
    view = radiological_view(matrix)
    assert (view.transpose, view.flip_rows, view.flip_cols) == flips
    assert view.edges["left"] + view.edges["right"] + view.edges["top"] + view.edges["bottom"] == edges
    image = np.arange(6).reshape(2, 3)
    assert view.apply(image).shape == ((3, 2) if view.transpose else (2, 3))


def test_value_coding_is_exact_for_integers_and_fine_for_floats():
    from medgen.qa.images import ValueCoding

    def decode(coding, rgb):
        return coding.offset + coding.scale * (rgb[..., 0].astype(float) * 256 + rgb[..., 1])

    hu = np.array([[-1024, 0, 40], [3071, -3, 1000]], float)
    coding = ValueCoding.for_values([hu])
    np.testing.assert_array_equal(decode(coding, coding.encode(hu)), hu)
    unit = np.random.default_rng(0).random((8, 8))  # e.g. a normalised MR
    coding = ValueCoding.for_values([unit])
    assert np.abs(decode(coding, coding.encode(unit)) - unit).max() <= coding.scale / 2 + 1e-12 < 1e-5
