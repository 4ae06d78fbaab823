"""The extraction engine (FEATURES.md, "Engine rules"), the extractor configuration, FeatureSet
I/O and the ``perturbprobe extract`` command, on tiny random models."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from feature_helpers import ED_NAMES, FAMILY_NAMES, ccps_on_tensors
from tiny_models import build_model, build_tokenizer, make_tiny_llm, save_llm

from perturbprobe.cli import cli
from perturbprobe.data import Record, write_records
from perturbprobe.errors import ExtractionError, PairEncodingError
from perturbprobe.features import (
    AGGREGATES,
    CCPS,
    FAMILIES,
    CCPSConfig,
    EntropyDynamicsConfig,
    ExtractorConfig,
    FeatureSet,
    PassBatch,
    extract,
)
from perturbprobe.llm import LLM, Head


def rec(record_id, response, question="Name a color.", label=1, messages=None):
    if messages is None:
        messages = ({"role": "user", "content": question},)
    return Record(
        id=record_id,
        question_id=f"q-{record_id}",
        messages=messages,
        response=response,
        label=label,
        source="generated",
    )


# Responses of very different lengths, so a batch of 8 is padded heavily, listed out of length
# order (the engine sorts by length internally and must restore the input order).
RECORDS = [
    rec("a", "Blue is a color, and red is a color too. The sky is blue.", label=1),
    rec("b", "Four", "Add two and two.", label=0),
    rec("c", "Paris is the capital.", "What is the capital of France?", label=1),
    rec("d", "I like green because it reminds me of the forest in spring.", label=0),
    rec("e", "Eight.", "How many legs does a spider have?", label=1),
    rec("f", "Once upon a time a small cat lived in a quiet house near the sea.", label=None),
    rec("g", "Bonjour", "Translate hello into French.", label=1),
]
ALL = "baseline,ccps,entropy_dynamics"
_DEFAULT_THREADS = torch.get_num_threads()  # read at import, before any test changes it


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def values(fs):
    """(X, token values) as float64 arrays."""
    return fs.X.to_numpy(np.float64), fs.tokens[fs.token_schema].to_numpy(np.float64)


@pytest.fixture(scope="module")
def llama():
    return make_tiny_llm("llama")


@pytest.fixture(scope="module")
def reference_fs(llama):
    """All families, batch 8 (one padded batch), R = 2 so both flip regimes occur."""
    return extract(
        llama, RECORDS, families=ALL, overrides=["ccps.radius=2"], batch_size=8, progress=False
    )


# ---- batch size, padding, determinism, memory budget -------------------------------------------
def test_output_rows_follow_input_order(reference_fs):
    assert reference_fs.record_ids == [r.id for r in RECORDS]
    assert reference_fs.question_ids == [r.question_id for r in RECORDS]
    assert reference_fs.features["label"].tolist()[:5] == [1, 0, 1, 0, 1]
    assert pd.isna(reference_fs.features["label"].iloc[5])
    assert reference_fs.tokens["record_id"].unique().tolist() == [r.id for r in RECORDS]


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_batch_size_and_padding_do_not_change_features(arch, llama, reference_fs):
    llm = llama if arch == "llama" else make_tiny_llm(arch)
    kwargs = dict(families=ALL, overrides=["ccps.radius=2"], progress=False)
    one = extract(llm, RECORDS, batch_size=1, **kwargs)
    eight = reference_fs if arch == "llama" else extract(llm, RECORDS, batch_size=8, **kwargs)
    three = extract(llm, RECORDS, batch_size=3, **kwargs)
    lengths = eight.features["baseline/n_tokens"]
    assert lengths.max() >= 3 * lengths.min()  # batches of 8 and 3 really are padded
    x1, t1 = values(one)
    for other in (eight, three):
        x, t = values(other)
        pd.testing.assert_frame_equal(
            one.tokens[["record_id", "token_index", "token_id", "token"]],
            other.tokens[["record_id", "token_index", "token_id", "token"]],
        )
        # Padding changes only the shapes of the decoder's matrix products (right padding plus
        # an attention mask: the real positions never see pad tokens), so hidden states differ
        # by float32 reduction-order noise, ~1e-6 relative.  Features inherit it; the largest
        # measured differences are ≤ 4e-6 absolute (KL/JS: differences of O(6) sums).  1e-4
        # relative + 2e-5 absolute leaves ≥ 5× headroom while any real dependence on padding
        # (a pad token attended to, a shifted position) moves features by O(1e-2..1).  Discrete
        # features (flips, argmax, spike counts) must agree exactly.
        np.testing.assert_allclose(x, x1, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(t, t1, rtol=1e-4, atol=2e-5)
        for column in ("ccps/flipped", "ccps/epsilon_to_flip", "baseline/is_argmax"):
            np.testing.assert_array_equal(other.tokens[column], one.tokens[column])
        n_spikes = "entropy_dynamics/n_spikes"
        np.testing.assert_array_equal(other.features[n_spikes], one.features[n_spikes])


@pytest.mark.parametrize("threads", [1, "default"])
def test_two_runs_are_identical(llama, threads):
    """Bit-identical numbers run after run, also with torch's default (multi-threaded) setting,
    where a non-deterministic parallel reduction would show."""
    runs = []
    previous = torch.get_num_threads()
    torch.set_num_threads(_DEFAULT_THREADS if threads == "default" else 1)
    try:
        for _ in range(2):
            runs.append(
                extract(
                    llama, RECORDS[:4], families=ALL, overrides=["ccps.radius=2"], progress=False
                )
            )
    finally:
        torch.set_num_threads(previous)
    first, again = runs
    pd.testing.assert_frame_equal(again.features, first.features, check_exact=True)
    pd.testing.assert_frame_equal(again.tokens, first.tokens, check_exact=True)
    assert dict(again.manifest, created=None) == dict(first.manifest, created=None)


def test_memory_budget_chunks_but_does_not_change_numbers(llama, monkeypatch):
    sizes = []
    original = PassBatch.head_chunks

    def spy(self):
        for rows in original(self):
            sizes.append(rows.stop - rows.start)
            yield rows

    monkeypatch.setattr(PassBatch, "head_chunks", spy)
    # Three records (~30 tokens) keep the one-token-per-chunk run short.
    kwargs = dict(families=ALL, overrides=["ccps.radius=2"], batch_size=8, progress=False)
    tiny = extract(llama, RECORDS[1:4], memory_mb=1e-4, **kwargs)
    assert sizes and set(sizes) == {1}  # one token per head chunk
    sizes.clear()
    large = extract(llama, RECORDS[1:4], memory_mb=4096, **kwargs)
    assert set(sizes) == {len(large.tokens)}  # everything in one chunk (per use of the head)
    # Same hidden states; only the head's matmul shapes differ (mat-vec vs mat-mat kernels),
    # so float32 reduction order changes.  KL/JS are differences of O(ln V ≈ 6) sums and carry
    # the largest such noise: measured ≤ 7e-6 absolute.  rtol 1e-4 + atol 2e-5 (≈3× headroom).
    for a, b in zip(values(tiny), values(large), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
    for column in ("ccps/flipped", "ccps/epsilon_to_flip", "baseline/is_argmax"):
        np.testing.assert_array_equal(tiny.tokens[column], large.tokens[column])


# ---- degenerate cases: finite values -----------------------------------------------------------
def assert_all_finite(fs):
    x, t = values(fs)
    assert np.isfinite(x).all() and np.isfinite(t).all()


def test_one_token_response_gives_finite_features(llama):
    # With response_end=eot, a response that is just the end-of-turn marker is a single token.
    record = rec("one", "<|eot_id|>")
    fs = extract(llama, [record], families=ALL, overrides=["response_end=eot"], progress=False)
    assert len(fs.tokens) == 1 and fs.tokens["token"].tolist() == ["<|eot_id|>"]
    assert_all_finite(fs)
    row = fs.features.iloc[0]
    for column in fs.token_schema:
        value = fs.tokens[column].iloc[0]
        assert row[f"{column}:std"] == 0.0
        for agg in ("mean", "min", "max", "first", "last"):
            assert row[f"{column}:{agg}"] == pytest.approx(value, rel=1e-6, abs=1e-7)
    assert row["baseline/n_tokens"] == 1
    assert row["entropy_dynamics/entropy_slope"] == 0.0
    assert row["entropy_dynamics/first_spike_pos"] == 2.0  # T + 1
    assert row["entropy_dynamics/first_spike_rel_pos"] == 2.0  # 1 + 1/T


def test_no_flip_within_radius_gives_finite_documented_value(llama):
    radius, steps = 1e-4, 5  # logits move by ≲ 3e-5; the smallest top-1/top-2 margin is 1e-2
    fs = extract(
        llama, RECORDS[:3], families="ccps", overrides=[f"ccps.radius={radius}"], progress=False
    )
    assert_all_finite(fs)
    tokens = fs.tokens
    assert (tokens["ccps/flipped"] == 0).all()
    assert (tokens["ccps/argmax_changed_max"] == 0).all()
    no_flip = radius * (steps + 1) / steps
    np.testing.assert_allclose(tokens["ccps/epsilon_to_flip"], no_flip, rtol=1e-6)
    np.testing.assert_allclose(fs.X["ccps/epsilon_to_flip:max"], no_flip, rtol=1e-6)


def _ccps_on(head, hidden, token_ids):
    """Run the ccps family (R = 2, S = 5) on handcrafted tensors through the family protocol."""
    features = ccps_on_tensors(head, hidden, token_ids, radius=2.0, steps=5)
    assert list(features) == CCPS().token_features()
    return features


def assert_degenerate(f, rows, radius=2.0, steps=5):
    """FEATURES.md: a degenerate token's perturbed values all equal the original ones."""
    rows = torch.as_tensor(rows)

    def col(name):
        return f[name][rows]

    assert (col("jacobian_norm") <= 1e-9).all()
    assert (col("flipped") == 0).all()
    torch.testing.assert_close(
        col("epsilon_to_flip"), torch.full_like(col("pei"), radius * (steps + 1) / steps)
    )
    pairs = {
        "log_prob_actual": "orig_log_prob_actual",
        "prob_actual": "orig_prob_actual",
        "logit_actual": "orig_logit_actual",
        "prob_argmax": "orig_prob_argmax",
        "logit_argmax": "orig_logit_argmax",
        "entropy": "orig_entropy",
        "margin_logit_top1_top2": "orig_margin_logit_top1_top2",
        "norm_logits_l2": "orig_norm_logits_l2",
    }
    for metric, original in pairs.items():
        for stat in ("min", "max", "mean"):
            # float32: the perturbed pass recomputes the same numbers, possibly in another order.
            torch.testing.assert_close(col(f"{metric}_{stat}"), col(original), rtol=1e-6, atol=1e-6)
    zeros = ("delta_log_prob_actual", "argmax_changed", "kl_div", "js_div", "l2_dist_hidden")
    for metric in zeros:
        for stat in ("min", "max", "mean", "std"):
            assert (col(f"{metric}_{stat}").abs() <= 1e-6).all(), f"{metric}_{stat}"
    for metric in ("cos_sim_logits", "cos_sim_hidden"):
        torch.testing.assert_close(
            col(f"{metric}_mean"), torch.ones_like(col("pei")), rtol=0, atol=1e-6
        )
    assert (col("pei").abs() <= 1e-6).all()
    for metric in pairs:
        assert (col(f"{metric}_std").abs() <= 1e-5).all()


