"""Sampling in the decoder (``perturbprobe.generate(n=, temperature=, top_p=, seed=)``):
reproducible, independent of the batch, equal to an uncached one-sample-at-a-time reference,
greedy in the limits, and distributed as softmax(logits / T) within the nucleus."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from decoder_reference import assert_branches_match_a_fresh_pass
from scipy import stats
from test_generate import PROMPTS  # the same prompts as the greedy tests
from tiny_models import make_tiny_llm

import perturbprobe
from perturbprobe import GuardConfig
from perturbprobe.decoding import generate_responses
from perturbprobe.decoding.config import SamplingConfig
from perturbprobe.decoding.decoder import _sample_seed, decode
from perturbprobe.errors import GenerationError

NEW_TOKENS = 10


def sample(llm, prompts, **options):
    options = {"max_new_tokens": NEW_TOKENS, "progress": False, **options}
    return perturbprobe.generate(llm, prompts, **options)


def ids(answers):
    """Token ids of answers, nested as given."""
    return [ids(a) if isinstance(a, list) else a.token_ids for a in answers]


# ============================================================ reproducible, batch-independent


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_samples_are_reproducible_and_independent_of_the_batch(arch):
    llm = make_tiny_llm(arch)
    options = {"n": 3, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    batched = sample(llm, PROMPTS, batch_size=3, **options)
    assert ids(sample(llm, PROMPTS, batch_size=3, **options)) == ids(batched)  # reproducible
    assert len(batched) == len(PROMPTS) and all(len(row) == 3 for row in batched)
    # another batch composition: all prompts together, in reverse order
    together = sample(llm, PROMPTS[::-1], batch_size=len(PROMPTS), **options)[::-1]
    assert ids(together) == ids(batched)
    for prompt, row in zip(PROMPTS, batched, strict=True):
        alone = sample(llm, prompt, **options)  # one prompt → a list of n answers
        assert ids(alone) == ids(row)
        for one, other in zip(alone, row, strict=True):
            assert one.mean_log_prob == pytest.approx(other.mean_log_prob, abs=1e-5)
    # sample k does not depend on n: n = 1 gives sample 0, n = 5 starts with the same 3
    assert ids(sample(llm, PROMPTS, **{**options, "n": 1})) == [row[0] for row in ids(batched)]
    assert [row[:3] for row in ids(sample(llm, PROMPTS, **{**options, "n": 5}))] == ids(batched)
    # the seed matters, and a prompt's samples differ from each other
    other_seed = sample(llm, PROMPTS, batch_size=3, **{**options, "seed": 8})
    assert all(a != b for a, b in zip(ids(other_seed), ids(batched), strict=True))
    assert all(len({tuple(s) for s in row}) == 3 for row in ids(batched))


def reference_sample(llm, prompt_ids, number, *, seed, temperature, max_new_tokens):
    """Sample ``number`` of a prompt, decoded one token at a time without a cache or a batch:
    a full forward pass over prompt + tokens so far, softmax(logits / T), one draw from the
    sample's own generator (seeded as the decoder documents)."""
    generator = torch.Generator().manual_seed(_sample_seed(seed, prompt_ids, number))
    stop, tokens = set(llm.end_of_turn_ids), []
    while len(tokens) < max_new_tokens:
        with torch.no_grad():
            logits = llm.model(input_ids=torch.tensor([prompt_ids + tokens])).logits[0, -1]
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        tokens.append(int(torch.multinomial(probs, 1, generator=generator)))
        if tokens[-1] in stop:
            break
    return tokens


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_samples_equal_an_uncached_one_sample_at_a_time_reference(arch):
    llm = make_tiny_llm(arch)
    answers = sample(llm, PROMPTS[:4], n=2, temperature=0.7, seed=3, batch_size=4)
    for prompt, row in zip(PROMPTS[:4], answers, strict=True):
        encoded = llm.prompt_ids(prompt)
        for number, answer in enumerate(row):
            expected = reference_sample(
                llm, encoded, number, seed=3, temperature=0.7, max_new_tokens=NEW_TOKENS
            )
            stopped = expected[-1] in llm.end_of_turn_ids
            assert answer.token_ids == (expected[:-1] if stopped else expected)
            assert answer.generated_tokens == len(expected)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sampled_branches_continue_from_the_right_cache_state(arch):
    """The n samples of a prompt share its prompt pass (the cache is forked after it): every
    sample's log-probs and entropies equal a fresh forward pass over prompt + sample, and are
    the model's own (temperature 1) log-probabilities."""
    llm = make_tiny_llm(arch)
    encoded = [llm.prompt_ids(p) for p in PROMPTS[:3]]
    decoded = decode(
        llm,
        encoded,
        max_new_tokens=NEW_TOKENS,
        sampling=SamplingConfig(n=3, temperature=0.5, top_p=0.8, seed=1),
    )
    assert sorted((b.prompt, b.sample) for b in decoded.branches) == [
        (p, k) for p in range(3) for k in range(3)
    ]
    assert decoded.forks == []
    assert_branches_match_a_fresh_pass(llm, encoded, decoded.branches)
    assert decoded.generated == [
        sum(len(b.token_ids) for b in decoded.branches if b.prompt == p) for p in range(3)
    ]


