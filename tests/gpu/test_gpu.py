"""On a CUDA device: features, generation and scoring agree with the CPU (tiny random Llama).

Skipped with a reason without a GPU (see conftest.py); ``benchmarks/gpu_check.py`` runs them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tiny_models import build_model, build_tokenizer

from perturbprobe.data import load_dataset
from perturbprobe.decoding import collect
from perturbprobe.features import extract
from perturbprobe.llm import LLM

pytestmark = pytest.mark.gpu

FAMILIES = "baseline,ccps,entropy_dynamics,sua,hidden_states,semantic_gradient"


def tiny(device: str) -> LLM:
    tokenizer = build_tokenizer("llama")
    return LLM(build_model("llama", tokenizer).to(device), tokenizer, name="tiny-llama")


@pytest.fixture(scope="module")
def records():
    return collect(None, load_dataset("builtin:easy-qa", limit=6), source="gold")


def test_features_on_cuda_match_the_cpu(records):
    """Every family but the random-sample ones, float32 on both: agree to float32 noise."""
    cpu = extract(tiny("cpu"), records, families=FAMILIES, progress=False)
    cuda = extract(tiny("cuda"), records, families=FAMILIES, progress=False)
    pd.testing.assert_frame_equal(
        cuda.features, cpu.features, check_exact=False, rtol=1e-3, atol=1e-4
    )
    for name in cpu.blocks:
        np.testing.assert_allclose(cuda.blocks[name], cpu.blocks[name], rtol=1e-3, atol=1e-4)


def test_greedy_answers_on_cuda_match_the_cpu():
    examples = load_dataset("builtin:easy-qa", limit=6)
    answers = [
        [r.response for r in collect(tiny(device), examples, max_new_tokens=8, progress=False)]
        for device in ("cpu", "cuda")
    ]
    assert answers[0] == answers[1]