@pytest.mark.parametrize("softcap", [None, 5.0], ids=["linear", "softcapped"])
def test_zero_jacobian_head_is_degenerate_and_finite(softcap):
    """A head that ignores h (W = 0, logits = bias): the gradient is exactly 0."""
    generator = torch.Generator().manual_seed(5)
    V, D = 16, 8
    head = Head(weight=torch.zeros(V, D), bias=torch.randn(V, generator=generator), softcap=softcap)
    hidden = torch.randn(4, D, generator=generator)
    token_ids = torch.tensor([0, 3, 7, 15])
    f = _ccps_on(head, hidden, token_ids)
    assert all(torch.isfinite(v).all() for v in f.values())
    assert (f["jacobian_norm"] == 0).all()
    assert_degenerate(f, [0, 1, 2, 3])


def test_one_hot_head_gives_exact_zero_jacobian_for_the_argmax_token():
    """Logits scaled so that p is one-hot to float32's resolution near 1: log p(y) is 0 or
    −Σ_{v≠y} p_v ≈ −5e-38 (resolved, not rounded to 0) when y is the argmax, so p − e_y
    vanishes and the token is degenerate; tokens that are not the argmax get log p(y) ≈ −1e4,
    still finite."""
    generator = torch.Generator().manual_seed(6)
    V, D = 16, 8
    weight = 1e3 * torch.randn(V, D, generator=generator)
    head = Head(weight=weight, bias=None, softcap=None)
    hidden = torch.randn(4, D, generator=generator)
    argmax = (hidden @ weight.T).argmax(dim=-1)
    token_ids = argmax.clone()
    token_ids[3] = (argmax[3] + 1) % V  # not the argmax
    f = _ccps_on(head, hidden, token_ids)
    assert all(torch.isfinite(v).all() for v in f.values())
    assert (f["orig_log_prob_actual"][:3].abs() <= 1e-37).all()
    assert (f["jacobian_norm"][:3] <= 1e-30).all()
    assert_degenerate(f, [0, 1, 2])
    assert f["jacobian_norm"][3] > 1.0 and f["orig_log_prob_actual"][3] < -100


