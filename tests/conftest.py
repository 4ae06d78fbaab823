"""Shared test setup: offline Hugging Face, deterministic torch, ``tests/`` importable."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Nothing in the test suite may reach the hub: set before transformers is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Let test modules ``import tiny_models`` (and other helpers living next to them).
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same torch RNG state."""
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """The using module's tests and module-scoped fixtures run torch on one intra-op thread; the
    previous setting is restored after the module, so nothing leaks into other tests.  On a
    shared 2-core machine the tiny models' ops are dominated by thread hand-offs (a 448×32
    mat-vec: ~8 ms with 2 contended threads, ~3 µs with one); this keeps the module fast.
    The determinism test also runs at the default setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    """The tiny random Llama of ``tiny_models`` saved as a model directory (for the CLI's
    ``--model`` and for subprocesses), once per using module."""
    from tiny_models import make_tiny_llm, save_llm

    return save_llm(make_tiny_llm("llama"), tmp_path_factory.mktemp("tiny-llama"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device; without one they are skipped, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run benchmarks/gpu_check.py on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
