"""The LLM adapter on tiny random models of every tested family (no hub, no GPU).

What is checked, per architecture: the head as a function reproduces the model's own logits
(soft-capping included), batching/padding does not change per-pair results, the response span
follows FEATURES.md "Common ground" (template, ``eot`` and fallback encodings, plain
concatenation without a template), per-layer hidden states, input errors, and the identity.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from tiny_models import (
    ARCHS,
    FAMILIES,
    GEMMA2_SOFTCAP,
    HIDDEN_SIZE,
    NUM_LAYERS,
    TEMPLATE_ARCHS,
    build_model,
    build_tokenizer,
    make_tiny_llm,
)

from perturbprobe.errors import PairEncodingError, PerturbprobeError
from perturbprobe.llm import LLM, TESTED_MODEL_TYPES, EncodedPair, UntestedArchitectureWarning

# Three conversations of different prompt and response lengths (none is longest in both), one
# with a system prompt and one multi-turn, so batches are padded and every template branch runs.
CONVERSATIONS = [
    (
        [{"role": "user", "content": "What is the capital of France?"}],
        "The capital of France is Paris.",
    ),
    (
        [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "Add two and two."},
        ],
        "Four.",
    ),
    (
        [
            {"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one, please, and explain why you like it."},
        ],
        "Green, because it reminds me of the forest in spring when the trees are new.",
    ),
    (
        [{"role": "user", "content": "Is water wet?"}],
        "Yes.",
    ),
]

# Same float32 ops on the same padded input (the adapter runs ``base_model`` then the head; the
# reference runs the full ``...ForCausalLM``): on CPU this is bit-identical in practice; the small
# tolerance only leaves room for a BLAS that splits reductions differently between the two calls.
SAME_INPUT_TOL = {"atol": 1e-5, "rtol": 1e-5}
# A batch of padded pairs vs one pair at a time: right padding never reaches earlier positions of
# a causal model (masked attention weights are exactly 0), but the matrix products run with other
# shapes, so float32 rounding may differ by a few ulps per reduction; 2 layers of width 32 and
# values of order 1-10 stay far below 1e-4.
BATCH_TOL = {"atol": 1e-4, "rtol": 1e-4}


def encode_all(llm: LLM, **kwargs) -> list[EncodedPair]:
    return [llm.encode_pair(messages, response, **kwargs) for messages, response in CONVERSATIONS]


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def token_id(tokenizer, token: str) -> int:
    return tokenizer.get_vocab()[token]


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture(params=TEMPLATE_ARCHS)
def template_arch(request) -> str:
    return request.param


# ---- the tiny models themselves -----------------------------------------------------------------
def test_tiny_models_cover_every_tested_model_type():
    assert set(ARCHS) == set(TESTED_MODEL_TYPES)


def test_tiny_model_shapes_and_construction(arch):
    llm = make_tiny_llm(arch)
    assert llm.config.model_type == arch
    assert llm.num_layers == NUM_LAYERS
    assert llm.head.weight.shape == (len(llm.tokenizer), HIDDEN_SIZE)
    assert llm.dtype == torch.float32
    assert not llm.model.training
    assert llm.has_chat_template is (arch != "gpt2")
    # The head is the model's own output layer, not a copy.
    assert llm.head.weight is llm.model.get_output_embeddings().weight
    # Wrapping a tested model type raises no "untested architecture" warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntestedArchitectureWarning)
        LLM(llm.model, llm.tokenizer, name="again")


def test_untested_model_type_warns():
    model = copy.deepcopy(make_tiny_llm("llama").model)
    model.config.model_type = "my_custom_llama"
    with pytest.warns(UntestedArchitectureWarning, match="my_custom_llama"):
        LLM(model, make_tiny_llm("llama").tokenizer, name="custom")


def test_end_of_turn_ids_prefer_the_chat_marker(arch):
    llm = make_tiny_llm(arch)
    family = FAMILIES[arch]
    tokenizer = llm.tokenizer
    assert llm.end_of_turn_ids[0] == token_id(tokenizer, family.end_of_turn)
    assert tokenizer.eos_token_id in llm.end_of_turn_ids
    assert len(set(llm.end_of_turn_ids)) == len(llm.end_of_turn_ids)


# ---- the head reproduces the model's logits ----------------------------------------------------
def test_head_reproduces_model_logits(arch):
    llm = make_tiny_llm(arch)
    pairs = encode_all(llm)
    out = llm.teacher_forced(pairs)
    with torch.no_grad():
        reference = llm.model(input_ids=out.input_ids, attention_mask=out.attention_mask).logits
        single_reference = [
            llm.model(input_ids=torch.tensor([pair.input_ids])).logits[0] for pair in pairs
        ]
    for i, pair in enumerate(pairs):
        n_prompt, n_response = len(pair.prompt_ids), len(pair.response_ids)
        got = out.pair(i)
        expected = reference[i, n_prompt - 1 : n_prompt + n_response - 1]
        assert got["logits"].shape == (n_response, len(llm.tokenizer))
        torch.testing.assert_close(llm.head(got["final_hidden"]), expected, **SAME_INPUT_TOL)
        torch.testing.assert_close(got["logits"], expected, **SAME_INPUT_TOL)
        # The unpadded pair through the model on its own (batch tolerance: other shapes).
        expected_single = single_reference[i][n_prompt - 1 : n_prompt + n_response - 1]
        torch.testing.assert_close(got["logits"], expected_single, **BATCH_TOL)
        # The ids being scored are the response ids, at positions I .. I+T-1.
        assert got["response_ids"].tolist() == list(pair.response_ids)
        assert out.input_ids[i, n_prompt : n_prompt + n_response].tolist() == list(
            pair.response_ids
        )


def test_head_linearity_and_soft_capping(arch):
    llm = make_tiny_llm(arch)
    head = llm.head
    out = llm.teacher_forced(encode_all(llm))
    hidden = out.final_hidden[out.response_mask]  # (N, D) real response positions
    linear = F.linear(hidden, head.weight, head.bias)
    if arch == "gemma2":
        assert head.is_linear is False
        assert head.softcap == pytest.approx(GEMMA2_SOFTCAP)
        capped = head(hidden)
        torch.testing.assert_close(
            capped, GEMMA2_SOFTCAP * torch.tanh(linear / GEMMA2_SOFTCAP), **SAME_INPUT_TOL
        )
        # The tiny model's logits are in the non-linear regime: the plain linear map is far off,
        # so the logit comparison above would fail if the capping were dropped.
        assert (capped - linear).abs().max() > 1.0
        assert capped.abs().max() <= GEMMA2_SOFTCAP
    else:
        assert head.is_linear is True
        assert head.softcap is None
        torch.testing.assert_close(head(hidden), linear, **SAME_INPUT_TOL)
    assert llm.identity()["head_is_linear"] is head.is_linear


def test_head_with_bias_reproduces_model_logits():
    """None of the tested families has a head bias: graft one on (a copy) to cover that path."""
    base = make_tiny_llm("llama")
    model = copy.deepcopy(base.model)
    old = model.get_output_embeddings()
    new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        new.bias.normal_(0.0, 1.0)
    model.set_output_embeddings(new)
    llm = LLM(model, base.tokenizer, name="biased")
    assert llm.head.bias is new.bias
    pairs = encode_all(llm)
    out = llm.teacher_forced(pairs)
    with torch.no_grad():
        reference = model(input_ids=out.input_ids, attention_mask=out.attention_mask).logits
    for i, pair in enumerate(pairs):
        n_prompt, n_response = len(pair.prompt_ids), len(pair.response_ids)
        expected = reference[i, n_prompt - 1 : n_prompt + n_response - 1]
        torch.testing.assert_close(out.pair(i)["logits"], expected, **SAME_INPUT_TOL)
    # The bias matters: without it the logits are off by about its size.
    unbiased = base.teacher_forced(pairs).logits
    assert (out.logits - unbiased)[out.response_mask].abs().max() > 0.5


def test_teacher_forced_without_logits(arch):
    llm = make_tiny_llm(arch)
    pairs = encode_all(llm)
    with_logits = llm.teacher_forced(pairs)
    without = llm.teacher_forced(pairs, logits=False)
    assert without.logits is None
    assert without.hidden_states is None
    assert "logits" not in without.pair(0)
    torch.testing.assert_close(without.final_hidden, with_logits.final_hidden, **SAME_INPUT_TOL)


def test_embed_is_what_inputs_embeds_takes(arch):
    llm = make_tiny_llm(arch)
    pair = encode_all(llm)[0]
    input_ids = torch.tensor([pair.input_ids])
    embeds = llm.embed(input_ids)
    assert embeds.shape == (1, len(pair.input_ids), HIDDEN_SIZE)
    with torch.no_grad():
        from_ids = llm.model(input_ids=input_ids).logits
        from_embeds = llm.model(inputs_embeds=embeds).logits
    torch.testing.assert_close(from_embeds, from_ids, **SAME_INPUT_TOL)


# ---- batching -----------------------------------------------------------------------------------
def test_batch_matches_one_pair_at_a_time(arch):
    llm = make_tiny_llm(arch)
    pairs = encode_all(llm)
    prompt_lengths = [len(p.prompt_ids) for p in pairs]
    response_lengths = [len(p.response_ids) for p in pairs]
    assert len(set(prompt_lengths)) >= 3 and len(set(response_lengths)) >= 3
    assert len({len(p.input_ids) for p in pairs}) >= 3  # padding really happens

    batch = llm.teacher_forced(pairs)
    t_max, l_max = max(response_lengths), max(len(p.input_ids) for p in pairs)
    assert batch.final_hidden.shape == (len(pairs), t_max, HIDDEN_SIZE)
    assert batch.logits.shape == (len(pairs), t_max, len(llm.tokenizer))
    assert batch.input_ids.shape == batch.attention_mask.shape == (len(pairs), l_max)
    assert batch.prompt_lengths.tolist() == prompt_lengths
    assert batch.response_lengths.tolist() == response_lengths

    for i, pair in enumerate(pairs):
        n = len(pair.input_ids)
        # Right padding: the pair's ids first, then padding masked out.
        assert batch.input_ids[i, :n].tolist() == list(pair.input_ids)
        assert batch.attention_mask[i].tolist() == [1] * n + [0] * (l_max - n)
        t = response_lengths[i]
        assert batch.response_mask[i].tolist() == [True] * t + [False] * (t_max - t)
        assert batch.response_ids[i, t:].eq(0).all()
        assert batch.final_hidden[i, t:].eq(0).all()

        single = llm.teacher_forced([pair])
        assert single.final_hidden.shape == (1, t, HIDDEN_SIZE)
        got, expected = batch.pair(i), single.pair(0)
        assert got["response_ids"].tolist() == expected["response_ids"].tolist()
        assert got["response_ids"].tolist() == list(pair.response_ids)
        torch.testing.assert_close(got["final_hidden"], expected["final_hidden"], **BATCH_TOL)
        torch.testing.assert_close(got["logits"], expected["logits"], **BATCH_TOL)


def test_teacher_forced_needs_pairs():
    with pytest.raises(ValueError, match="at least one pair"):
        make_tiny_llm("llama").teacher_forced([])


# ---- hidden states ------------------------------------------------------------------------------
def test_hidden_states_last_layer_is_final_hidden(arch):
    llm = make_tiny_llm(arch)
    pairs = encode_all(llm)
    out = llm.teacher_forced(pairs, hidden_states=True)
    assert out.hidden_states is not None
    assert len(out.hidden_states) == llm.num_layers + 1
    l_max = out.input_ids.shape[1]
    for layer in out.hidden_states:
        assert layer.shape == (len(pairs), l_max, HIDDEN_SIZE)
    # Index 0 is the embedding output, not a decoder layer's: for the families whose decoder
    # input is the plain embedding lookup it equals embed(input_ids).
    if arch in ("llama", "qwen2", "mistral", "phi3"):
        torch.testing.assert_close(out.hidden_states[0], llm.embed(out.input_ids))
    for i, pair in enumerate(pairs):
        n_prompt, n_response = len(pair.prompt_ids), len(pair.response_ids)
        torch.testing.assert_close(
            out.hidden_states[-1][i, n_prompt - 1 : n_prompt + n_response - 1],
            out.pair(i)["final_hidden"],
            **SAME_INPUT_TOL,
        )
    # Requesting hidden states does not change the response results.
    plain = llm.teacher_forced(pairs)
    torch.testing.assert_close(out.final_hidden, plain.final_hidden, **SAME_INPUT_TOL)
    torch.testing.assert_close(out.logits, plain.logits, **SAME_INPUT_TOL)


# ---- the response span --------------------------------------------------------------------------
@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_template_response_span(template_arch, index):
    llm = make_tiny_llm(template_arch)
    tokenizer, family = llm.tokenizer, FAMILIES[template_arch]
    messages, response = CONVERSATIONS[index]
    pair = llm.encode_pair(messages, response)
    assert pair.used_fallback is False

    prompt_text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    full_text = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": response}],
        add_generation_prompt=False,
        tokenize=False,
    )
    assert list(pair.prompt_ids) == ids(tokenizer, prompt_text)
    assert list(pair.prompt_ids) == llm.prompt_ids(messages)
    assert list(pair.input_ids) == ids(tokenizer, full_text)
    # The response is the answer's tokens followed by exactly what the template appends after it
    # (e.g. "<|im_end|>\n" for ChatML, "<|end|>\n<|endoftext|>" for Phi-3).
    suffix = ids(tokenizer, family.suffix)
    assert list(pair.response_ids) == ids(tokenizer, response) + suffix
    assert token_id(tokenizer, family.end_of_turn) in suffix
    # Rendered text carries BOS itself; tokenizing must not add a second one.
    if family.bos is not None and full_text.startswith(family.bos):
        assert pair.input_ids[0] == tokenizer.bos_token_id
        assert pair.input_ids[1] != tokenizer.bos_token_id


def test_llama_tokenizer_adds_bos_but_pairs_have_one():
    """The Llama-3 tokenizer adds BOS when asked to; the template's own BOS must not double."""
    llm = make_tiny_llm("llama")
    bos = llm.tokenizer.bos_token_id
    assert llm.tokenizer("hi")["input_ids"][0] == bos  # the trap is armed
    pair = llm.encode_pair(*CONVERSATIONS[0])
    assert pair.input_ids[0] == bos
    assert list(pair.input_ids).count(bos) == 1


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_eot_response_end_stops_after_first_end_of_turn(template_arch, index):
    llm = make_tiny_llm(template_arch)
    tokenizer = llm.tokenizer
    messages, response = CONVERSATIONS[index]
    template_pair = llm.encode_pair(messages, response)
    pair = llm.encode_pair(messages, response, response_end="eot")
    eot = token_id(tokenizer, FAMILIES[template_arch].end_of_turn)
    assert pair.used_fallback is False
    assert pair.prompt_ids == template_pair.prompt_ids
    assert list(pair.response_ids) == [*ids(tokenizer, response), eot]
    assert pair.response_ids == template_pair.response_ids[: len(pair.response_ids)]
    # Templates appending more than the end-of-turn token are really cut.
    if FAMILIES[template_arch].suffix != FAMILIES[template_arch].end_of_turn:
        assert len(pair.response_ids) < len(template_pair.response_ids)