def test_identical_head_rows_leave_the_distribution_unchanged():
    """All rows of W equal: every logit moves by the same amount, p stays uniform."""
    generator = torch.Generator().manual_seed(7)
    V, D = 8, 6
    weight = torch.randn(1, D, generator=generator).expand(V, D).contiguous()
    head = Head(weight=weight, bias=None, softcap=None)
    hidden = torch.randn(3, D, generator=generator)
    f = _ccps_on(head, hidden, torch.tensor([0, 4, 7]))
    assert all(torch.isfinite(v).all() for v in f.values())
    assert (f["jacobian_norm"] <= 1e-6).all()  # W^T(p − e_y) = w (Σp − 1) = 0 up to rounding
    torch.testing.assert_close(f["orig_entropy"], torch.full((3,), math.log(V)), rtol=0, atol=1e-6)
    torch.testing.assert_close(f["entropy_min"], torch.full((3,), math.log(V)), rtol=0, atol=1e-6)
    assert (f["kl_div_max"].abs() <= 1e-6).all() and (f["js_div_max"].abs() <= 1e-6).all()
    assert (f["flipped"] == 0).all() and (f["delta_log_prob_actual_max"].abs() <= 1e-6).all()


def test_extreme_model_has_a_degenerate_token_and_no_nan_anywhere():
    """A tiny llama whose head is scaled ×1000: next-token distributions are one-hot in
    float32.  The response starts with the model's own greedy token (log p(y) = 0, Jacobian
    exactly 0); the rest are forced tokens with log p ≈ −10³.  Everything stays finite."""
    tokenizer = build_tokenizer("llama")
    model = build_model("llama", tokenizer, seed=0)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(1000.0)
    llm = LLM(model, tokenizer, name="tiny-llama-sharp")
    messages = ({"role": "user", "content": "Name a color."},)
    prompt = llm.prompt_ids(messages)
    with torch.no_grad():
        greedy = int(model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax())
    response = tokenizer.decode([greedy]) + " Blue is a color."
    assert llm.encode_pair(messages, response).response_ids[0] == greedy  # precondition
    fs = extract(llm, [rec("sharp", response, messages=messages)], families=ALL, progress=False)
    assert_all_finite(fs)
    tokens = fs.tokens
    assert tokens["ccps/jacobian_norm"].iloc[0] == 0.0
    assert tokens["baseline/log_prob"].iloc[0] == 0.0
    assert tokens["baseline/log_prob"].min() < -100
    assert tokens["ccps/kl_div_max"].iloc[0] == 0.0
    assert tokens["ccps/flipped"].iloc[0] == 0.0


