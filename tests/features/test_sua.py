"""``sua`` against its definitions and independent computations: naive per-pair perturbed
forward passes in float64 with SciPy's Jensen–Shannon distance, the CCPS columns, paraphrased
prompts rendered by hand, and the reuse of other families' passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from feature_helpers import assert_bad_option_fails
from qa_records import qa_records
from scipy.spatial.distance import jensenshannon
from tiny_models import ARCHS, build_model, build_tokenizer, make_tiny_llm

from perturbprobe.features import CCPS, extract
from perturbprobe.features.distributions import kl_and_js
from perturbprobe.features.embedding_pass import EmbeddingPass, GradientRequest
from perturbprobe.llm import LLM

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

ALL_SOURCES = "sua.sources=hidden,embed_random,embed_adv,paraphrase"


def _records():
    return qa_records(paraphrases=True)


@pytest.fixture(scope="module")
def llm64():
    tokenizer = build_tokenizer("gpt2")
    model = build_model("gpt2", tokenizer, seed=3).to(torch.float64)
    return LLM(model, tokenizer, name="tiny-gpt2-f64")


def _js(log_p: torch.Tensor, log_q: torch.Tensor) -> np.ndarray:
    """JS per row by SciPy (its distance is the square root of the divergence, natural log)."""
    p, q = log_p.exp().double().numpy(), log_q.exp().double().numpy()
    return np.array([jensenshannon(a, b) ** 2 for a, b in zip(p, q, strict=True)])


def _response_log_probs(llm, prompt_ids, response_ids, embeds=None):
    """log p_t (T, V) of one pair, from the model's own logits (float64)."""
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    with torch.no_grad():
        if embeds is None:
            logits = llm.model(input_ids=ids).logits[0]
        else:
            logits = llm.model(inputs_embeds=embeds[None]).logits[0]
    start, length = len(prompt_ids), len(response_ids)
    return torch.log_softmax(logits[start - 1 : start + length - 1].double(), dim=-1)


def test_columns_equal_their_definitions_from_the_stored_tokens():
    llm = make_tiny_llm("llama")
    overrides = [ALL_SOURCES, "sua.lam=0.5"]
    fs = extract(llm, _records(), families="baseline,sua", overrides=overrides, progress=False)
    features = fs.features.set_index("record_id")
    for record in _records():
        tokens = fs.tokens[fs.tokens.record_id == record.id]
        row = features.loc[record.id]
        entropy = tokens["baseline/entropy"].mean()
        assert row["sua/H"] == pytest.approx(entropy, rel=1e-5)
        for source in ("hidden", "embed_random", "embed_adv", "paraphrase"):
            s = tokens[f"sua/{source}_sensitivity"].mean()
            assert row[f"sua/{source}:S"] == pytest.approx(s, rel=1e-5, abs=1e-12)
            alignment = s - 0.5 * entropy
            assert row[f"sua/{source}:sua"] == pytest.approx(alignment, rel=1e-5)
            assert row[f"sua/{source}:sua_pos"] == pytest.approx(max(0.0, alignment), abs=1e-7)
            assert row[f"sua/{source}:S_over_H"] == pytest.approx(s / (entropy + 1e-6), rel=1e-5)
        assert row["sua/paraphrase:count"] == len(record.paraphrases)
    assert (fs.features.filter(like=":sua_pos") >= 0).all().all()
    no_paraphrase = fs.tokens[fs.tokens.record_id == "1"]
    assert (no_paraphrase["sua/paraphrase_sensitivity"] == 0).all()


def test_sua_pos_is_positive_when_sensitivity_dominates():
    llm = make_tiny_llm("qwen2")
    fs = extract(llm, _records(), families="sua", overrides=["sua.lam=0"], progress=False)
    assert (fs.features["sua/hidden:sua_pos"] > 0).all()
    assert (fs.features["sua/hidden:sua_pos"] == fs.features["sua/hidden:S"]).all()


def test_embedding_sources_match_naive_perturbed_passes(llm64):
    pairs = [llm64.encode_pair(list(r.messages), r.response) for r in _records()]
    ep = EmbeddingPass(llm64, pairs, llm64.head, 8, GradientRequest(divergences=True))
    adversarial = ep.adversarial("linf", 1e-3)
    random = ep.gaussian(1e-2, 3, seed=7)
    noise = ep.gaussian_noise(1e-2, 3, 7)
    flat = 0
    for b, pair in enumerate(pairs):
        n, length = len(pair.input_ids), len(pair.response_ids)
        tokens = slice(flat, flat + length)
        flat += length
        embeds = ep.embeddings[b, :n]
        original = _response_log_probs(llm64, pair.prompt_ids, pair.response_ids, embeds)
        moved = embeds - 1e-3 * ep.gradient[b, :n].sign()
        perturbed = _response_log_probs(llm64, pair.prompt_ids, pair.response_ids, moved)
        expected = _js(original, perturbed)
        np.testing.assert_allclose(adversarial.js[0, tokens].numpy(), expected, rtol=1e-6)
        kl = (original.exp() * (original - perturbed)).sum(dim=-1)
        torch.testing.assert_close(adversarial.kl[0, tokens], kl, rtol=1e-6, atol=1e-15)
        samples = [
            _js(original, _response_log_probs(llm64, pair.prompt_ids, pair.response_ids,
                                              embeds + noise[j, b, :n]))
            for j in range(3)
        ]  # fmt: skip
        np.testing.assert_allclose(random.js[:, tokens].numpy(), np.stack(samples), rtol=1e-6)
        assert (expected > 0).all()


