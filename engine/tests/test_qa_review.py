"""A three-reader blinded study end to end: phantom and real-scan cases, the real server process, real
clicks and key presses in headless Debian chromium, a kill -9 of the server in the middle, resume,
and the summary's figures checked against answers whose truth is known."""

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import requests

from medgen.server.process import free_port

from qa_chromium import console_errors, quit_chromium, save_screenshot, start_chromium
from testfiles import dicom_testfile, write_labelmap_like

READERS = ("ann", "bob", "cy")


@pytest.fixture(scope="module")
def study(tmp_path_factory, phantom_demo_run):
    """Real: a phantom CT lesion and pydicom's CT_small under a painted disc. Synthetic: two variants of the
    demo model's phantom run and one of a run on CT_small. Readers see 2 real + 2 synthetic each."""
    from medgen.api import Inpainter, InpaintRequest
    from medgen.imaging.read import read_volume
    from medgen.phantom.model import demo_model_path
    from medgen.qa.review.cases import add_real_case, add_run_cases
    from medgen.qa.review.store import Study

    work = tmp_path_factory.mktemp("review")
    demo = phantom_demo_run
    ct_small = dicom_testfile("CT_small.dcm")
    volume = read_volume(ct_small)
    rows, cols = np.mgrid[: volume.shape2d[0], : volume.shape2d[1]]
    disc = ((rows - 70) ** 2 + (cols - 60) ** 2 <= 8**2)[None]
    disc_path = write_labelmap_like(volume, disc, work / "disc.nii.gz")
    Inpainter(demo_model_path(), device="cpu")(InpaintRequest(
        input=ct_small, mask=disc_path, prompt="hypodense liver lesion, 2 cm", out=work / "ct-small-run",
        num_inference_steps=4, seed=7, window="soft_tissue"))
    folder = work / "study"
    s = Study(folder, create=True)
    phantom = demo.out.parent / "phantom"
    add_real_case(s, phantom / "ct", phantom / "lesion.seg.nrrd")
    add_real_case(s, ct_small, disc_path)
    add_run_cases(s, demo.out)
    add_run_cases(s, work / "ct-small-run")
    return {"folder": folder, "work": work, "ct_small": ct_small, "demo": demo.out}


def _start_server(folder, port, readers=None):
    command = [sys.executable, "-m", "medgen.cli", "review", "serve", "--cases", str(folder), "--port", str(port)]
    if readers:
        command += ["--readers", ",".join(readers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while True:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"server ended: {process.stderr.read()}")
        lines.append(line.strip())
        if line.startswith("serving"):
            break
    links = {m[1]: m[2] for m in (re.match(r"reader (\S+): (\S+)", l) for l in lines) if m}
    summary = next(l.split(": ", 1)[1] for l in lines if l.startswith("summary: "))
    return process, links, summary


def _kill(process) -> None:
    os.kill(process.pid, signal.SIGKILL)  # no chance to flush or close anything
    process.wait(timeout=10)


def _answer_for(reader: str, truth: str) -> tuple[str, str, str]:
    """(answer key, confidence key, realism key): ann is always right, bob always wrong, cy says synthetic."""
    other = {"real": "synthetic", "synthetic": "real"}
    answer = {"ann": truth, "bob": other[truth], "cy": "synthetic"}[reader]
    confidence = {"ann": "c", "bob": "p", "cy": "g"}[reader]
    realism = "5" if truth == "real" else "2"
    return answer[0], confidence, realism


def _answer_current(driver, truths, reader, *, clicks: bool, screenshot=None) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    key = driver.execute_script("return state.current.key")
    answer, confidence, realism = _answer_for(reader, truths[key][0])
    if clicks:
        names = {"r": "real", "s": "synthetic"}
        driver.find_element(By.CSS_SELECTOR, f'[data-answer="{names[answer]}"]').click()
        driver.find_element(By.CSS_SELECTOR, f'[data-confidence="{"gpc".index(confidence) + 1}"]').click()
        driver.find_element(By.CSS_SELECTOR, f'[data-realism="{realism}"]').click()
        if screenshot is not None:
            save_screenshot(driver, screenshot)
        driver.find_element(By.ID, "toggle-full").click()  # look at the whole slice once
        assert "/full/" in driver.find_element(By.ID, "case-image").get_attribute("src")
        driver.find_element(By.ID, "submit").click()
    else:
        ActionChains(driver).send_keys(answer, confidence, realism, "f", "\ue007").perform()  # \ue007: Enter


def _wait_position(driver, position) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.body.dataset.done === 'true' ? 'done' : document.body.dataset.position")
        == str(position))


