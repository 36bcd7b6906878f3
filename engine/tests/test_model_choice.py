"""`--model` may be left out or say `demo` everywhere; a model that fails to load is named as itself."""

import numpy as np
import pytest
from PIL import Image

from medgen.api import Inpainter
from medgen.cli import main
from medgen.phantom.model import DEMO_MODEL_DIR, resolve_model_path


def test_nothing_or_demo_is_the_shipped_model_and_a_path_stays_a_path(tmp_path):
    assert resolve_model_path(None) == resolve_model_path("demo") == DEMO_MODEL_DIR
    assert Inpainter().model_path == Inpainter("demo").model_path == DEMO_MODEL_DIR
    assert resolve_model_path(tmp_path / "demo") == tmp_path / "demo"  # a folder that happens to be called demo


def test_serve_takes_demo_by_name_too():
    from medgen.server.main import parse_model_option

    assert parse_model_option("demo").path == DEMO_MODEL_DIR
    named = parse_model_option("phantom=demo")
    assert (named.name, named.path) == ("phantom", DEMO_MODEL_DIR)


def test_a_folder_that_is_not_a_model_is_named_not_its_medgen_json(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    yy, xx = np.mgrid[:128, :128]
    Image.fromarray((((yy - 64) ** 2 + (xx - 80) ** 2) < 100).astype(np.uint8) * 255).save(tmp_path / "disk.png")
    not_a_model = tmp_path / "weights"
    not_a_model.mkdir()
    (not_a_model / "model_index.json").write_text("{}")
    code = main(["inpaint", get_testdata_file("CT_small.dcm"), "--mask", str(tmp_path / "disk.png"),
                 "--prompt", "lesion", "--model", str(not_a_model), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and str(not_a_model) in error and "medgen.json" not in error, error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["bench", "quality"], ["train", "lora"], ["serve"], ["bench", "speed"]])
def test_every_model_option_mentions_demo_in_its_help(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert "demo" in capsys.readouterr().out
