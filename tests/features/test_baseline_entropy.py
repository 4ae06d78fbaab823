"""``baseline`` and ``entropy_dynamics`` against independent computations (FEATURES.md).

``baseline`` is checked against the model's *own* logits from a plain ``model(input_ids)``
forward pass in float64; ``entropy_dynamics`` against a straightforward numpy implementation of
its definition (FEATURES.md and the module docstring of ``entropy_dynamics.py``) on hand-made
entropy sequences.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from feature_helpers import ED_NAMES
from qa_records import length_records
from tiny_models import make_tiny_llm

from perturbprobe.features import EntropyDynamics, EntropyDynamicsConfig, extract

RECORDS = length_records("b")
AGGS = ("mean", "std", "min", "max", "first", "last")


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


# ---- baseline -----------------------------------------------------------------------------------
def _reference_baseline(llm, record):
    """Per-token {name: (T,)} from the model's own logits of one un-batched forward pass."""
    pair = llm.encode_pair(record.messages, record.response)
    prompt, response = list(pair.prompt_ids), list(pair.response_ids)
    with torch.no_grad():
        logits = llm.model(input_ids=torch.tensor([prompt + response])).logits[0]
    # Response token t (0-based) is predicted at position I + t − 1.
    z = logits[len(prompt) - 1 : len(prompt) + len(response) - 1].double().numpy()  # (T, V)
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    rows = np.arange(len(response))
    y = np.array(response)
    return {
        "log_prob": log_p[rows, y],
        "prob": p[rows, y],
        "entropy": -(p * log_p).sum(axis=1),
        "max_prob": p.max(axis=1),
        "is_argmax": (z.argmax(axis=1) == y).astype(float),
    }, response


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_baseline_matches_model_logits(arch):
    """gemma2: the model's logits are soft-capped; gpt2: no chat template (concatenation)."""
    llm = make_tiny_llm(arch)
    fs = extract(llm, RECORDS, families="baseline", batch_size=8, progress=False)
    token_names = ["log_prob", "prob", "entropy", "max_prob", "is_argmax"]
    assert fs.token_schema == [f"baseline/{name}" for name in token_names]
    response_names = ["seq_log_prob", "mean_log_prob", "min_log_prob", "n_tokens"]
    assert fs.schema == [f"baseline/{name}:{agg}" for name in token_names for agg in AGGS] + [
        f"baseline/{name}" for name in response_names
    ]
    saw_argmax = set()
    for record in RECORDS:
        ref, response = _reference_baseline(llm, record)
        tokens = fs.tokens[fs.tokens["record_id"] == record.id].sort_values("token_index")
        assert tokens["token_id"].tolist() == response
        for name in token_names:
            # float32 logits of size O(1..10) from a batched vs an un-batched pass: absolute
            # errors ~1e-6 in log-probabilities and entropies; 1e-5 leaves 10× headroom.
            np.testing.assert_allclose(
                tokens[f"baseline/{name}"], ref[name], rtol=1e-5, atol=1e-5, err_msg=name
            )
        saw_argmax |= set(ref["is_argmax"].tolist())
        row = fs.features[fs.features["record_id"] == record.id].iloc[0]
        T = len(response)
        expected = {
            "seq_log_prob": ref["log_prob"].sum(),
            "mean_log_prob": ref["log_prob"].mean(),
            "min_log_prob": ref["log_prob"].min(),
            "n_tokens": T,
        }
        for name, value in expected.items():
            # A sum of T ≤ 13 log-probabilities each off by ≲1e-6: ≤ T·1e-6 absolute.
            assert row[f"baseline/{name}"] == pytest.approx(value, rel=1e-5, abs=T * 2e-6), name
        assert row["baseline/n_tokens"] == T  # exact count
        for name in token_names:
            values = tokens[f"baseline/{name}"].to_numpy(np.float64)
            assert row[f"baseline/{name}:first"] == values[0]
            assert row[f"baseline/{name}:last"] == values[-1]
            assert row[f"baseline/{name}:min"] == values.min()
            assert row[f"baseline/{name}:max"] == values.max()
            # float32 vs float64 aggregation of ≤ 13 values: a few ulps of the largest one.
            scale = 1 + np.abs(values).max()
            assert abs(row[f"baseline/{name}:mean"] - values.mean()) <= 1e-6 * scale
            assert abs(row[f"baseline/{name}:std"] - values.std(ddof=0)) <= 1e-6 * scale
    assert 0.0 in saw_argmax  # a random model: most tokens are not its argmax


