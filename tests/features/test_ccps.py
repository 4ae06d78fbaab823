"""The ``ccps`` family against an independent, naive reference (FEATURES.md, ``ccps``).

The reference below is written the way the public CCPS code computes its features: for every
response token it runs a *prefix* forward pass of the model itself, takes the final hidden
state h (``hidden_states[-1]`` at the last position) and the model's own logits there, gets the
Jacobian by autograd through the model's own LM-head module (plus Gemma-2's soft-capping taken
from the model config), and evaluates the head S times explicitly at h + r_k·u.  Everything after
the forward pass is done in float64 with explicit formulas (no perturbprobe code: not its Head,
not its distribution helpers).  It departs from the CCPS code only where FEATURES.md does on
purpose: exact entropy, the true JS divergence, and a finite no-flip value R·(S+1)/S.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from feature_helpers import ccps_on_tensors
from qa_records import length_records
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import entropy as scipy_entropy
from tiny_models import make_tiny_llm

from perturbprobe._numerics import FLOAT32_NOISE
from perturbprobe.data import Record
from perturbprobe.features import CCPS, CCPSConfig, extract
from perturbprobe.features.distributions import (
    entropy_from_log_probs,
    js_divergence,
    kl_divergence,
)
from perturbprobe.llm import Head

# (arch, radius R, steps S).  The default R = 20 is sized for real LLMs whose final hidden
# states have norms in the hundreds; the tiny models' hidden states have norm √32 ≈ 5.7 and
# Jacobian norms ≈ 0.5, so at R = 20 nearly every token flips.  These radii were chosen so that
# roughly half of the tokens flip within the trajectory and half do not (asserted below), which
# exercises ``epsilon_to_flip`` in both regimes.  qwen2 uses S = 4 so that S is not hard-wired.
# Gemma-2's soft-capped head saturates (|z| ≤ 5), so it needs a larger radius to flip.
CASES = [("llama", 2.0, 5), ("qwen2", 2.5, 4), ("gemma2", 8.0, 5)]

ORIGINAL = [
    "orig_log_prob_actual",
    "orig_prob_actual",
    "orig_logit_actual",
    "orig_prob_argmax",
    "orig_logit_argmax",
    "orig_entropy",
    "orig_margin_logit_top1_top2",
    "orig_margin_prob_top1_top2",
    "orig_norm_logits_l2",
    "orig_std_logits",
    "orig_norm_hidden_l2",
    "is_actual_token_orig_argmax",
]
METRICS = (  # noqa: SIM905
    "log_prob_actual prob_actual logit_actual delta_log_prob_actual prob_argmax logit_argmax "
    "argmax_changed entropy margin_logit_top1_top2 norm_logits_l2 kl_div js_div cos_sim_logits "
    "cos_sim_hidden l2_dist_hidden"
).split()
EXPECTED_COLUMNS = (
    ORIGINAL
    + ["jacobian_norm", "epsilon_to_flip", "flipped", "pei"]
    + [f"{m}_{s}" for m in METRICS for s in ("min", "max", "mean", "std")]
)

# Tolerances of the comparison with the float64 reference.  perturbprobe works in float32
# (unit roundoff 6e-8) from a batched teacher-forced pass, the reference in float64 from prefix
# passes; the hidden states of the two passes agree to ~1e-6.  Logits of the tiny models are
# O(1..10) and entropies ≈ ln 448 ≈ 6, so every log-probability, logit, KL or entropy carries an
# absolute float32 error of a few ulps of those intermediates, independent of the value's own
# size; KL and JS are differences of such O(6) sums (Σ p log p − Σ p log p_k), which is where
# the largest measured errors are (≤ 7e-6 absolute, at KL ≈ 1e-3..1).  The contract's 1e-4
# relative tolerance therefore applies with an absolute floor ATOL = 2e-5: ~3× the worst
# measured error, and far below the scale of every feature that is not near zero (the smallest
# KL/JS values are ≥ 2e-4, radii ≥ 0.4).  Values that are genuinely near zero (std of a
# near-constant trajectory metric, 1 − cos) are where the relative test is meaningless and the
# floor takes over.
RTOL = 1e-4
ATOL = 2e-5


# Three short records of different lengths (qa_records.LENGTH_QA).
RECORDS = length_records("r")


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


# ---- the naive reference ------------------------------------------------------------------------
def _log_softmax64(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max()
    return shifted - np.log(np.exp(shifted).sum())


def _distribution_stats(z: np.ndarray, y: int) -> dict[str, float]:
    """Explicit float64 statistics of one logit vector (V,)."""
    log_p = _log_softmax64(z)
    p = np.exp(log_p)
    order = np.argsort(-z, kind="stable")
    top1, top2 = order[0], order[1]
    return {
        "log_p": log_p,
        "p": p,
        "argmax": int(top1),
        "log_prob_actual": log_p[y],
        "prob_actual": p[y],
        "logit_actual": z[y],
        "prob_argmax": p[top1],
        "logit_argmax": z[top1],
        "entropy": -np.sum(p * log_p),
        "margin_logit_top1_top2": z[top1] - z[top2],
        "margin_prob_top1_top2": p[top1] - p[top2],
        "norm_logits_l2": np.sqrt(np.sum(z * z)),
    }


def _kl64(p, log_p, log_q) -> float:
    return float(np.sum(p * (log_p - log_q)))


def _js64(p, q) -> float:
    m = 0.5 * (p + q)  # float64; rel_entr(0, m) = 0 handles probabilities that underflow
    return 0.5 * rel_entr(p, m).sum() + 0.5 * rel_entr(q, m).sum()


def _cos64(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class _ModelHead:
    """The model's own LM-head module in float64, with Gemma-2 soft-capping from the config."""

    def __init__(self, llm):
        self.linear = copy.deepcopy(llm.model.get_output_embeddings()).to(torch.float64)
        assert isinstance(self.linear, torch.nn.Linear)
        self.softcap = getattr(llm.model.config, "final_logit_softcapping", None)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        z = self.linear(h)
        if self.softcap:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z