# ---- unscorable records ------------------------------------------------------------------------
LONG = "The quick brown fox jumps over the lazy dog. " * 40  # > 256 tokens: the context


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        (rec("bad-empty", ""), "empty"),
        (rec("bad-blank", "   \n "), "empty"),
        (rec("bad-long", LONG), "exceed"),
        (rec("bad-nomsg", "Blue", messages=()), "messages"),
    ],
    ids=["empty", "blank", "too-long", "no-messages"],
)
def test_unscorable_record_raises_naming_it(llama, record, fragment):
    with pytest.raises(PairEncodingError) as info:
        extract(llama, [RECORDS[1], record], families="baseline", progress=False)
    message = str(info.value)
    assert record.id in message and fragment in message
    assert "skip-invalid" in message


def test_skip_invalid_skips_and_reports(llama):
    bad = [
        rec("bad-empty", ""),
        rec("bad-long", LONG),
        rec("bad-nomsg", "Blue", messages=()),
    ]
    records = [bad[0], RECORDS[1], bad[1], RECORDS[2], bad[2]]
    fs = extract(llama, records, families=ALL, skip_invalid=True, progress=False)
    assert fs.record_ids == ["b", "c"]
    assert_all_finite(fs)
    skipped = fs.manifest["skipped"]
    assert [s["id"] for s in skipped] == ["bad-empty", "bad-long", "bad-nomsg"]
    assert "empty" in skipped[0]["reason"] and "exceed" in skipped[1]["reason"]
    assert "messages" in skipped[2]["reason"]
    assert fs.skipped == skipped
    assert fs.manifest["counts"] == {
        "records": 5,
        "scored": 2,
        "skipped": 3,
        "tokens": len(fs.tokens),
    }
    assert set(fs.tokens["record_id"]) == {"b", "c"}
    # The scored records get the same numbers as when extracted on their own (tolerance as in
    # the batch-size test).
    alone = extract(llama, [RECORDS[1], RECORDS[2]], families=ALL, progress=False)
    np.testing.assert_allclose(values(fs)[0], values(alone)[0], rtol=1e-4, atol=2e-5)