def test_baseline_mean_log_prob_is_length_normalised_and_negative_nll():
    llm = make_tiny_llm("llama")
    fs = extract(llm, RECORDS, families="baseline", progress=False)
    X = fs.features
    np.testing.assert_allclose(
        X["baseline/mean_log_prob"], X["baseline/seq_log_prob"] / X["baseline/n_tokens"], rtol=1e-6
    )
    np.testing.assert_allclose(
        X["baseline/mean_log_prob"], X["baseline/log_prob:mean"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(X["baseline/min_log_prob"], X["baseline/log_prob:min"])
    assert (X["baseline/seq_log_prob"] < 0).all()


# ---- entropy_dynamics ---------------------------------------------------------------------------
def reference_entropy_dynamics(entropy, z=3.0) -> np.ndarray:
    """FEATURES.md / module docstring, written out with numpy (the usual median: np.median)."""
    H = np.asarray(entropy, dtype=np.float64)
    T = len(H)
    t = np.arange(1, T + 1)
    median = np.median(H)
    mad = np.median(np.abs(H - median)) * 1.4826  # MAD scaled to σ
    threshold = median + z * mad
    spikes = threshold < H
    n_spikes = int(spikes.sum())
    if n_spikes:
        first = int(np.argmax(spikes)) + 1  # 1-based
        before, after = H[: first - 1], H[first - 1 :]
        pre = before.mean() if before.size else H.mean()
        post = after.mean()
    else:
        first, pre, post = T + 1, H.mean(), H.mean()  # no spike: T + 1 and 1 + 1/T
    early = H[: math.ceil(T / 4)].max()
    slope = np.polyfit(t, H, 1)[0] if T > 1 else 0.0
    return np.array(
        [H.max(), (np.argmax(H) + 1) / T, n_spikes, first, first / T, early, pre, post, slope]
    )


SEQUENCES = {
    "T=1": [0.7],
    "constant": [1.3] * 6,
    "clear spike": [0.2, 0.25, 0.22, 0.21, 3.0, 0.24, 0.2, 0.23, 0.22],
    "spike at t=1": [4.0, 0.5, 0.52, 0.49, 0.51, 0.5, 0.48],
    "two spikes": [0.3, 0.31, 0.29, 2.5, 0.3, 0.32, 0.28, 0.3, 3.1, 0.29, 0.31],
    "spike at the end": [1.0, 1.1, 0.9, 1.05, 0.95, 6.0, 1.0, 1.02, 0.98, 1.01, 9.0],
    "rising ramp (even T)": [0.1 * i for i in range(1, 9)],
    "falling, tied max": [2.0, 3.0, 1.0, 3.0, 0.5],
    "early max needs ceil(T/4)": [0.1, 0.9, 0.2, 0.3, 0.2],
    "zero entropies": [0.0, 0.0, 0.0, 0.0, 1.5, 0.0, 0.0],
}


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_entropy_dynamics_matches_numpy_reference(name):
    sequence = SEQUENCES[name]
    family = EntropyDynamics()
    assert family.response_features() == ED_NAMES
    got = family.sequence_features(torch.tensor(sequence, dtype=torch.float32))
    assert got.shape == (9,) and torch.isfinite(got).all()
    expected = reference_entropy_dynamics(np.float32(sequence))
    # float32 input and arithmetic on O(1) values: ~1e-7 relative; the slope is a ratio of
    # sums over ≤ 11 terms, absolute error ≲1e-6.
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=2e-6, err_msg=name)


def test_entropy_dynamics_spot_values():
    """A few values spelled out, so the reference itself is pinned to the definition."""
    family = EntropyDynamics()
    one = family.sequence_features(torch.tensor([0.7])).tolist()
    assert one[2] == 0 and one[3] == 2 and one[4] == pytest.approx(2.0)  # T+1, 1+1/T
    assert one[8] == 0.0 and one[1] == 1.0
    const = family.sequence_features(torch.tensor([1.3] * 6)).tolist()
    assert const[2] == 0 and const[3] == 7 and const[4] == pytest.approx(7 / 6)
    assert const[6] == pytest.approx(1.3) and const[7] == pytest.approx(1.3)
    assert const[8] == pytest.approx(0.0, abs=1e-7)
    spike = family.sequence_features(torch.tensor(SEQUENCES["clear spike"])).tolist()
    assert spike[2] == 1 and spike[3] == 5 and spike[4] == pytest.approx(5 / 9)
    assert spike[1] == pytest.approx(5 / 9) and spike[0] == pytest.approx(3.0)
    assert spike[6] == pytest.approx(np.mean([0.2, 0.25, 0.22, 0.21]), rel=1e-6)
    assert spike[7] == pytest.approx(np.mean([3.0, 0.24, 0.2, 0.23, 0.22]), rel=1e-6)
    first = family.sequence_features(torch.tensor(SEQUENCES["spike at t=1"])).tolist()
    mean = np.mean(SEQUENCES["spike at t=1"])
    assert first[2] == 1 and first[3] == 1 and first[4] == pytest.approx(1 / 7)
    assert first[6] == pytest.approx(mean, rel=1e-6)  # empty "before": the overall mean
    assert first[7] == pytest.approx(mean, rel=1e-6)
    early = family.sequence_features(torch.tensor(SEQUENCES["early max needs ceil(T/4)"]))
    assert early[5].item() == pytest.approx(0.9)  # ⌈5/4⌉ = 2 tokens, not ⌊5/4⌋ = 1


@pytest.mark.parametrize("z", [0.0, 0.5, 1.0])
def test_entropy_dynamics_threshold_z(z):
    sequence = [0.3, 0.5, 0.4, 0.9, 0.35, 0.6, 0.45, 1.2, 0.41]
    family = EntropyDynamics(EntropyDynamicsConfig(z=z))
    got = family.sequence_features(torch.tensor(sequence)).numpy()
    np.testing.assert_allclose(got, reference_entropy_dynamics(np.float32(sequence), z=z),
                               rtol=1e-5, atol=2e-6)  # fmt: skip
    # A lower threshold never finds fewer spikes.
    assert got[2] >= EntropyDynamics().sequence_features(torch.tensor(sequence))[2].item()


@pytest.mark.parametrize(
    "sequence",
    [[0.1, 0.9], [0.2, 0.2, 1.0, 1.0], [0.5, 0.6, 0.55, 2.0, 2.1, 1.9]],
    ids=["T=2", "T=4 two-level", "T=6 two-level"],
)
def test_entropy_dynamics_even_length_median(sequence):
    got = EntropyDynamics().sequence_features(torch.tensor(sequence)).numpy()
    expected = reference_entropy_dynamics(np.float32(sequence))
    assert expected[2] == 0  # with the usual median none of these tokens is an outlier
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-6)


