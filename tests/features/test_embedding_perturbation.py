"""``embedding_perturbation`` and the EmbeddingPass behind it, against independent computations
on tiny random models: autograd through the whole model in float64, finite differences,
naive per-pair forward passes, causality, seeding and batch-size invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qa_records import qa_records
from tiny_models import build_model, build_tokenizer, make_tiny_llm

from perturbprobe.errors import ExtractionError
from perturbprobe.features import (
    EmbeddingPerturbation,
    EmbeddingPerturbationConfig,
    ExtractorConfig,
    extract,
)
from perturbprobe.features.embedding_pass import EmbeddingPass
from perturbprobe.llm import LLM

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

FAMILY = "embedding_perturbation"


def _records():
    return qa_records()


@pytest.fixture(scope="module")
def llm64():
    """A float64 tiny GPT-2: gradients and finite differences without float32 noise (GPT-2's
    LayerNorm keeps float64; Llama-style RMSNorm computes in float32 whatever the dtype)."""
    tokenizer = build_tokenizer("gpt2")
    model = build_model("gpt2", tokenizer, seed=3).to(torch.float64)
    return LLM(model, tokenizer, name="tiny-gpt2-f64")


def _pairs(llm):
    return [llm.encode_pair(list(r.messages), r.response) for r in _records()]


def _naive_log_probs(llm, pair, embeds):
    """Σ-free reference: log p(y_t) (T,) of one pair from the model's own logits."""
    logits = llm.model(inputs_embeds=embeds[None]).logits[0]  # (L, V)
    start, length = len(pair.prompt_ids), len(pair.response_ids)
    ids = torch.tensor(pair.response_ids)
    rows = torch.arange(start - 1, start + length - 1)
    return torch.log_softmax(logits[rows].double(), dim=-1)[torch.arange(length), ids]


