"""Tiny, randomly initialised causal LMs of every tested family, built fully offline.

Each model comes with a byte-level BPE tokenizer trained in-process on a fixed text, the family's
special tokens and a chat template in the family's style (GPT-2 has none: the plain
concatenation path).  Everything is deterministic for a given ``(arch, seed)`` and cached for the
session, so the whole adapter suite runs in seconds.

Use :func:`make_tiny_llm` for a cached :class:`perturbprobe.llm.LLM`; :func:`build_tokenizer`
and :func:`build_model` return fresh (uncached) objects for tests that need to modify them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from perturbprobe.llm import LLM

__all__ = [
    "ARCHS",
    "FAMILIES",
    "GEMMA2_SOFTCAP",
    "TEMPLATE_ARCHS",
    "Family",
    "build_model",
    "build_tokenizer",
    "make_tiny_llm",
    "save_llm",
]

HIDDEN_SIZE = 32
NUM_LAYERS = 2
DEFAULT_MAX_POSITIONS = 256
GEMMA2_SOFTCAP = 5.0
# Standard deviation of the Gemma-2 head (tied to the embeddings) after re-initialisation: with
# unit-RMS final hidden states the logits then have std ~ sqrt(32) ≈ 5.7, well inside the regime
# where cap·tanh(z/cap) with cap = 5 differs from z by whole units.
GEMMA2_HEAD_STD = 1.0

# ---- the training text ------------------------------------------------------------------------
_CORPUS = """\
The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.
What is the capital of Germany? The capital of Germany is Berlin, a large city on the river.
Add two and two. Two plus two is four. Three times three is nine. Ten minus one is nine.
Name a color. Blue is a color. Green is a color, and red is a color too. The sky is blue.
You are a careful assistant. You are a helpful assistant who answers questions briefly.
Another one, please, and explain why you like it in a few words. I like green because it
reminds me of the forest in spring, when the trees are new and the morning light is soft.
Please answer the question. The answer is yes. The answer is no. I do not know the answer.
A question about numbers: one, two, three, four, five, six, seven, eight, nine, ten, 12, 2024.
Write a short story about a cat. Once upon a time a small cat lived in a quiet house near the
sea. Every morning the cat walked to the window and watched the boats leave the harbour.
The weather today is warm and sunny, but tomorrow it will rain in the north and the west.
Explain photosynthesis. Plants use light, water and carbon dioxide to make sugar and oxygen.
Translate hello into French. Bonjour means hello. Merci means thank you. Oui means yes.
Which is larger, seven or eleven? Eleven is larger than seven. Zero is smaller than one.
How many legs does a spider have? A spider has eight legs. A bird has two legs and two wings.
Who wrote Hamlet? William Shakespeare wrote Hamlet, a play about a prince of Denmark.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Sure! Here is the answer: the result is correct. Sorry, I cannot help with that request.
Is water wet? Water makes things wet. Ice is frozen water, and steam is water as a gas.
What time is it? It is noon. The meeting starts at three and ends before the evening.
List three fruits: apple, banana, cherry. List three animals: horse, sheep, rabbit.
The model reads the prompt, then writes the response one token at a time until it stops.
Thank you for your help. You are welcome. Good night and see you tomorrow morning.
"""


# ---- chat templates ---------------------------------------------------------------------------
# ``__CONTENT__`` is replaced by the Jinja expression of a message's content.  With
# ``rewrite_history=True`` the *last* message is rendered as "(latest) <content>" only while it is
# last, i.e. in the generation prompt but no longer once the assistant's answer follows: a
# template that rewrites history, which must trigger the fallback encoding.
_PLAIN_CONTENT = "message['content']"
_REWRITING_CONTENT = "(('(latest) ' + message['content']) if loop.last else message['content'])"

_TEMPLATES = {
    # Llama-3: header blocks, content trimmed, <|eot_id|> closes every turn.
    "llama": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
        "{{ (__CONTENT__) | trim }}{{ '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
        "{% endif %}"
    ),
    # ChatML (Qwen2), with Qwen2's default system prompt.
    "qwen2": (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
        "{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + (__CONTENT__) + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Mistral-Instruct: [INST] ... [/INST] answer</s>; a system prompt is put before the first
    # user message.
    "mistral": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] + '\n\n' %}{% set start = 1 %}"
        "{% else %}{% set system = '' %}{% set start = 0 %}{% endif %}"
        "{% for message in messages[start:] %}"
        "{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + (system if loop.first else '') + (__CONTENT__) + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ (__CONTENT__) + eos_token }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    # Gemma: <start_of_turn>user|model ... <end_of_turn>\n; the system prompt joins the first turn.
    "gemma2": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] + '\n\n' %}{% set start = 1 %}"
        "{% else %}{% set system = '' %}{% set start = 0 %}{% endif %}"
        "{% for message in messages[start:] %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + (system if loop.first else '') }}"
        "{{ (__CONTENT__) | trim }}{{ '<end_of_turn>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    # Phi-3: <|user|>\n...<|end|>\n; without the generation prompt the EOS is appended.
    "phi3": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + (__CONTENT__) + '<|end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
    ),
}


@dataclass(frozen=True)
class Family:
    """What the tests know about one family's tokenizer and template."""

    specials: tuple[str, ...]  # special tokens (ids 0..k-1 in this order)
    bos: str | None
    eos: str
    pad: str | None
    end_of_turn: str  # the token that closes an assistant turn (first end-of-turn id)
    suffix: str | None  # what the template appends after the assistant's content
    add_bos_token: bool = False  # whether tokenizing adds BOS (Llama-3 style post-processor)