# ================================================================================ the limits


def test_temperature_zero_is_greedy_and_a_tiny_temperature_or_nucleus_too():
    llm = make_tiny_llm("llama")
    greedy = sample(llm, PROMPTS, batch_size=3)
    for temperature in (0, 0.0, None):  # exactly greedy: the same path, bitwise
        same = sample(llm, PROMPTS, batch_size=3, temperature=temperature, top_p=0.5, seed=9)
        assert [(a.token_ids, a.mean_log_prob, a.generated_tokens) for a in same] == [
            (a.token_ids, a.mean_log_prob, a.generated_tokens) for a in greedy
        ]
    copies = sample(llm, PROMPTS, batch_size=3, n=3, temperature=0)  # n greedy copies
    assert ids(copies) == [[a.token_ids] * 3 for a in greedy]
    cold = sample(llm, PROMPTS, batch_size=3, n=2, temperature=1e-6, seed=4)
    assert ids(cold) == [[a.token_ids] * 2 for a in greedy]
    narrow = sample(llm, PROMPTS, batch_size=3, n=2, temperature=1.0, top_p=1e-9, seed=4)
    assert ids(narrow) == [[a.token_ids] * 2 for a in greedy]


def test_samples_at_temperature_one_differ_from_greedy():
    llm = make_tiny_llm("qwen2")
    greedy = ids(sample(llm, PROMPTS))
    sampled = ids(sample(llm, PROMPTS, n=4, temperature=1.0, seed=0))
    for row, answer in zip(sampled, greedy, strict=True):
        assert all(tokens != answer for tokens in row)


# ============================================================ the distribution of a token


def first_token_distribution(llm, prompt_ids, temperature, top_p) -> np.ndarray:
    """softmax(logits / T) of the first response token, restricted to the nucleus, in float64."""
    with torch.no_grad():
        logits = llm.model(input_ids=torch.tensor([prompt_ids])).logits[0, -1].double()
    probs = torch.softmax(logits / temperature, -1).numpy()
    order = np.argsort(-probs, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]
    kept = order[before < top_p]
    if top_p < 1:  # the nucleus must not hinge on float32 rounding
        margins = np.abs(np.cumsum(probs[order]) - top_p)
        assert margins.min() > 1e-4, "pick a top_p away from a cumulative-probability boundary"
    nucleus = np.zeros_like(probs)
    nucleus[kept] = probs[kept]
    return nucleus / nucleus.sum()


def chi_square_p_value(counts: np.ndarray, expected_probs: np.ndarray, min_mass=0.04) -> float:
    """Pearson's chi-square p-value of token ``counts`` against ``expected_probs``, tokens
    grouped (most likely first) into bins of at least ``min_mass`` expected probability."""
    order = np.argsort(-expected_probs, kind="stable")
    bins, current, mass = [], [], 0.0
    for token in order:
        current.append(token)
        mass += expected_probs[token]
        if mass >= min_mass:
            bins.append(current)
            current, mass = [], 0.0
    if current:
        bins[-1].extend(current)
    observed = np.array([counts[b].sum() for b in bins], dtype=np.float64)
    expected = np.array([expected_probs[b].sum() for b in bins]) * counts.sum()
    return float(stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)