def test_skip_invalid_with_nothing_left_is_an_error(llama):
    with pytest.raises(ExtractionError, match=r"no record could be scored.*bad-empty"):
        extract(
            llama, [rec("bad-empty", "")], families="baseline", skip_invalid=True, progress=False
        )


# ---- configuration errors ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("families", "overrides", "pattern"),
    [
        ("baseline,nosuch", [], r"unknown feature family 'nosuch'.*available: baseline"),
        ("", [], r"no feature family"),
        ("baseline,ccps", ["ccps.radius=abc"], r"ccps\.radius expects a float, got 'abc'"),
        ("baseline,ccps", ["ccps.steps=2.5"], r"ccps\.steps expects a int"),
        ("baseline,ccps", ["ccps.nosuch=1"], r"family 'ccps' has no option 'nosuch'.*radius"),
        ("baseline,ccps", ["ccps.radius"], r"not of the form key=value"),
        ("baseline,ccps", ["radius=3"], r"unknown option 'radius'"),
        ("baseline,ccps", ["ccps.radius=-1"], r"radius must be > 0"),
        ("baseline,ccps", ["ccps.steps=0"], r"steps must be >= 1"),
        ("baseline,ccps", ["response_end=middle"], r"response_end must be one of"),
        ("baseline", ["ccps.radius=3"], r"'ccps'.*not selected.*baseline"),
        ("baseline", ["entropy_dynamics.z=1"], r"not selected"),
    ],
)
def test_bad_configuration_raises_extraction_error(llama, families, overrides, pattern):
    with pytest.raises(ExtractionError, match=pattern):
        ExtractorConfig.create(families, overrides)
    with pytest.raises(ExtractionError, match=pattern):
        extract(llama, RECORDS[:1], families=families, overrides=overrides, progress=False)


def test_bad_batch_size(llama):
    with pytest.raises(ExtractionError, match="batch_size"):
        extract(llama, RECORDS[:1], families="baseline", batch_size=0, progress=False)


def test_extractor_config_round_trip():
    config = ExtractorConfig.create(
        "ccps,baseline,entropy_dynamics",
        ["ccps.radius=7.5", "ccps.steps=3", "entropy_dynamics.z=2", "response_end=eot"],
    )
    assert config.families == ["ccps", "baseline", "entropy_dynamics"]
    assert config.family_configs["ccps"] == CCPSConfig(radius=7.5, steps=3)
    assert config.family_configs["entropy_dynamics"] == EntropyDynamicsConfig(z=2.0)
    data = config.to_dict()
    assert data == {
        "response_end": "eot",
        "families": {
            "ccps": {"radius": 7.5, "steps": 3},
            "baseline": {},
            "entropy_dynamics": {"z": 2.0},
        },
    }
    again = ExtractorConfig.from_dict(json.loads(json.dumps(data)))
    assert again == config and again.families == config.families
    assert ExtractorConfig.create("all").families == list(FAMILIES) == FAMILY_NAMES
    cheap = ExtractorConfig.create()  # the default: the families of one forward pass
    assert cheap.families == ["baseline", "ccps", "entropy_dynamics", "sua", "hidden_states"]
    assert cheap.family_configs["sua"].sources == "hidden"
    assert ExtractorConfig.create("sua").family_configs["sua"].sources != "hidden"
    with pytest.raises(ExtractionError, match="unknown feature family 'nosuch'"):
        ExtractorConfig.from_dict({"families": {"nosuch": {}}})
    with pytest.raises(ExtractionError, match="bad options for family 'ccps'"):
        ExtractorConfig.from_dict({"families": {"ccps": {"radiuz": 1.0}}})