def test_float32_divergences_of_nearby_distributions_are_not_lost():
    """The embedding sources compare distributions ~1e-4 apart: the result must match float64."""
    torch.manual_seed(0)
    logits = torch.randn(4, 3000) * 3
    nearby = logits + 1e-4 * torch.randn(4, 3000)
    llm = make_tiny_llm("llama")
    fs = extract(llm, _records()[:1], families="sua", progress=False)
    assert (fs.features["sua/embed_random:S"] > 0).all()  # not flushed to zero
    kl, js = kl_and_js(torch.log_softmax(logits, -1), torch.log_softmax(nearby, -1))
    expected = _js(torch.log_softmax(logits.double(), -1), torch.log_softmax(nearby.double(), -1))
    np.testing.assert_allclose(js.numpy(), expected, rtol=5e-3)  # float32 inputs: ~1e-3
    assert (kl > 0).all()


def test_hidden_source_is_the_ccps_trajectory_shared_with_ccps(monkeypatch):
    llm = make_tiny_llm("mistral")
    calls = []
    original = CCPS.token_values

    def counted(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(CCPS, "token_values", counted)
    fs = extract(llm, _records(), families="ccps,sua", batch_size=8, progress=False)
    assert len(calls) == 1  # one batch, one chunk: the trajectory ran once for both families
    np.testing.assert_allclose(
        fs.tokens["sua/hidden_sensitivity"], fs.tokens["ccps/js_div_mean"], rtol=0, atol=0
    )
    kl = extract(llm, _records(), families="ccps,sua", overrides=["sua.divergence=kl"],
                 progress=False)  # fmt: skip
    np.testing.assert_allclose(kl.tokens["sua/hidden_sensitivity"], kl.tokens["ccps/kl_div_mean"])


def test_embedding_sources_reuse_the_embedding_perturbation_passes():
    llm = make_tiny_llm("llama")
    calls = []
    handle = llm.model.base_model.register_forward_hook(lambda *args: calls.append(1))
    try:
        extract(llm, _records(), families="embedding_perturbation", progress=False)
        alone = len(calls)
        calls.clear()
        extract(llm, _records(), families="embedding_perturbation,sua", progress=False)
        together = len(calls)
        calls.clear()
        extract(llm, _records(), families="embedding_perturbation,sua",
                overrides=["sua.embed_sigma=0.01"], progress=False)  # fmt: skip
        other_sigma = len(calls)
    finally:
        handle.remove()
    assert together == alone == 4  # gradient pass, l∞, l2, the 20 random copies stacked in one
    assert other_sigma == alone + 1


def test_paraphrase_source_matches_prompts_rendered_by_hand():
    llm = make_tiny_llm("qwen2")
    fs = extract(llm, _records(), families="sua", overrides=[ALL_SOURCES], progress=False)
    for record in _records():
        pair = llm.encode_pair(list(record.messages), record.response)
        original = _response_log_probs(llm, pair.prompt_ids, pair.response_ids)
        divergences = [
            _js(original, _response_log_probs(llm, llm.prompt_ids([{"role": "user",
                "content": text}]), pair.response_ids))
            for text in record.paraphrases
        ]  # fmt: skip
        expected = np.mean(divergences, axis=0) if divergences else np.zeros(len(original))
        got = fs.tokens[fs.tokens.record_id == record.id]["sua/paraphrase_sensitivity"]
        np.testing.assert_allclose(got.to_numpy(), expected, rtol=2e-3, atol=1e-7)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_family_is_finite_on_every_architecture(arch):
    fs = extract(
        make_tiny_llm(arch), _records(), families="all", overrides=[ALL_SOURCES], progress=False
    )
    assert np.isfinite(fs.X.to_numpy()).all()
    assert any(c.startswith("sua/paraphrase") for c in fs.schema)
    assert any(c.startswith("semantic_gradient/") for c in fs.schema)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("sources=hidden,nosuch", "subset of"),
        ("sources=", "subset of"),
        ("divergence=tv", "js or kl"),
        ("embed_sigma=0", "> 0"),
        ("hidden_steps=0", ">= 1"),
    ],
)
def test_bad_options_raise_clear_errors(option, message):
    assert_bad_option_fails("sua", option, message, _records())