def naive_ccps(llm, record: Record, radius: float, steps: int):
    """Per-token reference features {name: (T,)} and the response ids, CCPS-reference style."""
    pair = llm.encode_pair(record.messages, record.response)
    prompt, response = list(pair.prompt_ids), list(pair.response_ids)
    head = _ModelHead(llm)
    rows = []
    for t, y in enumerate(response):
        with torch.no_grad():
            out = llm.model(
                input_ids=torch.tensor([prompt + response[:t]]), output_hidden_states=True
            )
        h = out.hidden_states[-1][0, -1].double()
        model_logits = out.logits[0, -1].double()
        with torch.no_grad():
            # The model's logits are its head applied to h: float32 model vs float64 head.
            torch.testing.assert_close(head(h), model_logits, rtol=0, atol=1e-5)
        rows.append(reference_token(head, h, model_logits.numpy(), y, radius, steps))
    return {key: np.array([row[key] for row in rows]) for key in rows[0]}, response


def reference_token(head, h: torch.Tensor, z: np.ndarray, y: int, radius: float, steps: int):
    """All 76 features of one token in float64: ``head`` a float64 torch function of h (D,),
    ``z`` the original logits (V,) to use for the original-state features."""
    radii = np.arange(1, steps + 1) * (radius / steps)
    h = h.detach().clone().requires_grad_(True)
    nll = -torch.log_softmax(head(h), dim=-1)[y]
    (gradient,) = torch.autograd.grad(nll, h)
    h = h.detach().numpy()
    g = gradient.numpy()
    g_norm = np.linalg.norm(g)
    u = g / g_norm if g_norm > 1e-9 else np.zeros_like(g)

    orig = _distribution_stats(z, y)
    row = {f"orig_{key}": orig[key] for key in (
        "log_prob_actual", "prob_actual", "logit_actual", "prob_argmax", "logit_argmax",
        "entropy", "margin_logit_top1_top2", "margin_prob_top1_top2", "norm_logits_l2",
    )}  # fmt: skip
    row["orig_std_logits"] = np.std(z, ddof=1)
    row["orig_norm_hidden_l2"] = np.linalg.norm(h)
    row["is_actual_token_orig_argmax"] = float(orig["argmax"] == y)
    row["jacobian_norm"] = g_norm

    per_step = {metric: [] for metric in METRICS}
    for r in radii:
        h_k = h + r * u
        with torch.no_grad():
            z_k = head(torch.from_numpy(h_k)).numpy()  # one explicit head evaluation
        step = _distribution_stats(z_k, y)
        for key in (
            "log_prob_actual", "prob_actual", "logit_actual", "prob_argmax", "logit_argmax",
            "entropy", "margin_logit_top1_top2", "norm_logits_l2",
        ):  # fmt: skip
            per_step[key].append(step[key])
        per_step["delta_log_prob_actual"].append(orig["log_prob_actual"] - step["log_prob_actual"])
        per_step["argmax_changed"].append(float(step["argmax"] != orig["argmax"]))
        per_step["kl_div"].append(_kl64(orig["p"], orig["log_p"], step["log_p"]))
        per_step["js_div"].append(_js64(orig["p"], step["p"]))
        per_step["cos_sim_logits"].append(_cos64(z, z_k))
        per_step["cos_sim_hidden"].append(_cos64(h, h_k))
        per_step["l2_dist_hidden"].append(np.linalg.norm(h_k - h))

    changed = per_step["argmax_changed"]
    flip_steps = [k for k, c in enumerate(changed) if c]
    row["flipped"] = float(bool(flip_steps))
    row["epsilon_to_flip"] = radii[flip_steps[0]] if flip_steps else radius * (steps + 1) / steps
    f = [0.0] + [max(0.0, d) for d in per_step["delta_log_prob_actual"]]
    row["pei"] = sum((f[k] + f[k + 1]) / 2 for k in range(steps)) / steps
    for metric, values in per_step.items():
        values = np.asarray(values)
        row[f"{metric}_min"] = values.min()
        row[f"{metric}_max"] = values.max()
        row[f"{metric}_mean"] = values.mean()
        row[f"{metric}_std"] = values.std(ddof=0)
    return row


