"""Shared fixtures: tiny random-weight models built once per test run, and the shipped phantom model."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight 9-channel SD inpainting model (its output is noise; for plumbing)."""
    from medgen.generate.tiny import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("models") / "tiny-inpaint", kind="inpaint", seed=0)


@pytest.fixture(scope="session")
def tiny_base_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight 4-channel (base, non-inpainting) SD model."""
    from medgen.generate.tiny import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("models") / "tiny-base", kind="base", seed=0)


@pytest.fixture(scope="session")
def phantom_model_dir() -> Path:
    """The phantom demo model shipped in the package (trained; small enough for CPU tests)."""
    from medgen.phantom.model import demo_model_path

    return demo_model_path()


@pytest.fixture(scope="session")
def phantom_demo_run(tmp_path_factory):
    """`medgen demo` at small size (4 slices, 2 variants, 4 steps): one finished run that the QA report and
    reader-study tests read (its phantom case is beside it, in out.parent / "phantom")."""
    from medgen.phantom.commands import run_demo

    return run_demo(tmp_path_factory.mktemp("demo-run") / "demo", device="cpu", num_slices=4, num_variants=2,
                    num_inference_steps=4)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine spinning OpenMP threads make timings erratic and
    training steps slow."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