def test_eot_cut_at_first_of_several_end_of_turn_tokens():
    """Phi-3 appends <|end|>\\n<|endoftext|>: both are end-of-turn ids; cut after the first."""
    llm = make_tiny_llm("phi3")
    tokenizer = llm.tokenizer
    end, eos = token_id(tokenizer, "<|end|>"), tokenizer.eos_token_id
    assert {end, eos} <= set(llm.end_of_turn_ids)
    messages, response = CONVERSATIONS[0]
    template_ids = llm.encode_pair(messages, response).response_ids
    assert template_ids[-3:] == (end, *ids(tokenizer, "\n"), eos)
    assert (
        llm.encode_pair(messages, response, response_end="eot").response_ids == (template_ids[:-2])
    )


@pytest.mark.parametrize("response_end", ["template", "eot"])
@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_plain_concatenation_without_template(index, response_end):
    llm = make_tiny_llm("gpt2")
    tokenizer = llm.tokenizer
    assert not llm.has_chat_template
    messages, response = CONVERSATIONS[index]
    pair = llm.encode_pair(messages, response, response_end=response_end)
    assert pair.used_fallback is False
    prompt_text = "\n".join(message["content"] for message in messages) + "\n"
    assert list(pair.prompt_ids) == ids(tokenizer, prompt_text)
    assert list(pair.response_ids) == [*ids(tokenizer, response), tokenizer.eos_token_id]
    # And the teacher-forced pass scores exactly those ids.
    out = llm.teacher_forced([pair])
    assert out.pair(0)["response_ids"].tolist() == list(pair.response_ids)


