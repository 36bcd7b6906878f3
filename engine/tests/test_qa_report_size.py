"""The run report of a long run opens at once: a 300-slice, 4-variant run of 512 x 512 CT makes a report
of at most 50 MB, and the crop around the mask, where a reader judges the lesion, keeps every pixel.

The runs are `medgen bench report`'s: a 512 x 512 CT-like phantom with a mask on every slice. The
default tests write its variants directly (`--without-engine`: a darker lesion with fresh scanner noise
in the dilated mask, seconds); the slow test runs the engine's own `Inpainter.run` with a synthetic
lesion in place of the model's output (minutes). On the same phantom both cost the report the same
to within a few percent (3.5 kB per slice and variant).

Cost model. A report of S slices and V variants weighs about

    R * (S * V) / (20 * 2)  +  S * (a + V * b)

bytes: a is what one slice costs whatever the number of variants (the source's reduced full slice,
its crop, the mask outline, the slice's JSON), b what one variant adds on one slice (its crop, coded
as changes against the source's, and its JSON), both means over the 20 slices of the measured run
(whose mask sizes run through the same range as on 300 slices); R is everything else in the page
(template, figures, provenance), scaled as if it all grew with slices x variants (only the
provenance's texture figures do). The default test measures a, b and R on 20 slices x 2 variants and
requires the formula at S = 300, V = 4 to stay under 50 MB (measured: a = 72 kB, b = 3.5 kB,
R = 19 kB, so 26 MB); the slow test builds the 300 x 4 report itself and checks both the limit and
that the formula predicted it.
"""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from medgen.bench.report import REPORT_BUDGET_MB

SMALL = (20, 2)  # slices, variants of the default test
LARGE = (300, 4)  # the run


def _report_data(text: str) -> dict:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    return json.loads(match.group(1).replace("<\\/", "</"))