DRAWS = 4000


@pytest.mark.parametrize(
    ("temperature", "top_p"), [(1.0, 1.0), (0.3, 1.0), (0.5, 0.25), (2.0, 0.5)]
)
def test_the_first_token_is_distributed_as_the_tempered_nucleus(temperature, top_p):
    """4000 samples of one prompt's first token (fixed seeds: the test is deterministic)
    against softmax(logits / T) within the nucleus: a chi-square test that a wrong temperature
    or nucleus fails by far."""
    llm = make_tiny_llm("llama")
    encoded = llm.prompt_ids(PROMPTS[2])
    decoded = decode(
        llm,
        [encoded],
        max_new_tokens=1,
        sampling=SamplingConfig(n=DRAWS, temperature=temperature, top_p=top_p, seed=11),
    )
    tokens = np.array([branch.token_ids[0] for branch in decoded.branches])
    vocab = llm.model.config.vocab_size
    counts = np.bincount(tokens, minlength=vocab)
    expected = first_token_distribution(llm, encoded, temperature, top_p)
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(expected))  # only the nucleus
    if top_p < 1:
        assert len(np.flatnonzero(counts)) > 1  # more than the greedy token
    assert chi_square_p_value(counts, expected) > 1e-3
    # the test has power: the same draws against another temperature fail it by far
    wrong = first_token_distribution(llm, encoded, temperature * 2, 1.0)
    assert chi_square_p_value(counts, wrong) < 1e-6


# ================================================================================ the API


def test_generate_responses_samples_too():
    llm = make_tiny_llm("llama")
    options = {"max_new_tokens": NEW_TOKENS, "progress": False, "temperature": 1.0, "seed": 2}
    texts = generate_responses(llm, PROMPTS[:3], n=2, **options)
    answers = perturbprobe.generate(llm, PROMPTS[:3], n=2, **options)
    assert texts == [[a.response for a in row] for row in answers]
    assert generate_responses(llm, PROMPTS[:3], **options) == [row[0] for row in texts]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n": 0}, "sampling: n must be an integer >= 1, got 0"),
        ({"n": 2.0}, "sampling: n must be an integer >= 1, got 2.0"),
        ({"temperature": -0.5}, "sampling: temperature must be a finite number >= 0"),
        ({"temperature": float("nan")}, "sampling: temperature must be a finite number >= 0"),
        ({"temperature": "1"}, "sampling: temperature must be a finite number >= 0"),
        ({"top_p": 0.0}, r"sampling: top_p must be in \(0, 1\], got 0.0"),
        ({"top_p": 1.5}, r"sampling: top_p must be in \(0, 1\]"),
        ({"seed": 1.5}, "sampling: seed must be an integer, got 1.5"),
        ({"guard": GuardConfig(), "temperature": 1.0}, "n, temperature, top_p and seed are for"),
        ({"guard": GuardConfig(), "n": 2}, "a guard samples its branches with GuardConfig"),
        ({"guard": GuardConfig(), "seed": 3}, "are for unguarded decoding"),
    ],
)
def test_bad_sampling_options_are_clear_errors(options, message):
    llm = make_tiny_llm("llama")
    with pytest.raises(GenerationError, match=message):
        perturbprobe.generate(llm, PROMPTS[:1], progress=False, **options)


def test_decode_refuses_guard_and_sampling_together():
    llm = make_tiny_llm("llama")
    with pytest.raises(GenerationError, match="give guard or sampling, not both"):
        decode(
            llm,
            [llm.prompt_ids(PROMPTS[0])],
            max_new_tokens=2,
            guard=GuardConfig(),
            sampling=SamplingConfig(temperature=1.0),
        )