@pytest.mark.parametrize("response_end", ["template", "eot"])
def test_history_rewriting_template_uses_fallback(template_arch, response_end):
    base = make_tiny_llm(template_arch)
    tokenizer = build_tokenizer(template_arch, rewrite_history=True)
    llm = LLM(base.model, tokenizer, name="rewriting")
    eot = token_id(tokenizer, FAMILIES[template_arch].end_of_turn)
    for messages, response in CONVERSATIONS:
        # Precondition: the full rendering really does not start with the prompt.
        prompt = ids(
            tokenizer,
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
        )
        full = ids(
            tokenizer,
            tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": response}], tokenize=False
            ),
        )
        assert full[: len(prompt)] != prompt

        pair = llm.encode_pair(messages, response, response_end=response_end)
        assert pair.used_fallback is True
        assert list(pair.prompt_ids) == prompt
        assert list(pair.response_ids) == [*ids(tokenizer, response), eot]
        # The same conversation with the family's normal template needs no fallback.
        assert base.encode_pair(messages, response).used_fallback is False
    # Fallback pairs go through the teacher-forced pass like any other.
    out = llm.teacher_forced([llm.encode_pair(m, r) for m, r in CONVERSATIONS])
    assert out.pair(0)["response_ids"].tolist()[-1] == eot