def test_gradient_matches_autograd_and_finite_differences(llm64):
    pairs = _pairs(llm64)
    ep = EmbeddingPass(llm64, pairs, llm64.head, chunk_tokens=4)
    flat = 0
    for b, pair in enumerate(pairs):
        ids = torch.tensor(pair.input_ids)
        embeds = llm64.embed(ids[None])[0].detach().requires_grad_(True)  # (L_b, D)
        log_probs = _naive_log_probs(llm64, pair, embeds)
        (reference,) = torch.autograd.grad(log_probs.sum(), embeds)
        n = len(pair.input_ids)
        # Same float64 arithmetic, batched and padded: agreement to rounding.
        torch.testing.assert_close(ep.gradient[b, :n], reference, rtol=1e-9, atol=1e-12)
        assert (ep.gradient[b, n:] == 0).all()  # padding gets no gradient
        torch.testing.assert_close(
            ep.log_probs[flat : flat + len(pair.response_ids)], log_probs.detach(), rtol=1e-10,
            atol=1e-12,
        )  # fmt: skip
        flat += len(pair.response_ids)
        # Central finite differences on a few coordinates, float64: truncation ~eps² = 1e-12,
        # rounding ~1e-16·|ℓ|/eps ≈ 1e-9.
        eps = 1e-6
        for position, dim in [(0, 0), (n // 2, 3), (n - 2, 7)]:
            with torch.no_grad():
                bumped = embeds.detach().clone()
                bumped[position, dim] += eps
                up = _naive_log_probs(llm64, pair, bumped).sum()
                bumped[position, dim] -= 2 * eps
                down = _naive_log_probs(llm64, pair, bumped).sum()
            fd = float((up - down) / (2 * eps))
            assert ep.gradient[b, position, dim].item() == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_no_parameter_gradients_are_left_on_the_model(llm64):
    EmbeddingPass(llm64, _pairs(llm64), llm64.head, chunk_tokens=64)
    assert all(p.grad is None for p in llm64.model.parameters())


def test_adversarial_scores_match_their_definition_per_pair(llm64):
    config = EmbeddingPerturbationConfig(linf_alpha=1e-3, l2_alpha=1e-2)
    family = EmbeddingPerturbation(config)
    pairs = _pairs(llm64)
    ep = EmbeddingPass(llm64, pairs, llm64.head, chunk_tokens=64)
    scores = family.token_scores(ep)  # (N, 3)
    flat = 0
    for pair in pairs:
        ids = torch.tensor(pair.input_ids)
        embeds = llm64.embed(ids[None])[0].detach().requires_grad_(True)
        base = _naive_log_probs(llm64, pair, embeds)
        (gradient,) = torch.autograd.grad(base.sum(), embeds)
        with torch.no_grad():
            linf = base - _naive_log_probs(llm64, pair, embeds - 1e-3 * gradient.sign())
            l2 = base - _naive_log_probs(llm64, pair, embeds - 1e-2 * gradient)
        rows = slice(flat, flat + len(pair.response_ids))
        # float64 throughout; differences of log-probabilities of size ~5: rounding ~1e-14.
        torch.testing.assert_close(scores[rows, 0], linf.detach(), rtol=1e-6, atol=1e-11)
        torch.testing.assert_close(scores[rows, 1], l2.detach(), rtol=1e-6, atol=1e-11)
        assert (linf > 0).float().mean() > 0.5  # stepping against the gradient lowers log p
        flat += len(pair.response_ids)


def test_causality_future_perturbations_do_not_change_earlier_tokens(llm64):
    pairs = _pairs(llm64)
    ep = EmbeddingPass(llm64, pairs, llm64.head, chunk_tokens=64)
    t = 1  # the second response token of every pair
    delta = torch.randn((1, *ep.embeddings.shape), dtype=torch.float64)
    for b in range(len(pairs)):
        delta[0, b, : int(ep.token_positions[b, t])] = 0  # perturb only positions ≥ p_t
    perturbed = ep.log_prob_y(delta)[0]
    starts = np.cumsum([0] + [len(p.response_ids) for p in pairs])[:-1]
    for b, start in enumerate(starts):
        before = slice(int(start), int(start) + t + 1)  # tokens 0..t only see positions < p_t
        torch.testing.assert_close(perturbed[before], ep.log_probs[before], rtol=0, atol=1e-9)
        later = int(start) + t + 1
        if later < int(start) + len(pairs[b].response_ids):
            assert not torch.isclose(perturbed[later], ep.log_probs[later])


def test_random_variant_is_seeded_and_independent_of_the_batch(llm64):
    pairs = _pairs(llm64)
    family = EmbeddingPerturbation(EmbeddingPerturbationConfig(samples=6, seed=5))
    together = family.token_scores(EmbeddingPass(llm64, pairs, llm64.head, 64))[:, 2]
    again = family.token_scores(EmbeddingPass(llm64, pairs, llm64.head, 64))[:, 2]
    assert torch.equal(together, again)
    alone = torch.cat(
        [family.token_scores(EmbeddingPass(llm64, [p], llm64.head, 64))[:, 2] for p in pairs]
    )
    torch.testing.assert_close(alone, together, rtol=1e-6, atol=0)
    other = EmbeddingPerturbation(EmbeddingPerturbationConfig(samples=6, seed=6))
    assert not torch.equal(other.token_scores(EmbeddingPass(llm64, pairs, llm64.head, 64))[:, 2],
                           together)  # fmt: skip
    assert (together > 0).all()


def test_random_variance_matches_a_naive_loop(llm64):
    pairs = _pairs(llm64)[:1]
    ep = EmbeddingPass(llm64, pairs, llm64.head, 64)
    family = EmbeddingPerturbation(EmbeddingPerturbationConfig(samples=4, sigma=1e-2))
    deltas = ep.gaussian_noise(1e-2, 4, family.config.seed)  # (4, 1, L, D)
    assert deltas.std().item() == pytest.approx(1e-2, rel=0.1)
    with torch.no_grad():
        probs = torch.stack(
            [_naive_log_probs(llm64, pairs[0], ep.embeddings[0] + d[0]).exp() for d in deltas]
        )
    expected = probs.var(dim=0, correction=0)
    torch.testing.assert_close(family.token_scores(ep)[:, 2], expected, rtol=1e-6, atol=1e-15)


def test_response_level_peaks_match_a_naive_computation():
    llm = make_tiny_llm("llama")
    fs = extract(llm, _records(), families=FAMILY, progress=False)
    for record_id in fs.record_ids:
        tokens = fs.token_matrix(record_id)  # (T, 3)
        row = fs.features.set_index("record_id").loc[record_id]
        for k, score in enumerate(("linf_adv", "l2_adv", "random")):
            values = np.sort(tokens[:, k])[::-1]
            for top in (3, 5):
                expected = values[:top].mean()
                assert row[f"{FAMILY}/{score}:top{top}_mean"] == pytest.approx(expected, rel=1e-5)
            position = (int(np.argmax(tokens[:, k])) + 1) / len(tokens)
            assert row[f"{FAMILY}/{score}:argmax_rel_pos"] == pytest.approx(position)
            assert row[f"{FAMILY}/{score}:mean"] == pytest.approx(tokens[:, k].mean(), rel=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma2", "gpt2", "phi3"])
def test_every_architecture_extracts_finite_values_independent_of_batch_size(arch):
    llm = make_tiny_llm(arch)
    config = ExtractorConfig.create(["baseline", FAMILY], [f"{FAMILY}.samples=4"])
    together = extract(llm, _records(), config=config, batch_size=3, progress=False)
    alone = extract(llm, _records(), config=config, batch_size=1, progress=False)
    assert np.isfinite(together.X.to_numpy()).all()
    columns = [c for c in together.schema if not c.startswith(f"{FAMILY}/random")]
    # Padding changes float32 summation order: adversarial drops agree to ~1e-6 absolute.
    np.testing.assert_allclose(together.X[columns], alone.X[columns], rtol=1e-3, atol=2e-6)
    random = [c for c in together.schema if c.startswith(f"{FAMILY}/random")]
    np.testing.assert_allclose(together.X[random], alone.X[random], rtol=2e-2, atol=1e-12)


def test_config_validation():
    with pytest.raises(ExtractionError, match="samples must be >= 2"):
        EmbeddingPerturbationConfig(samples=1)
    with pytest.raises(ExtractionError, match="sigma must be > 0"):
        ExtractorConfig.create([FAMILY], [f"{FAMILY}.sigma=0"])