def test_pages_and_image_urls_give_nothing_away(study):
    import pydicom

    from medgen.qa.review.store import Study

    s = Study(study["folder"])
    reader = s.add_reader("leak-check")
    port = free_port()
    process, links, _ = _start_server(study["folder"], port)
    try:
        link = links["leak-check"]
        texts = [requests.get(link, timeout=10).text]
        seen = set()
        for _ in range(4):
            nxt = requests.get(link + "/next", timeout=10).json()
            texts.append(json.dumps(nxt))
            seen.add(nxt["key"])
            for url in (nxt["crop"], nxt["full"]):
                image = requests.get(f"http://127.0.0.1:{port}{url}", timeout=10)
                assert image.headers["Content-Type"] == "image/png"
                assert not re.search(rb"(tEXt|iTXt|zTXt|eXIf)", image.content)  # no metadata chunks
                texts.append(url)
            requests.post(link + "/answer", json={"key": nxt["key"], "answer": "real", "confidence": 1, "realism": 3},
                          timeout=10).raise_for_status()
        assert requests.get(link + "/next", timeout=10).json()["done"] is True
        blob = "\n".join(texts).lower()
        ds = pydicom.dcmread(study["ct_small"])
        forbidden = ["ct_small", "variant", "phantom", "healthy", "demo", "run", "nii", "seg", "dcm", "slice",
                     str(ds.SOPInstanceUID).lower(), str(ds.SeriesInstanceUID).lower(), str(ds.PatientName).lower(),
                     str(study["work"]).lower(), str(study["demo"].parent).lower()]
        # the JSON and the URLs: no word at all beyond the keys (the reader's random token taken out first)
        payload = "\n".join(texts[1:]).replace(reader.token, "").lower()
        assert [w for w in forbidden if w in payload] == []
        page = texts[0].lower()
        assert [w for w in forbidden if w in page and w not in ("slice",)] == []  # "full slice" is a button
        # real and synthetic keys look alike: random hex of one length
        assert all(re.fullmatch(r"[0-9a-f]{16}", k) for k in seen)
        # another reader's token cannot fetch this reader's images, a made-up token gets nothing
        assert requests.get(f"http://127.0.0.1:{port}/r/not-a-real-token/next", timeout=10).status_code == 404
        assert len(seen) == 4 and reader.token in link
    finally:
        _kill(process)