# ---- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("response", ["", "   ", " \n\t "])
def test_empty_response_raises(arch, response):
    llm = make_tiny_llm(arch)
    with pytest.raises(PairEncodingError, match="response is empty"):
        llm.encode_pair(CONVERSATIONS[0][0], response)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "non-empty list of messages"),
        ("What is the capital of France?", "non-empty list of messages"),
        (
            [
                {"role": "user", "content": "Name a color."},
                {"role": "assistant", "content": "Blue."},
            ],
            "'messages' ends with the assistant's message",
        ),
        ([{"role": "robot", "content": "beep"}], "role 'robot'"),
        ([{"content": "no role"}], "role None"),
        ([{"role": "user", "content": None}], "no string 'content'"),
        (["not a message"], "not an object with role/content"),
    ],
    ids=["empty", "string", "last-assistant", "unknown-role", "no-role", "no-content", "not-dict"],
)
def test_bad_messages_raise(arch, messages, match):
    llm = make_tiny_llm(arch)
    with pytest.raises(PairEncodingError, match=match):
        llm.encode_pair(messages, "Blue.")
    with pytest.raises(PairEncodingError, match=match):
        llm.prompt_ids(messages)


def test_errors_name_the_pair_and_are_user_errors(arch):
    llm = make_tiny_llm(arch)
    with pytest.raises(PairEncodingError, match="record-42") as info:
        llm.encode_pair([], "Blue.", what="record-42")
    assert isinstance(info.value, PerturbprobeError)
    assert isinstance(info.value, ValueError)