FAMILIES: dict[str, Family] = {
    "llama": Family(
        specials=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ),
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
        pad=None,
        end_of_turn="<|eot_id|>",
        suffix="<|eot_id|>",
        add_bos_token=True,
    ),
    "qwen2": Family(
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None,
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        end_of_turn="<|im_end|>",
        suffix="<|im_end|>\n",
    ),
    "mistral": Family(
        specials=("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
        bos="<s>",
        eos="</s>",
        pad=None,
        end_of_turn="</s>",
        suffix="</s>",
    ),
    "gemma2": Family(
        specials=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        end_of_turn="<end_of_turn>",
        suffix="<end_of_turn>\n",
    ),
    "gpt2": Family(
        specials=("<|endoftext|>",),
        bos="<|endoftext|>",
        eos="<|endoftext|>",
        pad=None,
        end_of_turn="<|endoftext|>",
        suffix=None,
    ),
    "phi3": Family(
        specials=(
            "<unk>",
            "<s>",
            "</s>",
            "<|endoftext|>",
            "<|assistant|>",
            "<|end|>",
            "<|system|>",
            "<|user|>",
        ),
        bos="<s>",
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        end_of_turn="<|end|>",
        suffix="<|end|>\n<|endoftext|>",
    ),
}

ARCHS = tuple(FAMILIES)
TEMPLATE_ARCHS = tuple(arch for arch in ARCHS if arch in _TEMPLATES)


def chat_template(arch: str, *, rewrite_history: bool = False) -> str | None:
    """The family's chat template (None for GPT-2)."""
    template = _TEMPLATES.get(arch)
    if template is None:
        return None
    return template.replace(
        "__CONTENT__", _REWRITING_CONTENT if rewrite_history else _PLAIN_CONTENT
    )


@cache
def _trained_backend(specials: tuple[str, ...]) -> Tokenizer:
    backend = Tokenizer(models.BPE())
    # Runs of whitespace ending in a newline are pre-tokenized on their own (as in the Llama-3 and
    # Qwen2 regexes), so a prompt ending in "\n\n" tokenizes as a prefix of prompt + response.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\s*[\r\n]+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=448,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return backend