@pytest.fixture(scope="module")
def extracted():
    """{arch: (llm, FeatureSet, {record_id: (reference, response ids)}, R, S)}, built lazily."""
    cache = {}

    def get(arch):
        if arch not in cache:
            _, radius, steps = next(case for case in CASES if case[0] == arch)
            llm = make_tiny_llm(arch)
            fs = extract(
                llm,
                RECORDS,
                families="ccps",
                overrides=[f"ccps.radius={radius}", f"ccps.steps={steps}"],
                batch_size=8,
                progress=False,
            )
            refs = {rec.id: naive_ccps(llm, rec, radius, steps) for rec in RECORDS}
            cache[arch] = (llm, fs, refs, radius, steps)
        return cache[arch]

    return get


def _close(actual, expected, rtol=RTOL, atol=ATOL):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return np.abs(actual - expected) <= atol + rtol * np.abs(expected)


# ---- per-token features vs the reference ------------------------------------------------------
def test_token_schema_is_the_76_documented_columns():
    assert CCPS().token_features() == EXPECTED_COLUMNS
    assert len(EXPECTED_COLUMNS) == 76


@pytest.mark.parametrize("arch", [case[0] for case in CASES])
def test_every_token_feature_matches_naive_prefix_reference(extracted, arch):
    _, fs, refs, _, _ = extracted(arch)
    assert fs.token_schema == [f"ccps/{name}" for name in EXPECTED_COLUMNS]
    failures = []
    for record in RECORDS:
        ref, response = refs[record.id]
        rows = fs.tokens[fs.tokens["record_id"] == record.id].sort_values("token_index")
        assert rows["token_id"].tolist() == response
        assert rows["token_index"].tolist() == list(range(len(response)))
        for name in EXPECTED_COLUMNS:
            actual = rows[f"ccps/{name}"].to_numpy()
            ok = _close(actual, ref[name])
            if "entropy" in name:
                # Entropies (≈ ln V ≈ 6 nats here) must also be exact in absolute terms: the
                # CCPS reference's −Σ p log(p + 1e-6) is off by ≈ V·1e-6 ≈ 4.5e-4 nats, which a
                # 1e-4 relative tolerance (6e-4) would let through.  Measured float32 error: 2e-6.
                ok &= _close(actual, ref[name], rtol=0.0)
            if not ok.all():
                bad = int(np.argmin(ok))
                failures.append(
                    f"{record.id} t={bad} {name}: got {actual[bad]!r}, reference {ref[name][bad]!r}"
                )
    assert not failures, f"{arch}: {len(failures)} mismatches:\n" + "\n".join(failures[:20])