def test_template_that_refuses_a_conversation_raises():
    """Chat templates raise (e.g. Gemma's "System role not supported"): a PairEncodingError."""
    base = make_tiny_llm("gemma2")
    tokenizer = build_tokenizer("gemma2")
    tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}" + tokenizer.chat_template
    )
    llm = LLM(base.model, tokenizer, name="strict")
    messages, response = CONVERSATIONS[1]
    assert messages[0]["role"] == "system"
    with pytest.raises(PairEncodingError, match=r"cannot render.*System role not supported"):
        llm.encode_pair(messages, response, what="rec-1")
    with pytest.raises(PairEncodingError, match="rec-2: the chat template cannot render"):
        llm.prompt_ids(messages, what="rec-2")
    # Conversations the template accepts still encode normally.
    assert llm.encode_pair(*CONVERSATIONS[0]) == base.encode_pair(*CONVERSATIONS[0])


@pytest.mark.parametrize("response_end", ["last", "EOT", None, ""])
def test_invalid_response_end_raises(arch, response_end):
    llm = make_tiny_llm(arch)
    with pytest.raises(PairEncodingError, match="response_end must be one of template, eot"):
        llm.encode_pair(*CONVERSATIONS[0], response_end=response_end)


def test_pair_longer_than_context_raises(arch):
    messages, response = CONVERSATIONS[2]
    total = len(make_tiny_llm(arch).encode_pair(messages, response).input_ids)

    # Exactly the context size fits, and the model really runs on it.
    fits = make_tiny_llm(arch, max_positions=total)
    assert fits.max_length == total
    pair = fits.encode_pair(messages, response)
    assert len(pair.input_ids) == total
    assert fits.teacher_forced([pair]).logits.isfinite().all()

    short = make_tiny_llm(arch, max_positions=total - 1)
    assert short.max_length == total - 1
    with pytest.raises(PairEncodingError, match=rf"{total} tokens .* context of {total - 1}"):
        short.encode_pair(messages, response)
    # The limit applies to the span actually kept: cutting at the end of turn can make it fit.
    eot_total = len(
        make_tiny_llm(arch).encode_pair(messages, response, response_end="eot").input_ids
    )
    if eot_total < total:
        assert len(short.encode_pair(messages, response, response_end="eot").input_ids) == eot_total


