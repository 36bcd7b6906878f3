"""A source the model's intensity contract does not cover is refused from the model folder's medgen.json,
before any weight loads: a folder whose weights are broken still gives the modality refusal."""

from __future__ import annotations

import json

import numpy as np

from testfiles import dicom_testfile, write_labelmap_like


def broken_ct_model(tmp_path):
    """A model folder whose medgen.json says CT and whose weights cannot load."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{ this is not json")
    (folder / "medgen.json").write_text(json.dumps(
        {"modality": "CT", "intensity": {"window": {"center": 40, "width": 400}}}))
    return folder


def mr_request(tmp_path):
    from medgen.imaging.read import read_volume

    source = dicom_testfile("MR_small.dcm")
    volume = read_volume(source)
    mask = np.zeros(volume.pixels.shape, np.uint8)
    mask[0, 30:36, 30:36] = 1
    return source, write_labelmap_like(volume, mask, tmp_path / "mask.nii.gz")


def test_mr_source_with_a_ct_model_is_refused_before_the_model_loads(tmp_path, capsys):
    from medgen.cli import main

    model = broken_ct_model(tmp_path)
    source, mask = mr_request(tmp_path)
    args = ["inpaint", str(source), "--mask", str(mask), "--prompt", "lesion", "--model", str(model),
            "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "MR" in err and "CT" in err and "--force-modality" in err, err
    assert "model_index" not in err and "load" not in err.lower(), err
    # forced past the contract, the same request meets the broken weights: the refusal came first
    main(args + ["--force-modality"])
    err = capsys.readouterr().err
    assert "--force-modality" not in err and str(model) in err, err
    assert not (tmp_path / "out").exists()