def test_entropy_dynamics_config_is_validated():
    with pytest.raises(Exception, match="z"):
        EntropyDynamicsConfig(z=-1.0)


def test_entropy_dynamics_in_engine_uses_each_responses_own_entropies():
    """Wiring: the engine's response row equals sequence_features of that response's baseline
    entropy column (batched with padding, so each response must get exactly its own tokens)."""
    llm = make_tiny_llm("qwen2")
    fs = extract(llm, RECORDS, families="baseline,entropy_dynamics", batch_size=8, progress=False)
    assert [c for c in fs.schema if c.startswith("entropy_dynamics/")] == [
        f"entropy_dynamics/{name}" for name in ED_NAMES
    ]
    assert not any(c.startswith("entropy_dynamics/") for c in fs.token_schema)
    for record in RECORDS:
        tokens = fs.tokens[fs.tokens["record_id"] == record.id].sort_values("token_index")
        entropy = torch.tensor(tokens["baseline/entropy"].to_numpy())
        expected = EntropyDynamics().sequence_features(entropy).numpy()
        row = fs.features.loc[fs.features["record_id"] == record.id].iloc[0]
        got = row[[f"entropy_dynamics/{name}" for name in ED_NAMES]].to_numpy(np.float32)
        # Same float32 inputs, same code path: identical up to float32 reduction order.
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
        assert got[3] <= len(tokens) + 1