# ---- identity -----------------------------------------------------------------------------------
def test_identity_fields(arch):
    llm = make_tiny_llm(arch)
    identity = llm.identity()
    assert identity == {
        "name": f"tiny-{arch}-seed0",
        "model_type": arch,
        "architecture": type(llm.model).__name__,
        "vocab_size": len(llm.tokenizer),
        "hidden_size": HIDDEN_SIZE,
        "num_layers": NUM_LAYERS,
        "head_is_linear": arch != "gemma2",
        "fingerprint": llm.fingerprint,
    }
    assert len(identity["fingerprint"]) == 64
    int(identity["fingerprint"], 16)


def test_fingerprint_stable_and_sensitive_to_head(arch):
    llm = make_tiny_llm(arch)
    first = llm.fingerprint
    assert llm.fingerprint == first
    assert llm.identity()["fingerprint"] == first
    # Recomputed from scratch: another adapter over the same model, and a rebuilt model with the
    # same seed, give the same fingerprint.
    assert LLM(llm.model, llm.tokenizer, name="other name").fingerprint == first
    rebuilt = build_model(arch, build_tokenizer(arch), seed=0)
    assert LLM(rebuilt, build_tokenizer(arch), name="rebuilt").fingerprint == first
    # A bfloat16 copy of the same weights agrees (the fingerprint rounds to bf16).
    bf16 = copy.deepcopy(llm.model).to(torch.bfloat16)
    assert LLM(bf16, llm.tokenizer, name="bf16").fingerprint == first

    # Changing one head row (on a copy) changes it; the original is untouched.
    changed = copy.deepcopy(llm.model)
    with torch.no_grad():
        changed.get_output_embeddings().weight[7] += 0.5
    assert LLM(changed, llm.tokenizer, name=llm.name).fingerprint != first
    assert LLM(llm.model, llm.tokenizer, name=llm.name).fingerprint == first
    # Other random weights (another seed) give another fingerprint.
    assert make_tiny_llm(arch, seed=1).fingerprint != first


def test_fingerprint_depends_on_vocabulary():
    llm = make_tiny_llm("qwen2")
    tokenizer = build_tokenizer("qwen2")
    tokenizer.add_tokens(["<|extra|>"])
    assert LLM(llm.model, tokenizer, name=llm.name).fingerprint != llm.fingerprint