@pytest.mark.parametrize("arch", [case[0] for case in CASES])
def test_both_flip_regimes_occur_and_epsilon_is_right(extracted, arch):
    """The radius puts some tokens inside and some outside the flip radius, so
    ``epsilon_to_flip`` is tested both as a radius r_k and as the no-flip value R·(S+1)/S."""
    _, fs, refs, radius, steps = extracted(arch)
    flipped = fs.tokens["ccps/flipped"].to_numpy()
    epsilon = fs.tokens["ccps/epsilon_to_flip"].to_numpy()
    assert 0 < flipped.sum() < len(flipped), f"{arch}: all or no tokens flip at R={radius}"
    no_flip = radius * (steps + 1) / steps
    np.testing.assert_allclose(epsilon[flipped == 0], no_flip, rtol=1e-6)
    radii = np.arange(1, steps + 1) * radius / steps
    # A flip happens at one of the radii (float32 r_k: rtol 1e-6).
    assert all(np.isclose(radii, e, rtol=1e-6).any() for e in epsilon[flipped == 1])
    # More than one distinct flip radius, so "the smallest r_k" is actually exercised.
    assert len(np.unique(np.round(epsilon[flipped == 1], 4))) >= 2
    # The reference agrees on which tokens flip (exact: flags are 0/1).
    reference = np.concatenate([refs[rec.id][0]["flipped"] for rec in RECORDS])
    np.testing.assert_array_equal(flipped, reference)


@pytest.mark.parametrize("arch", [case[0] for case in CASES])
def test_response_aggregates_match_numpy_on_token_table(extracted, arch):
    _, fs, _, _, _ = extracted(arch)
    aggs = {
        "mean": np.mean,
        "std": lambda v: np.std(v, ddof=0),
        "min": np.min,
        "max": np.max,
        "first": lambda v: v[0],
        "last": lambda v: v[-1],
    }
    assert fs.schema == [f"{col}:{agg}" for col in fs.token_schema for agg in aggs]
    for record in RECORDS:
        row = fs.features[fs.features["record_id"] == record.id].iloc[0]
        tokens = fs.tokens[fs.tokens["record_id"] == record.id].sort_values("token_index")
        for column in fs.token_schema:
            values = tokens[column].to_numpy(dtype=np.float64)
            scale = 1.0 + np.abs(values).max()
            for agg, fn in aggs.items():
                got, expected = row[f"{column}:{agg}"], fn(values)
                message = f"{record.id} {column}:{agg}: {got} vs {expected}"
                if agg in ("first", "last", "min", "max"):
                    assert got == expected, message  # a selection: exact
                elif agg == "std" and got == 0.0:
                    # A spread float32 cannot resolve is reported as 0 (resolved_std).
                    assert expected <= FLOAT32_NOISE * np.abs(values).max() + 4e-7 * scale, message
                else:
                    # Both sides start from the same float32 token values; the engine
                    # aggregates in float32 (sums of ≤ 18 values: a few ulps of the column's
                    # largest value), numpy in float64.
                    assert abs(got - expected) <= 4e-7 * scale + 1e-6 * abs(expected), message


def test_l2_dist_hidden_equals_radii_for_non_degenerate_tokens(extracted):
    _, fs, _, radius, steps = extracted("llama")
    tokens = fs.tokens
    assert (tokens["ccps/jacobian_norm"] > 1e-6).all()  # no degenerate token here
    radii = np.arange(1, steps + 1) * radius / steps
    expected = {"min": radii.min(), "max": radii.max(), "mean": radii.mean(), "std": radii.std()}
    for stat, value in expected.items():
        # ‖(h + r u) − h‖ in float32 with |h_i| ~ 1: rounding ~ √D·6e-8 ≈ 3e-7 absolute.
        np.testing.assert_allclose(tokens[f"ccps/l2_dist_hidden_{stat}"], value, rtol=0, atol=2e-6)


def test_js_of_extracted_trajectories_is_bounded(extracted):
    for arch in ("llama", "gemma2"):
        _, fs, _, _, _ = extracted(arch)
        for stat in ("min", "max", "mean"):
            values = fs.tokens[f"ccps/js_div_{stat}"].to_numpy()
            assert (values >= -1e-7).all() and (values <= math.log(2) + 1e-6).all()
        assert (fs.tokens["ccps/kl_div_min"] >= 0).all()


# ---- the Jacobian ------------------------------------------------------------------------------
def _nll_gradient(head, hidden, token_ids):
    """``CCPS.nll_gradient`` with the distribution it is given in the family."""
    log_p = torch.log_softmax(head(hidden), dim=-1)
    log_prob = log_p[torch.arange(len(token_ids)), token_ids]
    return CCPS.nll_gradient(head, hidden, token_ids, log_p.exp(), log_prob)