def test_manifest_records_the_config(reference_fs):
    config = ExtractorConfig.from_dict(reference_fs.manifest["config"])
    assert config.family_configs["ccps"].radius == 2.0
    assert config.families == ["baseline", "ccps", "entropy_dynamics"]


# ---- schema ------------------------------------------------------------------------------------
def test_schema_names(reference_fs):
    fs = reference_fs
    token_pattern = re.compile(r"^(baseline|ccps|entropy_dynamics)/[a-z0-9_]+$")
    response_pattern = re.compile(
        r"^(baseline|ccps|entropy_dynamics)/[a-z0-9_]+(:(mean|std|min|max|first|last))?$"
    )
    assert all(token_pattern.match(name) for name in fs.token_schema)
    assert all(response_pattern.match(name) for name in fs.schema)
    assert len(set(fs.schema)) == len(fs.schema)
    ccps_tokens = [c for c in fs.token_schema if c.startswith("ccps/")]
    assert len(ccps_tokens) == 76
    assert ccps_tokens == [f"ccps/{name}" for name in CCPS().token_features()]
    # Every per-token column is aggregated with the six documented statistics, in order, and
    # the non-aggregate response columns are exactly the documented ones.
    expected = []
    for family in ("baseline", "ccps", "entropy_dynamics"):
        tokens = [c for c in fs.token_schema if c.startswith(f"{family}/")]
        expected += [f"{c}:{agg}" for c in tokens for agg in AGGREGATES]
        expected += {
            "baseline": [
                "baseline/seq_log_prob",
                "baseline/mean_log_prob",
                "baseline/min_log_prob",
                "baseline/n_tokens",
            ],
            "ccps": [],
            "entropy_dynamics": [f"entropy_dynamics/{n}" for n in ED_NAMES],
        }[family]
    assert fs.schema == expected
    assert AGGREGATES == ("mean", "std", "min", "max", "first", "last")
    assert len(fs.schema) == 6 * (5 + 76) + 4 + 9
    assert list(fs.X.columns) == fs.schema
    assert list(fs.features.columns[:4]) == ["record_id", "question_id", "label", "source"]
    assert list(fs.tokens.columns[:4]) == ["record_id", "token_index", "token_id", "token"]
    assert fs.manifest["schema"] == fs.schema and fs.manifest["token_schema"] == fs.token_schema


# ---- FeatureSet files --------------------------------------------------------------------------
def test_save_load_round_trip(reference_fs, tmp_path):
    path = reference_fs.save(tmp_path / "fs")
    assert sorted(p.name for p in path.iterdir()) == [
        "features.parquet",
        "manifest.json",
        "tokens.parquet",
    ]
    loaded = FeatureSet.load(path)
    pd.testing.assert_frame_equal(loaded.X, reference_fs.X, check_exact=True)
    pd.testing.assert_frame_equal(loaded.features, reference_fs.features, check_exact=True)
    pd.testing.assert_frame_equal(loaded.tokens, reference_fs.tokens, check_exact=True)
    assert loaded.manifest == reference_fs.manifest
    assert loaded.schema == reference_fs.schema
    assert pd.isna(loaded.features["label"].iloc[5])  # a missing label survives the trip
    with pytest.raises(ExtractionError, match="no label"):
        loaded.y  # noqa: B018
    np.testing.assert_array_equal(loaded.token_matrix("c"), reference_fs.token_matrix("c"))


def test_save_refuses_existing_directory(reference_fs, tmp_path):
    path = tmp_path / "fs"
    path.mkdir()
    (path / "keep.txt").write_text("mine")
    with pytest.raises(ExtractionError, match="already exists"):
        reference_fs.save(path)
    assert (path / "keep.txt").read_text() == "mine"
    reference_fs.save(path, overwrite=True)
    assert not (path / "keep.txt").exists()
    FeatureSet.load(path)