def _pixels(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def _values(data: dict, uri: str, reference: np.ndarray | None = None) -> np.ndarray:
    """The page's decoding (decodeValues) in numpy."""
    rgb = _pixels(uri)
    values = data["coding"]["offset"] + data["coding"]["scale"] * (rgb[..., 0].astype(float) * 256 + rgb[..., 1])
    if reference is not None:
        values = np.where(rgb[..., 2] == 255, reference, values)
    return values


def _json_bytes(value) -> int:
    return len(json.dumps(value).replace("</", "<\\/").encode("utf-8"))


def predicted_bytes(page: str, slices: int, variants: int) -> tuple[float, float, float, float]:
    """(prediction in bytes, a, b, R) of the cost model in the module docstring, measured on ``page``."""
    data = _report_data(page)
    per_variant = [
        _json_bytes(s["crops"][v + 1]) + _json_bytes(s["images"][v + 1]) + _json_bytes(s["diffs"][v])
        for s in data["slices"] for v in range(len(data["panels"]) - 1)
    ]
    entries = [_json_bytes(s) for s in data["slices"]]
    b = float(np.mean(per_variant))
    a = float(np.mean(entries)) - (len(data["panels"]) - 1) * b
    rest = len(page.encode("utf-8")) - sum(entries)
    measured_slices, measured_variants = len(data["slices"]), len(data["panels"]) - 1
    scaled_rest = rest * (slices * variants) / (measured_slices * measured_variants)
    return scaled_rest + slices * (a + variants * b), a, b, float(rest)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from medgen.bench.report import write_run_without_engine

    return write_run_without_engine(tmp_path_factory.mktemp("report-size"), *SMALL)


@pytest.fixture(scope="module")
def small_report(small_run):
    from medgen.qa.report import write_report

    return write_report(small_run, small_run.parent / "report.html")


def test_small_run_extrapolates_under_the_budget(small_report):
    page = small_report.read_text(encoding="utf-8")
    data = _report_data(page)
    assert [s["k"] for s in data["slices"]] == list(range(SMALL[0]))
    prediction, a, b, rest = predicted_bytes(page, *LARGE)
    print(f"\na = {a / 1e3:.1f} kB per slice, b = {b / 1e3:.1f} kB per slice and variant, R = {rest / 1e3:.1f} kB; "
          f"300 x 4 predicted {prediction / 1e6:.1f} MB")
    assert prediction < REPORT_BUDGET_MB * 1e6, (a, b, rest)
    # each part on its own keeps 300 x 4 under the budget (300 * (110 kB + 4 * 10 kB) = 45 MB); what a
    # variant adds is its changed pixels, not another slice (before: 350 kB, a whole slice each)
    assert a < 110e3 and b < 10e3 and rest < 100e3, (a, b, rest)


def test_crops_keep_every_pixel_and_the_full_slice_is_shared(small_run, small_report):
    from medgen.qa.images import block_mean, radiological_view
    from medgen.qa.run import load_run

    run = load_run(small_run)
    data = _report_data(small_report.read_text(encoding="utf-8"))
    view = radiological_view(run.source.ijk_to_lps)
    assert data["size"] == [512, 512] and data["scale"] == 2
    for s in data["slices"][::7]:
        k = s["k"]
        r0, r1, c0, c1 = s["crop"]
        source = view.apply(run.source.pixels[k].astype(float))
        assert view.apply(run.allowed[k])[r0:r1, c0:c1].sum() == run.allowed[k].sum()  # the crop holds every change
        # the crop: full resolution, the exact HU of the source and of each variant
        source_crop = _values(data, s["crops"][0])
        assert source_crop.shape == (r1 - r0, c1 - c0)
        np.testing.assert_array_equal(source_crop, source[r0:r1, c0:c1])
        for v, variant in enumerate(run.variants):
            expected = view.apply(variant.volume.pixels[k].astype(float))[r0:r1, c0:c1]
            np.testing.assert_array_equal(_values(data, s["crops"][v + 1], source_crop), expected)
            assert not np.array_equal(expected, source[r0:r1, c0:c1])  # the variant did change the crop
        # the full slice: once per slice, 256 x 256, each pixel the mean of 2 x 2 (rounded to whole HU)
        assert s["images"][1:] == [None] * len(run.variants)
        assert all(d["outside"] is None for d in s["diffs"])
        context = _values(data, s["images"][0])
        assert context.shape == (256, 256)
        assert np.abs(context - block_mean(source, 2)).max() <= 0.5
        # the outline is cropped with the crop
        assert _pixels(s["outline"]).shape[:2] == (r1 - r0, c1 - c0)


def test_a_change_outside_the_crop_gets_its_own_full_slice(small_run):
    """The engine never changes a pixel outside the dilated mask; a broken run that does is shown, not
    hidden behind the shared source slice."""
    from medgen.qa.report import build_report_html
    from medgen.qa.run import load_run

    run = load_run(small_run)
    run.variants[1].volume.pixels[3, 5:9, 5:9] += 300  # a corner of slice 3, far from the mask
    page = build_report_html(run)
    data = _report_data(page)
    for s in data["slices"]:
        assert s["images"][1] is None and s["diffs"][0]["outside"] is None
        assert (s["images"][2] is not None) == (s["k"] == 3)
        assert (s["diffs"][1]["outside"] is not None) == (s["k"] == 3)
    s = data["slices"][3]
    outside = _pixels(s["diffs"][1]["outside"])
    assert outside.shape[:2] == (512, 512) and outside[..., 0].sum() > 0 and outside[..., 2].sum() == 0  # brighter
    assert _values(data, s["images"][2]).shape == (256, 256)
    assert "(16 changed of" in page  # and the figures count the 16 pixels


def test_report_is_byte_identical_when_built_again(small_run, small_report):
    from medgen.qa.report import build_report_html
    from medgen.qa.run import load_run

    assert build_report_html(load_run(small_run)).encode("utf-8") == small_report.read_bytes()


def test_browser_decodes_the_crops_exactly(small_run, small_report):
    """Headless chromium decodes the lossless WebP crops to the same HU, draws the difference maps from
    them, and reads exact values under the pointer in the zoomed crop."""
    from qa_chromium import console_errors, quit_chromium, start_chromium

    from medgen.qa.images import radiological_view
    from medgen.qa.run import load_run

    driver = start_chromium()
    try:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(small_report.as_uri())
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.renderedSlice")
                                        == str(SMALL[0] // 2))
        run = load_run(small_run)
        view = radiological_view(run.source.ijk_to_lps)
        s = _report_data(small_report.read_text(encoding="utf-8"))["slices"][SMALL[0] // 2]
        r0, r1, c0, c1 = s["crop"]
        decoded = driver.execute_script(
            "const d = state.decoded[state.slice]; return [Array.from(d.crops[0].values), "
            "Array.from(d.crops[2].values), d.full[0].width];")
        np.testing.assert_array_equal(np.reshape(decoded[0], (r1 - r0, c1 - c0)),
                                      view.apply(run.source.pixels[s["k"]].astype(float))[r0:r1, c0:c1])
        np.testing.assert_array_equal(np.reshape(decoded[1], (r1 - r0, c1 - c0)),
                                      view.apply(run.variants[1].volume.pixels[s["k"]].astype(float))[r0:r1, c0:c1])
        assert decoded[2] == 256
        canvases = driver.find_elements(By.CSS_SELECTOR, ".view canvas")
        assert len(canvases) == 2 * (3 + 2)
        # the first difference map's crop is not black: the variant changed the lesion
        red_or_blue = driver.execute_script(
            "const c = arguments[0]; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] || d[i + 2]) n++; return n;", canvases[7])
        assert red_or_blue > 100
        # the value under the pointer in the source's zoomed crop is the source's HU there
        ActionChains(driver).move_to_element_with_offset(canvases[1], 0, 0).perform()
        probe = driver.find_element(By.ID, "probe").text
        match = re.fullmatch(r"source \((\d+), (\d+)\): (-?[\d.]+) HU", probe)
        assert match, probe
        row, col = int(match[1]), int(match[2])
        assert r0 <= row < r1 and c0 <= col < c1
        assert float(match[3]) == view.apply(run.source.pixels[s["k"]].astype(float))[row, col]
        assert console_errors(driver) == []
    finally:
        quit_chromium(driver)


def test_bench_report_command(tmp_path, capsys):
    """`medgen bench report` at toy size: it prints the size and time and writes them as JSON; again on
    the same run (--reuse-run) it writes the same bytes."""
    from medgen.cli import main

    arguments = ["bench", "report", "--without-engine", "--slices", "3", "--variants", "2", "--matrix", "128",
                 "--work-dir", str(tmp_path), "--json", str(tmp_path / "size.json")]
    assert main(arguments) == 0
    assert re.search(r"report: [\d.]+ MB in [\d.]+ s", capsys.readouterr().out)
    figures = json.loads((tmp_path / "size.json").read_text())
    first = (tmp_path / "report.html").read_bytes()
    assert figures["report_bytes"] == len(first) and (figures["slices"], figures["variants"]) == (3, 2)
    assert main(["bench", "report", "--reuse-run", "--work-dir", str(tmp_path)]) == 0
    assert "an earlier call's" in capsys.readouterr().out
    assert (tmp_path / "report.html").read_bytes() == first


@pytest.mark.slow
def test_300_slices_4_variants_report_is_under_the_budget(tmp_path, small_report):
    """`medgen bench report --slices 300 --variants 4`: about 10 minutes on two cores (writing the run
    through the engine most of it, the report about 1), 4 GB of memory at its peak."""
    from medgen.bench.report import measure

    result = measure(tmp_path, *LARGE)
    print(f"\n300 x 4: {result.megabytes:.1f} MB in {result.report_seconds:.1f} s")
    assert result.megabytes < REPORT_BUDGET_MB
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert len(_report_data(page)["slices"]) == LARGE[0]
    prediction, *_ = predicted_bytes(small_report.read_text(encoding="utf-8"), *LARGE)
    assert prediction == pytest.approx(result.report_bytes, rel=0.1)  # the default test's formula holds