def _autograd_nll_gradient(head, hidden, token_ids):
    leaf = hidden.detach().clone().requires_grad_(True)
    nll = -torch.log_softmax(head(leaf), dim=-1)[torch.arange(len(token_ids)), token_ids]
    (gradient,) = torch.autograd.grad(nll.sum(), leaf)
    return gradient


@pytest.mark.parametrize("with_bias", [False, True])
def test_closed_form_jacobian_equals_autograd_float64(with_bias):
    llm = make_tiny_llm("llama")
    head = llm.head.to(torch.float64)
    assert head.is_linear
    generator = torch.Generator().manual_seed(1)
    if with_bias:
        bias = torch.randn(head.weight.shape[0], generator=generator, dtype=torch.float64)
        head = Head(weight=head.weight, bias=bias, softcap=None)
    hidden = 3.0 * torch.randn(7, head.weight.shape[1], generator=generator, dtype=torch.float64)
    token_ids = torch.randint(0, head.weight.shape[0], (7,), generator=generator)
    closed = _nll_gradient(head, hidden, token_ids)
    reference = _autograd_nll_gradient(head, hidden, token_ids)
    # float64 throughout: agreement to ~1e-15 relative; 1e-12 leaves room for summation order.
    torch.testing.assert_close(closed, reference, rtol=1e-10, atol=1e-12)


def test_softcapped_jacobian_matches_analytic_formula_float64():
    """The non-linear (Gemma-2) path vs the chain rule written out by hand:
    g = Wᵀ[(p − e_y) ⊙ (1 − tanh²(Wh/c))]."""
    llm = make_tiny_llm("gemma2")
    head = llm.head.to(torch.float64)
    assert not head.is_linear and head.softcap == llm.model.config.final_logit_softcapping
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(5, head.weight.shape[1], generator=generator, dtype=torch.float64)
    token_ids = torch.randint(0, head.weight.shape[0], (5,), generator=generator)
    gradient = _nll_gradient(head, hidden, token_ids)
    log_p = torch.log_softmax(head(hidden), dim=-1)
    raw = hidden @ head.weight.T
    residual = log_p.exp()
    residual[torch.arange(5), token_ids] -= 1.0
    expected = (residual * (1 - torch.tanh(raw / head.softcap) ** 2)) @ head.weight
    torch.testing.assert_close(gradient, expected, rtol=1e-10, atol=1e-12)
    # The soft-capping matters here: the linear formula would be far off.
    assert (residual @ head.weight - expected).abs().max() > 1e-2


# ---- distributions -----------------------------------------------------------------------------
def _float64_js(log_p: torch.Tensor, log_q: torch.Tensor) -> np.ndarray:
    p = log_p.double().exp().numpy()
    q = log_q.double().exp().numpy()
    return np.array(
        [jensenshannon(a, b) ** 2 for a, b in zip(p, q, strict=True)]
    )  # natural log by default