def build_tokenizer(arch: str, *, rewrite_history: bool = False) -> PreTrainedTokenizerFast:
    """A fresh tokenizer of family ``arch`` (byte-level BPE, the family's specials and template)."""
    family = FAMILIES[arch]
    backend = _trained_backend(family.specials)  # deep-copied by PreTrainedTokenizerFast
    kwargs = {
        "bos_token": family.bos,
        "eos_token": family.eos,
        "pad_token": family.pad,
        "add_bos_token": family.add_bos_token,
    }
    if "<unk>" in family.specials:
        kwargs["unk_token"] = "<unk>"
    extra = [t for t in family.specials if t not in {family.bos, family.eos, family.pad, "<unk>"}]
    if extra:
        kwargs["additional_special_tokens"] = extra
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    template = chat_template(arch, rewrite_history=rewrite_history)
    if template is not None:
        tokenizer.chat_template = template
    # Guard against the wrapper re-numbering or splitting the special tokens.
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in family.specials] == list(range(len(family.specials)))
    assert len(tokenizer) == backend.get_vocab_size()
    return tokenizer


def _config(arch: str, tokenizer, max_positions: int, num_layers: int = NUM_LAYERS):
    common = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    decoder = {
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": 2 * HIDDEN_SIZE,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": max_positions,
        # Larger than the usual 0.02 so that activations and logits are far from trivial.
        "initializer_range": 0.1,
        **common,
    }
    if arch == "llama":
        return LlamaForCausalLM, LlamaConfig(tie_word_embeddings=False, **decoder)
    if arch == "qwen2":
        return Qwen2ForCausalLM, Qwen2Config(tie_word_embeddings=False, **decoder)
    if arch == "mistral":
        return MistralForCausalLM, MistralConfig(tie_word_embeddings=False, **decoder)
    if arch == "phi3":
        return Phi3ForCausalLM, Phi3Config(
            tie_word_embeddings=False, original_max_position_embeddings=max_positions, **decoder
        )
    if arch == "gemma2":
        return Gemma2ForCausalLM, Gemma2Config(
            head_dim=8,
            query_pre_attn_scalar=8,
            final_logit_softcapping=GEMMA2_SOFTCAP,
            attn_logit_softcapping=50.0,
            sliding_window=64,
            tie_word_embeddings=True,
            attn_implementation="eager",
            **decoder,
        )
    if arch == "gpt2":
        return GPT2LMHeadModel, GPT2Config(
            n_embd=HIDDEN_SIZE,
            n_layer=num_layers,
            n_head=4,
            n_positions=max_positions,
            initializer_range=0.1,
            **common,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {', '.join(ARCHS)}")


def build_model(
    arch: str,
    tokenizer,
    *,
    seed: int = 0,
    max_positions: int = DEFAULT_MAX_POSITIONS,
    num_layers: int = NUM_LAYERS,
) -> torch.nn.Module:
    """A fresh randomly initialised float32 causal LM of family ``arch``, in eval mode."""
    model_class, config = _config(arch, tokenizer, max_positions, num_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
        if arch == "gemma2":
            # Push the logits into the non-linear regime of the soft-capping.
            with torch.no_grad():
                model.get_output_embeddings().weight.normal_(0.0, GEMMA2_HEAD_STD)
    if arch == "gemma2":
        assert model.config._attn_implementation == "eager"
    return model.to(torch.float32).eval()


@cache
def _cached_tokenizer(arch: str) -> PreTrainedTokenizerFast:
    return build_tokenizer(arch)


@cache
def make_tiny_llm(arch: str, seed: int = 0, max_positions: int = DEFAULT_MAX_POSITIONS) -> LLM:
    """A cached tiny :class:`~perturbprobe.llm.LLM` of family ``arch`` (do not modify it)."""
    tokenizer = _cached_tokenizer(arch)
    model = build_model(arch, tokenizer, seed=seed, max_positions=max_positions)
    return LLM(model, tokenizer, name=f"tiny-{arch}-seed{seed}")


def save_llm(llm: LLM, directory) -> Path:
    """Write ``llm``'s model and tokenizer to ``directory`` (a model directory for the CLI's
    ``--model``) and return it."""
    llm.model.save_pretrained(directory)
    llm.tokenizer.save_pretrained(directory)
    return Path(directory)