def test_three_readers_in_chromium_with_a_server_kill_in_the_middle(study, tmp_path):
    from medgen.qa.review.store import Study

    folder = study["folder"]
    truths = Study(folder).case_info()
    port = free_port()
    process, links, summary_link = _start_server(folder, port, READERS)
    driver = start_chromium()
    try:
        # ann: two cases with clicks, one with keys, then the server dies with no warning
        driver.get(links["ann"])
        _wait_position(driver, 1)
        _answer_current(driver, truths, "ann", clicks=True)
        _wait_position(driver, 2)
        _answer_current(driver, truths, "ann", clicks=True, screenshot=tmp_path / "review.png")
        _wait_position(driver, 3)
        _answer_current(driver, truths, "ann", clicks=False)
        _wait_position(driver, 4)
        _kill(process)
        # the tab is closed; the server comes back on the same port; the link resumes at case 4
        driver.get("about:blank")
        process, links_again, _ = _start_server(folder, port)
        assert links_again == links
        driver.get(links["ann"])
        _wait_position(driver, 4)
        _answer_current(driver, truths, "ann", clicks=False)
        _wait_position(driver, "done")
        for reader in ("bob", "cy"):
            driver.get(links[reader])
            for position in range(1, 5):
                _wait_position(driver, position)
                _answer_current(driver, truths, reader, clicks=False)
            _wait_position(driver, "done")
        assert console_errors(driver) == []
        # a second answer to an answered case is refused, the first one stays
        answered_key = next(k for k in truths if Study(folder).is_assigned(Study(folder).reader_by_token(
            links["ann"].rsplit("/", 1)[1]), k))
        again = requests.post(links["ann"] + "/answer", timeout=10,
                              json={"key": answered_key, "answer": "real", "confidence": 1, "realism": 1})
        assert again.json() == {"stored": False}
        # the summary page, with its crops, as the study lead sees it
        driver.get(summary_link)
        assert "Reader study summary" in driver.title
        assert all(driver.execute_script("return Array.from(document.images).map(i => i.naturalWidth > 0)"))
        assert requests.get(summary_link.replace("token=", "token=x"), timeout=10).status_code == 403
    finally:
        quit_chromium(driver)
        _kill(process)

    # every answer stored exactly once, for exactly the assigned cases
    answers = [a for a in Study(folder).answers() if a.reader in READERS]
    assert len(answers) == 12 and len({(a.reader, a.case_key) for a in answers}) == 12
    assert all(a.realism == (5 if a.truth == "real" else 2) for a in answers)
    # the figures, from the command, against the truth the test answered with
    out = tmp_path / "summary"
    done = subprocess.run([sys.executable, "-m", "medgen.cli", "review", "summary", "--cases", str(folder),
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = {r["reader"]: r for r in json.loads((out / "summary.json").read_text())["readers"]}
    assert (rows["ann"]["accuracy"], rows["bob"]["accuracy"], rows["cy"]["accuracy"]) == (1.0, 0.0, 0.5)
    assert (rows["ann"]["auc"], rows["bob"]["auc"], rows["cy"]["auc"]) == (1.0, 0.0, 0.5)
    assert rows["ann"]["ci_low"] == pytest.approx(0.5101, abs=1e-3) and rows["ann"]["ci_high"] == 1.0  # Wilson 4/4
    assert rows["ann"]["realism_real"] == 5.0 and rows["ann"]["realism_synthetic"] == 2.0
    pooled_leak = rows["pooled"]  # the leak-check reader answered "real" 4 times: 2 right
    assert pooled_leak["answers"] == 16 and pooled_leak["correct"] == 4 + 0 + 2 + 2
    csv_lines = (out / "answers.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + 16
    html = (out / "summary.html").read_text()
    answered_synthetic = {a.case_key for a in Study(folder).answers() if a.truth == "synthetic"}
    assert html.count('<div class="case">') == len(answered_synthetic) >= 2  # each answered synthetic case


def test_review_command_errors_are_one_line_with_exit_2(tmp_path, capsys):
    from medgen.cli import main
    from medgen.qa.review.store import Study

    assert main(["review", "serve", "--cases", str(tmp_path / "none"), "--port", "0"]) == 2
    assert "study.sqlite" in capsys.readouterr().err
    ct_small = dicom_testfile("CT_small.dcm")
    study = tmp_path / "study"
    assert main(["review", "add-real", "--cases", str(study), str(ct_small), "--mask", str(tmp_path / "no.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no.nii.gz" in err
    assert Study(study).case_counts() == {"real": 0, "synthetic": 0}
    # a study of real cases only cannot be balanced: refused before serving
    from medgen.imaging.read import read_volume

    disc = np.zeros((1,) + read_volume(ct_small).shape2d, bool)
    disc[0, 60:70, 50:60] = True
    mask = write_labelmap_like(read_volume(ct_small), disc, tmp_path / "disc.nii.gz")
    assert main(["review", "add-real", "--cases", str(study), str(ct_small), "--mask", str(mask)]) == 0
    assert main(["review", "serve", "--cases", str(study), "--port", "0", "--readers", "ann"]) == 2
    assert "real and synthetic" in capsys.readouterr().err


def test_summary_statistics_on_known_answers():
    from medgen.qa.review.store import Answer
    from medgen.qa.review.summary import auc_from_scores, summarize, wilson_interval

    def answer(reader, key, truth, said, confidence, realism=3):
        return Answer(reader, key, truth, f"origin of {key}", said, confidence, realism, "2026-01-01T00:00:00+00:00")

    answers = [
        answer("a", "s1", "synthetic", "synthetic", 3), answer("a", "s2", "synthetic", "real", 1),
        answer("a", "r1", "real", "real", 1), answer("a", "r2", "real", "synthetic", 1),
    ]
    # scores: synthetic +3, -1; real -1, +1 -> pairs (3>-1), (3>1), (-1=-1: half), (-1<1) -> 2.5 of 4
    assert auc_from_scores(answers) == pytest.approx(0.625)
    low, high = wilson_interval(2, 4)
    assert (round(low, 4), round(high, 4)) == (0.1500, 0.8500)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    rows, easiest = summarize(answers)
    assert [r.reader for r in rows] == ["a", "pooled"] and rows[0].accuracy == 0.5
    assert [c.key for c in easiest] == ["s1", "s2"]  # s1 called synthetic with certainty