def test_js_divergence_random_symmetric_bounded_and_exact():
    generator = torch.Generator().manual_seed(3)
    z1 = 4 * torch.randn(6, 50, generator=generator)
    z2 = 4 * torch.randn(6, 50, generator=generator)
    log_p, log_q = torch.log_softmax(z1, -1), torch.log_softmax(z2, -1)
    js = js_divergence(log_p, log_q)
    assert js.dtype == torch.float32 and js.shape == (6,)
    torch.testing.assert_close(js, js_divergence(log_q, log_p), rtol=0, atol=1e-6)
    assert (js >= 0).all() and (js <= math.log(2)).all()
    # float32 sums over 50 terms of O(1) values: absolute error ~1e-6.
    np.testing.assert_allclose(js.numpy(), _float64_js(log_p, log_q), rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(js_divergence(log_p, log_p), torch.zeros(6), rtol=0, atol=1e-6)


def test_js_divergence_extreme_logits_where_m_underflows():
    """Near-disjoint distributions in float32: p and q put their tiny mass at exp(−150) or so,
    where ½(p + q) underflows to 0 in float32; the true JS is then ≈ ln 2 and never above."""
    V = 16
    z1 = torch.full((3, V), -150.0)
    z2 = torch.full((3, V), -150.0)
    z1[0, 0], z2[0, 1] = 0.0, 0.0  # disjoint spikes: JS = ln 2 up to e^-150
    z1[1, :8], z2[1, 8:] = 0.0, 0.0  # disjoint halves
    z1[2, 0], z2[2, 0] = 0.0, 0.0  # the same spike: JS = 0
    z1[2, 5], z2[2, 9] = -60.0, -95.0  # plus tails that differ by ~1e-26 .. 1e-41
    log_p, log_q = torch.log_softmax(z1, -1), torch.log_softmax(z2, -1)
    # m really underflows somewhere in float32 (the naive formula would divide by 0 there).
    assert ((log_p.exp() + log_q.exp()) / 2 == 0).any()
    js = js_divergence(log_p, log_q)
    assert torch.isfinite(js).all()
    assert (js >= -1e-7).all() and (js <= math.log(2) + 1e-6).all()
    torch.testing.assert_close(js, js_divergence(log_q, log_p), rtol=0, atol=1e-7)
    expected = torch.tensor([math.log(2), math.log(2), 0.0])
    torch.testing.assert_close(js, expected, rtol=0, atol=1e-6)
    # The float64 reference (scipy) agrees on the extreme inputs too.
    np.testing.assert_allclose(js.numpy(), _float64_js(log_p, log_q), rtol=0, atol=1e-6)


def test_entropy_and_kl_exact_vs_scipy():
    generator = torch.Generator().manual_seed(4)
    z = 5 * torch.randn(4, 40, generator=generator, dtype=torch.float64)
    z[0] = -1e4
    z[0, 3] = 0.0  # one-hot up to e^-10000: exp underflows to exactly 0, and 0·log 0 = 0
    log_p = torch.log_softmax(z, -1)
    log_q = torch.log_softmax(z.flip(-1) + 1.0, -1)
    p = log_p.exp().numpy()
    q = log_q.exp().numpy()
    H = entropy_from_log_probs(log_p)
    assert torch.isfinite(H).all() and H[0] == 0.0
    np.testing.assert_allclose(H.numpy(), scipy_entropy(p, axis=-1), rtol=1e-12, atol=1e-14)
    # No eps: the CCPS reference's −Σ p log(p + 1e-6) would differ by ~1e-6·V here.
    kl = kl_divergence(log_p[1:], log_q[1:])
    np.testing.assert_allclose(kl.numpy(), scipy_entropy(p[1:], q[1:], axis=-1), rtol=1e-12)
    # float32 path: same to float32 precision.
    H32 = entropy_from_log_probs(log_p.float())
    np.testing.assert_allclose(H32.numpy(), scipy_entropy(p, axis=-1), rtol=1e-5, atol=1e-6)


# ---- trajectory edge cases on handcrafted heads -------------------------------------------------
def test_trajectory_config_is_validated():
    with pytest.raises(Exception, match="radius"):
        CCPSConfig(radius=0.0)
    with pytest.raises(Exception, match="steps"):
        CCPSConfig(steps=0)


# ---- a handcrafted extreme head -----------------------------------------------------------------
def _ccps_family(head, hidden, token_ids, radius, steps):
    """The family on handcrafted tensors, through the family protocol: {name: (n,)}."""
    features = ccps_on_tensors(head, hidden, token_ids, radius, steps)
    return {name: values.numpy() for name, values in features.items()}


def test_extreme_logits_match_reference_and_js_stays_bounded():
    """Logit gaps of O(100): float32 probabilities of most tokens underflow (e^-104 = 0), the
    perturbation moves the mass between near-disjoint one-hot distributions, and the naive
    m = ½(p + p_k) underflows in float32.  Features stay finite, JS within [0, ln 2] and equal
    to the float64 reference.  (Linear head only: a soft-capped head with logits this large
    saturates, many logits round to exactly the cap in float32 and the argmax is a tie.)"""
    generator = torch.Generator().manual_seed(8)
    V, D, n = 24, 8, 6
    weight = 40.0 * torch.randn(V, D, generator=generator)
    bias = torch.randn(V, generator=generator)
    head = Head(weight=weight, bias=bias, softcap=None)
    hidden = torch.randn(n, D, generator=generator)
    argmax = head(hidden).argmax(dim=-1)
    token_ids = torch.where(torch.arange(n) % 2 == 0, argmax, (argmax + 5) % V)
    radius, steps = 1.5, 5
    f = _ccps_family(head, hidden, token_ids, radius, steps)
    assert all(np.isfinite(v).all() for v in f.values())
    assert (f["js_div_min"] >= 0).all() and (f["js_div_max"] <= math.log(2)).all()
    assert f["js_div_max"].max() > 0.69  # near-disjoint distributions do occur (ln 2 ≈ 0.693)
    assert 0 < f["flipped"].sum() < n

    W64, b64 = weight.double(), bias.double()

    def head64(h):
        return h @ W64.T + b64

    failures = []
    for i in range(n):
        h = hidden[i].double()
        with torch.no_grad():
            z = head64(h).numpy()
        ref = reference_token(head64, h, z, int(token_ids[i]), radius, steps)
        for name in EXPECTED_COLUMNS:
            # Logits are O(100) here (float32 ulp ≈ 8e-6 at 100), so absolute errors of
            # logits, log-probabilities, margins and KL are ~10× those of the tiny models
            # (measured ≤ 4e-5): rtol 1e-4 with an absolute floor of 2e-4 (= 10·ATOL).
            if not _close(f[name][i], ref[name], atol=2e-4):
                failures.append(f"token {i} {name}: {f[name][i]!r} vs {ref[name]!r}")
    assert not failures, "\n".join(failures[:20])


# ---- confident tokens: no float32 cancellation ------------------------------------------------
# For a token with p_y = 1 − ε, ε ~ 1e-5, the plain float32 formulas cancel: p_y − 1 (the
# Jacobian's y-th coefficient), log(1 + ε) (every log-probability), Σ p log p − Σ p z_k + lse
# (KL, rounded against the logits' size), log 2 − ½ Σ t log t (JS) and the spread of p ≈ 1 over
# the steps all lost 2–3 digits (up to 0.7 relative on the default LLM before the fix). Against
# a float64 evaluation of the same formulas from the same hidden states every column must agree
# to 1e-4 relative. Two kinds of column carry an absolute floor, because float32 cannot hold
# more there whatever the formula: logit-valued columns (a margin of 0.02 between two logits of
# 30) are resolved to the logits' own float32 rounding, a few ulps of the largest |z_k|; and
# probability-scale values (≤ 1, JS ≤ ln 2) and their spreads to a few ulps of 1.
CONFIDENT = 0.9999
LOGIT_COLUMNS = {
    "orig_logit_actual", "orig_logit_argmax", "orig_margin_logit_top1_top2",
    "orig_norm_logits_l2", "orig_std_logits",
    *(f"{m}_{s}" for m in ("logit_actual", "logit_argmax", "margin_logit_top1_top2",
                           "norm_logits_l2") for s in ("min", "max", "mean", "std")),
}  # fmt: skip
_PROBABILITY_METRICS = (
    "prob_actual", "prob_argmax", "argmax_changed", "js_div", "cos_sim_logits", "cos_sim_hidden",
)  # fmt: skip
PROBABILITY_COLUMNS = {
    "orig_prob_actual", "orig_prob_argmax", "orig_margin_prob_top1_top2",
    "is_actual_token_orig_argmax", "flipped",
    *(f"{m}_{s}" for m in _PROBABILITY_METRICS for s in ("min", "max", "mean", "std")),
}  # fmt: skip
LOGIT_ULPS = 2.0**-20  # ≈ 8 float32 ulps relative to the largest |logit|
PROBABILITY_ATOL = 2.0**-21  # ≈ 8 float32 ulps of values just below 1


def _confident_mismatches(head, head64, hidden, token_ids, radius, steps):
    """Compare the family with :func:`reference_token` on the tokens with p_y ≥ CONFIDENT.

    Returns the number of such tokens, how many of them flip, and the mismatches (strings)."""
    with torch.no_grad():
        features = _ccps_family(head, hidden, token_ids, radius, steps)
    radii = np.arange(1, steps + 1) * (radius / steps)
    mismatches, confident, flips = [], 0, 0
    for i in range(hidden.shape[0]):
        h = hidden[i].double()
        with torch.no_grad():
            z = head64(h)
        y = int(token_ids[i])
        if torch.softmax(z, dim=-1)[y] < CONFIDENT:
            continue
        confident += 1
        ref = reference_token(head64, h, z.numpy(), y, radius, steps)
        flips += int(ref["flipped"])
        g = ref["jacobian_norm"]
        # The largest |logit| along the trajectory (the reference's own direction).
        h_req = h.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(-torch.log_softmax(head64(h_req), -1)[y], h_req)
        with torch.no_grad():
            logit_scale = max(float(head64(h + r * grad / g).abs().max()) for r in [0.0, *radii])
        for name in EXPECTED_COLUMNS:
            ours, expected = float(features[name][i]), float(ref[name])
            if name in LOGIT_COLUMNS:
                atol = LOGIT_ULPS * logit_scale
            elif name in PROBABILITY_COLUMNS:
                atol = PROBABILITY_ATOL
            else:
                atol = 1e-12  # exact zeros (std of a constant)
            if abs(ours - expected) > atol + 1e-4 * abs(expected):
                rel = abs(ours - expected) / max(abs(expected), 1e-300)
                mismatches.append(f"token {i} {name}: {ours!r} vs {expected!r} (rel {rel:.1e})")
    return confident, flips, mismatches


@pytest.mark.parametrize("radius", [6.0, 30.0])
def test_confident_tokens_match_float64_on_a_tiny_model(radius):
    """A tiny model made confident on purpose (a bias of +16 on one token of its head: 1 − p_y
    between 2e-5 and 7e-5 on every response position): the 76 columns agree with float64 at
    a radius that keeps the trajectory confident (R = 6) and at one that flips it (R = 30)."""
    llm = make_tiny_llm("llama")
    encoded = [llm.encode_pair(r.messages, r.response) for r in RECORDS]
    out = llm.teacher_forced(encoded, logits=False)
    hidden = out.final_hidden[out.response_mask]
    weight = llm.head.weight.detach()
    bias = torch.zeros(weight.shape[0])
    bias[7] = 16.0
    head = Head(weight=weight, bias=bias, softcap=None)
    W64, b64 = weight.double(), bias.double()
    token_ids = torch.full((hidden.shape[0],), 7)
    confident, flips, mismatches = _confident_mismatches(
        head, lambda h: h @ W64.T + b64, hidden, token_ids, radius, steps=5
    )
    assert confident == hidden.shape[0] >= 20
    assert (flips == confident) if radius == 30.0 else (flips == 0)
    assert not mismatches, "\n".join(mismatches[:20])


# The default LLM's own greedy answers to ordinary questions (5 of their 216 tokens have
# p_y ≥ 0.9999).
GREEDY_ANSWERS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Who wrote Romeo and Juliet?", "The story of Romeo and Juliet by William Shakespeare is "
     "attributed to the 17th-century French playwright and poet. The play, written in 1595, "
     "is a Romeo and Juliet"),
    ("Name the largest planet in the solar system.", "The largest planet in the solar system "
     "is Neptune, but it's actually a planet in its own right. It's a gas giant, and it's the "
     "eighth planet from the Sun."),
    ("How many legs does a spider have?", "The answer to this classic question lies in the "
     "spider's anatomy. A spider's legs are actually just two pairs of legs, which are "
     "typically referred to as legs. However, when referring to the actual"),
    ("What is 7 times 8?", "To find 7 times 8, we can use the formula for multiplication of "
     "integers with remainders. This is based on the concept of modular arithmetic, where we "
     "multiply the number by itself until we"),
    ("What color is the sky on a clear day?", "The sky on a clear day is often described as a "
     "deep, rich shade of blue, with a hint of pink and a hint of purple. However, the exact "
     "color of the sky on a clear"),
]  # fmt: skip


@pytest.mark.slow
def test_confident_tokens_match_float64_on_the_default_llm():
    """The default LLM at the default R = 20, S = 5: every column of every token with
    p_y ≥ 0.9999 agrees with a float64 evaluation from the same hidden states."""
    from perturbprobe import load_llm

    llm = load_llm("default")
    encoded = [llm.encode_pair([{"role": "user", "content": q}], a) for q, a in GREEDY_ANSWERS]
    out = llm.teacher_forced(encoded, logits=False)
    hidden = out.final_hidden[out.response_mask]
    token_ids = out.response_ids[out.response_mask]
    W64 = llm.head.weight.detach().double()
    assert llm.head.bias is None and llm.head.is_linear
    confident, _, mismatches = _confident_mismatches(
        llm.head, lambda h: h @ W64.T, hidden, token_ids, radius=20.0, steps=5
    )
    assert confident >= 4
    assert not mismatches, "\n".join(mismatches[:20])