def test_interrupted_save_leaves_nothing(reference_fs, tmp_path, monkeypatch):
    original = pd.DataFrame.to_parquet
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", failing)
    with pytest.raises(OSError, match="simulated"):
        reference_fs.save(tmp_path / "fs")
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary directory

    # An interrupted overwrite leaves the previous directory intact.
    monkeypatch.setattr(pd.DataFrame, "to_parquet", original)
    path = reference_fs.save(tmp_path / "fs")
    calls.clear()
    monkeypatch.setattr(pd.DataFrame, "to_parquet", failing)
    with pytest.raises(OSError, match="simulated"):
        reference_fs.save(path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["fs"]
    monkeypatch.setattr(pd.DataFrame, "to_parquet", original)
    pd.testing.assert_frame_equal(FeatureSet.load(path).X, reference_fs.X)


@pytest.mark.parametrize("missing", ["features.parquet", "tokens.parquet", "manifest.json"])
def test_load_missing_file(reference_fs, tmp_path, missing):
    path = reference_fs.save(tmp_path / "fs")
    (path / missing).unlink()
    with pytest.raises(ExtractionError, match=f"missing {re.escape(missing)}"):
        FeatureSet.load(path)


def test_load_mismatched_columns_and_version(reference_fs, tmp_path):
    path = reference_fs.save(tmp_path / "fs")
    manifest = json.loads((path / "manifest.json").read_text())

    broken = dict(manifest, schema=manifest["schema"][:-1])
    (path / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(ExtractionError, match=r"features.parquet columns"):
        FeatureSet.load(path)

    broken = dict(manifest, token_schema=list(reversed(manifest["token_schema"])))
    (path / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(ExtractionError, match=r"tokens.parquet columns"):
        FeatureSet.load(path)

    (path / "manifest.json").write_text(json.dumps(manifest))
    reference_fs.tokens.drop(columns=["ccps/pei"]).to_parquet(path / "tokens.parquet")
    with pytest.raises(ExtractionError, match=r"tokens.parquet columns"):
        FeatureSet.load(path)

    reference_fs.tokens.to_parquet(path / "tokens.parquet", index=False)
    FeatureSet.load(path)  # repaired
    (path / "manifest.json").write_text(json.dumps(dict(manifest, format_version=999)))
    with pytest.raises(ExtractionError, match="format version"):
        FeatureSet.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ExtractionError, match="unreadable"):
        FeatureSet.load(path)


# ---- the command line --------------------------------------------------------------------------
def _runner():
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2: stderr is separate


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, llama):
    directory = tmp_path_factory.mktemp("tiny-llama")
    save_llm(llama, directory)
    return directory


def test_cli_extract_writes_a_loadable_featureset(saved_model, tmp_path, llama):
    records = write_records(tmp_path / "records.jsonl", [*RECORDS[:3], rec("bad", "")])
    out = tmp_path / "features"
    args = ["--quiet", "extract", "--model", str(saved_model), "--device", "cpu"]
    args += ["--records", str(records), "--out", str(out), "--families", "baseline,ccps"]
    args += ["--set", "ccps.radius=2", "--batch-size", "2", "--skip-invalid"]
    result = _runner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "3 records scored (1 skipped)" in result.stdout
    fs = FeatureSet.load(out)
    assert fs.record_ids == ["a", "b", "c"]
    assert [s["id"] for s in fs.skipped] == ["bad"]
    assert fs.manifest["config"]["families"]["ccps"] == {"radius": 2.0, "steps": 5}
    # The model loaded from disk computes the same features as the in-memory one (other batch
    # size: padding noise only, tolerance as in the batch-size test).
    direct = extract(
        llama, RECORDS[:3], families="baseline,ccps", overrides=["ccps.radius=2"], progress=False
    )
    np.testing.assert_allclose(values(fs)[0], values(direct)[0], rtol=1e-4, atol=2e-5)
    # Writing again to the same place is refused without --overwrite.
    again = _runner().invoke(cli, args)
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_cli_bad_option_is_a_one_line_error(saved_model, tmp_path):
    records = write_records(tmp_path / "records.jsonl", RECORDS[:1])
    out = tmp_path / "features"
    result = _runner().invoke(
        cli,
        [
            "extract",
            "--model",
            str(saved_model),
            "--records",
            str(records),
            "--out",
            str(out),
            "--set",
            "ccps.radius=abc",
        ],
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("perturbprobe: error:")
    assert "ccps.radius" in lines[0] and "'abc'" in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


def test_non_finite_values_never_leave_silently(llama, monkeypatch):
    """If a family ever produced NaN/inf (a bug), extraction fails loudly naming the column."""
    original = CCPS.compute

    def poisoned(self, batch):
        out = original(self, batch)
        out.token_values[0, out.token_names.index("pei")] = float("nan")
        return out

    monkeypatch.setattr(CCPS, "compute", poisoned)
    with pytest.raises(ExtractionError, match=r"non-finite.*ccps/pei"):
        extract(llama, RECORDS[1:3], families="baseline,ccps", progress=False)


def test_families_needing_what_the_pass_cannot_give_are_refused(monkeypatch):
    from perturbprobe.features import Baseline

    monkeypatch.setattr(Baseline, "needs", frozenset({"final_hidden", "backward"}))
    llm = make_tiny_llm("llama")
    record = Record("r", "q", ({"role": "user", "content": "hi"},), "hello", 1, "generated")
    with pytest.raises(ExtractionError, match=r"cannot yet provide \['backward'\].*baseline"):
        extract(llm, [record], families="baseline", progress=False)


def test_bfloat16_model_features_are_computed_in_float32():
    import copy

    llm32 = make_tiny_llm("llama")
    llm16 = LLM(copy.deepcopy(llm32.model).to(torch.bfloat16), llm32.tokenizer, name="bf16")
    messages = ({"role": "user", "content": "name a colour"},)
    records = [Record("a", "q", messages, "blue sky", 1, "gold")]
    fs = extract(llm16, records, families="baseline", progress=False)
    # Independent float64 computation from the bf16 model's own final hidden states.
    out = llm16.teacher_forced([llm16.encode_pair(messages, "blue sky")], logits=False)
    hidden = out.pair(0)["final_hidden"].double()
    log_p = torch.log_softmax(hidden @ llm16.head.weight.detach().double().T, dim=-1)
    expected = log_p[torch.arange(len(hidden)), out.pair(0)["response_ids"]].numpy()
    # float32 arithmetic on bf16-valued inputs: ~1e-6; bf16 arithmetic would be off by ~1e-2.
    np.testing.assert_allclose(fs.tokens["baseline/log_prob"], expected, rtol=1e-4, atol=1e-4)


def test_featuresets_of_the_same_records_join(tmp_path):
    llm = make_tiny_llm("llama")
    records = RECORDS[:4]
    first = extract(llm, records, families="baseline,entropy_dynamics", progress=False)
    second = extract(llm, records[::-1], families="ccps,semantic_gradient", progress=False)
    joined = first.join(second)
    together = extract(llm, records, families="baseline,entropy_dynamics,ccps,semantic_gradient",
                       progress=False)  # fmt: skip
    assert joined.schema == together.schema and joined.token_schema == together.token_schema
    np.testing.assert_allclose(joined.X.to_numpy(), together.X.to_numpy(), rtol=1e-5, atol=1e-7)
    token_columns = together.token_schema
    got, expected = joined.tokens[token_columns], together.tokens[token_columns]
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-5, atol=1e-7)
    assert list(joined.manifest["config"]["families"]) == list(
        together.manifest["config"]["families"]
    )
    reloaded = FeatureSet.load(joined.save(tmp_path / "joined"))
    assert reloaded.schema == joined.schema
    with pytest.raises(ExtractionError, match="both FeatureSets have baseline"):
        first.join(first)
    with pytest.raises(ExtractionError, match="different records"):
        first.join(extract(llm, records[:1], families="ccps", progress=False))
    other_llm = extract(make_tiny_llm("qwen2"), records, families="ccps", progress=False)
    with pytest.raises(ExtractionError, match="different LLMs"):
        first.join(other_llm)


def test_spreads_float32_cannot_resolve_are_reported_as_zero():
    """std over a few ulps of noise (a column constant by construction) is 0, so it does not
    depend on the batch; a spread float32 resolves is kept as computed."""
    from perturbprobe._numerics import FLOAT32_NOISE, resolved_std

    ulp = float(np.spacing(np.float32(20.0)))
    noise = torch.tensor([20.0, 20.0 + ulp, 20.0 - ulp, 20.0 + 2 * ulp])
    real = torch.tensor([20.0, 20.001, 19.999, 20.002])
    for values, expect_zero in ((noise, True), (real, False)):
        std = values.std(correction=0)
        got = resolved_std(std, values.abs().max())
        assert (got == 0) == expect_zero
        if not expect_zero:
            assert got == std
    assert 8 * ulp <= FLOAT32_NOISE * 20.0 <= 16 * ulp  # the threshold: 8 to 16 ulps
