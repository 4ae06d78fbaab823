"""``semantic_gradient`` against independent computations on tiny random models: autograd on the
model's own parameters and hidden states (one pair at a time, no batching, no closed forms),
finite differences in float64, tied and soft-capped heads, and the options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from feature_helpers import assert_bad_option_fails
from qa_records import qa_records
from tiny_models import ARCHS, build_model, build_tokenizer, make_tiny_llm

from perturbprobe.features import ExtractorConfig, default_semantic_offset, extract
from perturbprobe.features.embedding_pass import EmbeddingPass, GradientRequest
from perturbprobe.llm import LLM

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

FAMILY = "semantic_gradient"


def _records():
    return qa_records()


def _pairs(llm):
    return [llm.encode_pair(list(r.messages), r.response) for r in _records()]


def _reference(llm, pair, offset, band):
    """Every scalar of the family for one pair, by autograd on the model itself.

    Λ = (1/T) Σ ω_t log p(y_t) from the model's own logits (ω = entropy, detached); its
    gradient w.r.t. ``hidden_states[l]`` (at t*) and w.r.t. the LM-head weight *parameter*
    (for a tied model that is the embedding table too, so autograd includes the lookup).
    """
    model = llm.model
    ids = torch.tensor([pair.input_ids])
    start, length = len(pair.prompt_ids), len(pair.response_ids)
    weight = model.get_output_embeddings().weight
    out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    rows = torch.arange(start - 1, start + length - 1)
    log_p = torch.log_softmax(out.logits[0, rows].double(), dim=-1)  # (T, V)
    picked = log_p[torch.arange(length), torch.tensor(pair.response_ids)]
    entropy = -(log_p.exp() * log_p).sum(dim=-1).detach()
    t_star = start - offset
    values = {}
    for name, omega in (("weighted", entropy), ("uniform", torch.ones_like(entropy))):
        loss = (omega * picked).sum() / length
        layers = [out.hidden_states[layer] for layer in band]
        grads = torch.autograd.grad(loss, [*layers, weight], retain_graph=True)
        at_t = torch.stack([g[0, t_star] for g in grads[:-1]]).double()  # (n_layers, D)
        values[name] = (at_t, grads[-1].double())
    # The head part alone: the same loss through the head applied to detached final states.
    final = out.hidden_states[-1][0, rows].detach()
    head_log_p = torch.log_softmax(model.get_output_embeddings()(final).double(), dim=-1)
    if getattr(model.config, "final_logit_softcapping", None):
        cap = model.config.final_logit_softcapping
        z = model.get_output_embeddings()(final)
        head_log_p = torch.log_softmax((cap * torch.tanh(z / cap)).double(), dim=-1)
    head_loss = (entropy * head_log_p[torch.arange(length), torch.tensor(pair.response_ids)]).sum()
    (head_grad,) = torch.autograd.grad(head_loss / length, weight)
    sem_w, para_w = values["weighted"]
    sem_u, para_u = values["uniform"]
    share = float(torch.exp(-entropy.mean()))
    return {
        "semgrad": sem_w.abs().mean().item(),
        "semgrad_unweighted": sem_u.abs().mean().item(),
        "semgrad_l2": sem_w.norm().item(),
        "paragrad": para_w.abs().mean().item(),
        "paragrad_head": head_grad.double().abs().mean().item(),
        "paragrad_unweighted": para_u.abs().mean().item(),
        "paragrad_l2": para_w.norm().item(),
        "hybridgrad": (1 - share) * sem_w.abs().mean().item() + share * para_w.abs().mean().item(),
        "mean_entropy": entropy.mean().item(),
        **{f"semgrad_layer_{layer}": sem_w[k].abs().mean().item() for k, layer in enumerate(band)},
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_every_column_matches_autograd_on_the_model(arch):
    """Covers untied (Llama, Qwen2, Mistral, Phi-3) and tied heads (GPT-2; Gemma-2 also with
    soft-capping and a √D embedding scale), batched and padded against one pair at a time."""
    llm = make_tiny_llm(arch)
    fs = extract(llm, _records(), families=FAMILY, batch_size=3, progress=False)
    offset = default_semantic_offset(llm)
    band = tuple(range(llm.num_layers - llm.num_layers // 2, llm.num_layers))
    for pair, record in zip(_pairs(llm), _records(), strict=True):
        expected = _reference(llm, pair, offset, band)
        row = fs.features.set_index("record_id").loc[record.id]
        for name, value in expected.items():
            assert row[f"{FAMILY}/{name}"] == pytest.approx(value, rel=2e-4, abs=1e-9), name
    tied = arch in ("gpt2", "gemma2")
    head_only = fs.features[f"{FAMILY}/paragrad_head"]
    full = fs.features[f"{FAMILY}/paragrad"]
    assert (full != head_only).all() if tied else (full == head_only).all()


@pytest.fixture(scope="module")
def llm64():
    """A float64 tiny GPT-2 with 4 layers (band 2…3): finite differences without float32 noise."""
    tokenizer = build_tokenizer("gpt2")
    model = build_model("gpt2", tokenizer, seed=4, num_layers=4).to(torch.float64)
    return LLM(model, tokenizer, name="tiny-gpt2-4-f64")


def _weighted_loss(llm, pair, layer, t_star, bump, omega):
    """Σ ω_t log p(y_t) with ``bump`` (D,) added to ``hidden_states[layer]`` at t*, via a
    pre-hook on the block that reads it."""
    block = llm.model.transformer.h[layer]

    def add(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        hidden = hidden.clone()
        hidden[0, t_star] += bump
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = block.register_forward_pre_hook(add, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = llm.model(input_ids=torch.tensor([pair.input_ids])).logits[0]
    finally:
        handle.remove()
    start, length = len(pair.prompt_ids), len(pair.response_ids)
    log_p = torch.log_softmax(logits[start - 1 : start + length - 1], dim=-1)
    return float((omega * log_p[torch.arange(length), torch.tensor(pair.response_ids)]).sum())


def test_hidden_state_gradient_matches_finite_differences(llm64):
    pairs = _pairs(llm64)
    offset, layers = 1, (2, 3)
    request = GradientRequest(entropy_weighted=True, semantic_offset=offset, hidden_layers=layers)
    ep = EmbeddingPass(llm64, pairs, llm64.head, chunk_tokens=8, request=request)
    flat = 0
    eps = 1e-6
    for b, pair in enumerate(pairs):
        length = len(pair.response_ids)
        omega = ep.entropy[flat : flat + length]
        flat += length
        t_star = len(pair.prompt_ids) - offset
        assert int(ep.semantic_positions[b]) == t_star
        for k, layer in enumerate(layers):
            for dim in (0, 5):
                bump = torch.zeros(llm64.model.config.hidden_size, dtype=torch.float64)
                bump[dim] = eps
                up = _weighted_loss(llm64, pair, layer, t_star, bump, omega)
                down = _weighted_loss(llm64, pair, layer, t_star, -bump, omega)
                fd = (up - down) / (2 * eps)
                got = ep.hidden_gradients["entropy"][b, k, dim].item()
                assert got == pytest.approx(fd, rel=1e-5, abs=1e-9)
                ones = torch.ones_like(omega)
                up = _weighted_loss(llm64, pair, layer, t_star, bump, ones)
                down = _weighted_loss(llm64, pair, layer, t_star, -bump, ones)
                got = ep.hidden_gradients["uniform"][b, k, dim].item()
                assert got == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)


def test_two_losses_in_one_backward_equal_two_separate_backwards(llm64):
    pairs = _pairs(llm64)
    both = EmbeddingPass(llm64, pairs, llm64.head, 8, GradientRequest(entropy_weighted=True))
    alone = EmbeddingPass(llm64, pairs, llm64.head, 8)
    torch.testing.assert_close(both.gradient, alone.gradient, rtol=1e-12, atol=1e-15)
    # ℓ_ω by hand: ω_t-weighted cotangents through an ordinary backward, pair by pair.
    flat = 0
    for b, pair in enumerate(pairs):
        ids = torch.tensor([pair.input_ids])
        embeds = llm64.embed(ids).detach().requires_grad_(True)
        logits = llm64.model(inputs_embeds=embeds).logits[0]
        start, length = len(pair.prompt_ids), len(pair.response_ids)
        log_p = torch.log_softmax(logits[start - 1 : start + length - 1], dim=-1)
        picked = log_p[torch.arange(length), torch.tensor(pair.response_ids)]
        omega = both.entropy[flat : flat + length]
        flat += length
        (expected,) = torch.autograd.grad((omega * picked).sum(), embeds)
        n = len(pair.input_ids)
        torch.testing.assert_close(both.entropy_gradient[b, :n], expected[0], rtol=1e-9, atol=1e-12)


def test_results_do_not_depend_on_batch_size_or_chunking():
    llm = make_tiny_llm("qwen2")
    one = extract(llm, _records(), families=FAMILY, batch_size=1, progress=False)
    three = extract(llm, _records(), families=FAMILY, batch_size=3, memory_mb=0.05, progress=False)
    columns = one.schema
    np.testing.assert_allclose(one.X.to_numpy(), three.X.to_numpy(), rtol=2e-4)
    assert columns == three.schema


def test_options_set_t_star_and_the_band_and_are_recorded():
    llm = make_tiny_llm("llama")
    overrides = [f"{FAMILY}.semantic_offset=2", f"{FAMILY}.layer_band=0-2"]
    fs = extract(llm, _records(), families=FAMILY, overrides=overrides, progress=False)
    layers = [c for c in fs.schema if "semgrad_layer_" in c]
    assert layers == [f"{FAMILY}/semgrad_layer_{k}" for k in (0, 1, 2)]
    options = fs.manifest["config"]["families"][FAMILY]
    assert options == {"semantic_offset": 2, "layer_band": "0-2"}
    default = extract(llm, _records(), families=FAMILY, progress=False)
    assert not np.allclose(default.X.iloc[:, 0], fs.X.iloc[:, 0])  # another t* → another semgrad
    config = ExtractorConfig.from_dict(fs.manifest["config"])
    again = extract(llm, _records(), config=config, progress=False)
    np.testing.assert_array_equal(again.X.to_numpy(), fs.X.to_numpy())


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("layer_band=5-3", "first <= last"),
        ("layer_band=top", "first-last"),
        ("layer_band=1-9", "exceeds"),
        ("semantic_offset=-1", ">= 0"),
    ],
)
def test_bad_options_raise_clear_errors(option, message):
    assert_bad_option_fails(FAMILY, option, message, _records())
