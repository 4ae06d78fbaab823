"""t* and the Semantic Preservation Score: the scoring core against a naive double loop over
pairs (scikit-learn cosines), a planted meaning-preserving cell, the default t* of every tiny
architecture, the model plumbing against unbatched forwards, batch-size invariance, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle
from sklearn.metrics.pairwise import cosine_similarity
from tiny_models import ARCHS, build_model, build_tokenizer, make_tiny_llm
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import perturbprobe.features.semantic_token as semantic_token
from perturbprobe.calibration.plots import figure_to_png_bytes
from perturbprobe.data import Record
from perturbprobe.errors import ExtractionError, PairEncodingError
from perturbprobe.features import extract
from perturbprobe.features.semantic_token import (
    SemanticTokenChoice,
    _layer_band,
    _sps_from_states,
    default_semantic_offset,
    plot_sps,
    select_semantic_token,
    sps_grid,
)
from perturbprobe.llm import LLM

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SETS = [
    ["What is the capital of France?", "Which city is the capital of France?", "Paris is?"],
    ["Add two and two.", "What is two plus two?"],
    ["Name a color.", "Tell me a color.", "Hi", "Say one color, please."],
]


def naive_sps(states: np.ndarray, query: np.ndarray) -> np.ndarray:
    """SPS (P, C) of ``states`` (n, P, C, D) (NaN = missing) by a double loop over pairs."""
    _, n_offsets, n_columns, _ = states.shape
    out = np.full((n_offsets, n_columns), np.nan)
    for t in range(n_offsets):
        for layer in range(n_columns):
            vectors = states[:, t, layer]
            present = np.flatnonzero(~np.isnan(vectors).any(axis=1))
            cos = cosine_similarity(np.nan_to_num(vectors))  # zero vectors: similarity 0
            within, across = {}, []
            for i in present:
                for j in present:
                    if i == j:
                        continue
                    if query[i] == query[j]:
                        within.setdefault(query[i], []).append(cos[i, j])
                    else:
                        across.append(cos[i, j])
            if within and across:
                out[t, layer] = np.mean([np.mean(v) for v in within.values()]) - np.mean(across)
    return out


# ---- the scoring core -----------------------------------------------------------------------
def test_sps_core_matches_naive_double_loop():
    rng = np.random.default_rng(0)
    query = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3])
    states = rng.normal(size=(len(query), 3, 4, 5))
    states[:, :, 2] += rng.normal(size=(4, 5))[query][:, None]  # some real structure
    states[1, 2] = np.nan  # prompt 1 too short for offset 3
    states[3:5, 1:] = np.nan  # query 1 has no states at offsets 2-3: left out of the mean
    states[6, 0, 1] = 0.0  # a zero vector: cosine 0 with everything
    got = _sps_from_states(torch.from_numpy(states), torch.from_numpy(query))
    # float64 throughout; the sum identity and the pairwise dots differ only by rounding
    # (~1e-16 per term, tens of terms), far below 1e-12.
    np.testing.assert_allclose(got, naive_sps(states, query), rtol=0, atol=1e-12)
    order = np.random.default_rng(1).permutation(len(query))  # prompts in any order
    shuffled = _sps_from_states(torch.from_numpy(states[order]), torch.from_numpy(query[order]))
    np.testing.assert_allclose(shuffled, got, rtol=0, atol=1e-12)


def test_sps_core_nan_where_undefined():
    states = torch.randn(4, 2, 3, 6, dtype=torch.float64)
    states[:, 1] = float("nan")  # offset 2 missing everywhere
    got = _sps_from_states(states, torch.tensor([0, 0, 1, 1]))
    assert np.isfinite(got[0]).all() and np.isnan(got[1]).all()


def planted(states: torch.Tensor, query: torch.Tensor, offset: int, layer: int) -> torch.Tensor:
    """``states`` with the cell (offset, layer) replaced by a one-hot vector of the query id."""
    states = states.clone()
    states[:, offset - 1, layer] = torch.nn.functional.one_hot(query, states.shape[-1]).to(
        states.dtype
    )
    return states


def test_planted_meaning_preserving_cell_scores_highest():
    query = torch.arange(6).repeat_interleave(3)
    states = planted(torch.randn(len(query), 5, 7, 16, dtype=torch.float64), query, 4, 3)
    scores = _sps_from_states(states, query)
    # identical within a query (S_within = 1), orthogonal across (S_across = 0)
    assert scores[3, 3] == pytest.approx(1.0, abs=1e-12)
    assert np.unravel_index(np.argmax(scores), scores.shape) == (3, 3)
    others = np.delete(scores.ravel(), 3 * 7 + 3)
    assert np.abs(others).max() < 0.5  # random Gaussian cells: S_within ≈ S_across ≈ 0


@pytest.mark.parametrize(
    ("best", "n_layers", "band"),
    [
        (29, 30, (15, 29)),  # the default band of a 30-layer model
        (20, 30, (13, 27)),
        (1, 30, (1, 15)),
        (1, 2, (1, 1)),
        (2, 3, (2, 2)),
        (1, 4, (1, 2)),
        (3, 4, (2, 3)),
        (4, 6, (3, 5)),
    ],
)
def test_layer_band_is_half_the_layers_centred_and_clipped(best, n_layers, band):
    assert _layer_band(best, n_layers) == band


# ---- the default t* -------------------------------------------------------------------------
# The token each family's t* must point at (None: the last token of the user's text).
OPENERS = {
    "llama": "<|start_header_id|>",
    "qwen2": "<|im_start|>",
    "mistral": None,
    "gemma2": "<start_of_turn>",
    "gpt2": None,
    "phi3": "<|assistant|>",
}
CONVERSATIONS = [
    [{"role": "user", "content": "Name a color."}],
    [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "Which is larger, seven or eleven?"},
    ],
    [
        {"role": "user", "content": "Add two and two."},
        {"role": "assistant", "content": "Two plus two is four."},
        {"role": "user", "content": "Three times three"},
    ],
]


@pytest.mark.parametrize("arch", ARCHS)
def test_default_offset_points_at_the_family_token(arch):
    llm = make_tiny_llm(arch)
    offset = default_semantic_offset(llm)
    tokenizer = llm.tokenizer
    for messages in CONVERSATIONS:
        if arch == "gpt2" and len(messages) > 1:
            continue  # plain prompts join the messages: only the single-message case is meant
        prompt = llm.prompt_ids(messages)
        tokens = tokenizer.convert_ids_to_tokens(prompt)
        opener = OPENERS[arch]
        if opener is not None:  # the LAST occurrence of the assistant-turn opener
            assert tokens[-offset] == opener
            assert opener not in tokens[len(tokens) - offset + 1 :]
        else:  # the token that completes the user's text
            text = messages[-1]["content"]
            assert tokenizer.decode(prompt[: len(prompt) - offset + 1]).endswith(text)
            assert text not in tokenizer.decode(prompt[: len(prompt) - offset])
    expected = {"llama": 7, "qwen2": 5, "mistral": 3, "gemma2": 5, "gpt2": 2, "phi3": 2}
    assert offset == expected[arch]  # read off the renderings by hand


def test_default_offset_falls_back_when_the_template_fails_without_generation_prompt():
    tokenizer = build_tokenizer("qwen2")
    tokenizer.chat_template = (
        "{% if not add_generation_prompt %}{{ raise_exception('needs it') }}{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}<|im_start|>assistant\n"
    )
    llm = LLM(make_tiny_llm("qwen2").model, tokenizer, name="failing-template")
    prompt = tokenizer.convert_ids_to_tokens(llm.prompt_ids(CONVERSATIONS[0]))
    offset = default_semantic_offset(llm)
    assert prompt[-offset:][:3] == [".", "<|im_end|>", "Ċ"]  # the user's text ends at t*


# ---- the model plumbing ---------------------------------------------------------------------
def reference_states(llm: LLM, sets, n_positions: int):
    """Hidden states (n, P, L+1, D) from one unbatched full-model forward per prompt."""
    rows, query = [], []
    for q, prompt_set in enumerate(sets):
        for text in prompt_set:
            ids = llm.prompt_ids([{"role": "user", "content": text}])
            with torch.no_grad():
                hidden = llm.model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            layers = torch.stack([h[0] for h in hidden], dim=1).double()  # (len, L+1, D)
            row = torch.full((n_positions, *layers.shape[1:]), float("nan"), dtype=torch.float64)
            k = min(n_positions, len(ids))
            row[:k] = layers.flip(0)[:k]  # offset 1 = the last token
            rows.append(row)
            query.append(q)
    return torch.stack(rows).numpy(), np.array(query)


def test_sps_grid_matches_naive_reference_on_tiny_model():
    llm = make_tiny_llm("gpt2")  # plain prompts: "Hi" has 2 tokens, so offsets go missing
    n_positions = 17  # prompts have 3…16 tokens: the last row has no states
    states, query = reference_states(llm, SETS, n_positions)
    got = sps_grid(llm, SETS, n_positions=n_positions, batch_size=4)
    assert got.shape == (n_positions, llm.num_layers + 1)
    assert np.isnan(got[-1]).all() and np.isfinite(got[:2]).all()
    # float32 model: right padding and batching change matmul shapes, so states agree to ~1e-6.
    np.testing.assert_allclose(got, naive_sps(states, query), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
def test_sps_grid_batch_size_invariant_and_in_eval_mode(arch):
    llm = make_tiny_llm(arch)
    modes = []
    decoder = llm.model.base_model  # what run_decoder calls
    hook = decoder.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    llm.model.train()
    try:
        grids = [sps_grid(llm, SETS, n_positions=4, batch_size=b) for b in (1, 3, 100)]
        assert llm.model.training  # the caller's mode is restored
    finally:
        llm.model.eval()
        hook.remove()
    assert modes == [False] * 9 + [False] * 3 + [False]
    for grid in grids[1:]:  # float32 rounding of differently padded batches, see above
        np.testing.assert_allclose(grid, grids[0], rtol=0, atol=1e-5)


def six_layer_llama() -> LLM:
    tokenizer = build_tokenizer("llama")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.1,
    )
    return LLM(LlamaForCausalLM(config), tokenizer, name="tiny-llama-6")


def test_select_semantic_token_finds_a_planted_cell(monkeypatch):
    llm = six_layer_llama()
    query_of = {
        tuple(llm.prompt_ids([{"role": "user", "content": text}])): q
        for q, prompt_set in enumerate(SETS)
        for text in prompt_set
    }
    real = semantic_token._states_at_offsets

    def with_planted_cell(llm, prompts, n_positions):
        query = torch.tensor([query_of[tuple(p)] for p in prompts])
        return planted(real(llm, prompts, n_positions), query, offset=2, layer=4)

    monkeypatch.setattr(semantic_token, "_states_at_offsets", with_planted_cell)
    choice = select_semantic_token(llm, SETS, n_positions=5, batch_size=4)
    assert (choice.offset, choice.layers) == (2, (3, 5))  # band: ⌊6/2⌋ = 3 layers around 4
    assert choice.layer == 4
    assert choice.scores.shape == (5, 7)
    assert choice.scores[1, 4] == pytest.approx(1.0, abs=1e-6)
    config = choice.to_config()
    assert config == {"semantic_offset": 2, "layer_band": "3-5"}
    assert choice.to_overrides() == [
        "semantic_gradient.semantic_offset=2",
        "semantic_gradient.layer_band=3-5",
    ]
    assert json.loads(json.dumps(config)) == config
    # The choice drives SemGrad: its band becomes the per-layer columns.
    record = Record("r", "q", ({"role": "user", "content": SETS[0][0]},), "Paris", 1, "gold")
    fs = extract(llm, [record], families="semantic_gradient", overrides=choice.to_overrides(),
                 progress=False)  # fmt: skip
    layers = [c.split("_")[-1] for c in fs.schema if "semgrad_layer_" in c]
    assert layers == ["3", "4", "5"]
    assert fs.manifest["config"]["families"]["semantic_gradient"] == config


def test_semantic_token_choice_compares_without_scores():
    a = SemanticTokenChoice(3, (1, 2), np.zeros((2, 3)))
    assert a == SemanticTokenChoice(3, (1, 2), np.ones((2, 3)))
    assert "scores" not in repr(a)


# ---- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sets", "kwargs", "message"),
    [
        (SETS[:1], {}, "at least 2 paraphrase sets"),
        ("What?", {}, "must be a list of lists"),
        ([SETS[0], ["only one"]], {}, "paraphrase set 1 has 1 prompt"),
        ([SETS[0], "a string"], {}, "paraphrase set 1 must be a list of prompts"),
        (SETS, {"n_positions": 0}, "n_positions must be an int >= 1"),
        (SETS, {"batch_size": 1.5}, "batch_size must be an int >= 1"),
    ],
)
def test_sps_grid_errors(sets, kwargs, message):
    with pytest.raises(ExtractionError, match=message):
        sps_grid(make_tiny_llm("gpt2"), sets, **kwargs)


def test_unrenderable_prompt_names_its_set():
    bad = [[{"role": "robot", "content": "beep"}], [{"role": "user", "content": "beep"}]]
    with pytest.raises(PairEncodingError, match="paraphrase set 1"):
        sps_grid(make_tiny_llm("qwen2"), [SETS[0], bad])


def test_non_finite_hidden_states_raise():
    tokenizer = build_tokenizer("gpt2")
    model = build_model("gpt2", tokenizer)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.bias.fill_(float("nan"))
    with pytest.raises(ExtractionError, match="non-finite hidden states"):
        sps_grid(LLM(model, tokenizer, name="nan"), SETS)


def test_select_needs_two_layers():
    tokenizer = build_tokenizer("gpt2")
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=4)
    llm = LLM(GPT2LMHeadModel(config), tokenizer, name="one-layer")
    with pytest.raises(ExtractionError, match="needs at least 2 layers; 'one-layer' has 1"):
        select_semantic_token(llm, SETS)


# ---- the plot -------------------------------------------------------------------------------
def test_plot_sps_marks_the_best_cell():
    scores = np.zeros((4, 6))
    scores[2, 3] = 0.9
    scores[0, 5] = 1.0  # the final-norm column is not a candidate
    ax = plot_sps(scores)
    (box,) = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert box.get_xy() == (2.5, 2.5) and (box.get_width(), box.get_height()) == (1, 1)
    assert "offset 3, layer 3" in ax.get_title()
    (box,) = [p for p in plot_sps(scores, cell=(1, 2)).patches if isinstance(p, Rectangle)]
    assert box.get_xy() == (1.5, 0.5)
    assert len(ax.figure.axes) == 2  # the heatmap and its colour bar
    assert figure_to_png_bytes(ax.figure).startswith(b"\x89PNG")
    assert plot_sps(scores, ax=ax) is ax


def test_plot_sps_errors():
    with pytest.raises(ExtractionError, match="non-empty 2-D array"):
        plot_sps(np.zeros(5))


# ---- the default LLM ------------------------------------------------------------------------
@pytest.mark.slow
def test_default_llm_t_star_is_the_last_im_start():
    import perturbprobe

    llm = perturbprobe.load_llm("default")
    offset = default_semantic_offset(llm)
    prompt = llm.tokenizer.convert_ids_to_tokens(llm.prompt_ids(CONVERSATIONS[1]))
    assert prompt[-offset] == "<|im_start|>" and "<|im_start|>" not in prompt[1 - offset :]
    choice = select_semantic_token(llm, SETS, n_positions=6)
    assert 1 <= choice.offset <= 6 and choice.layers[1] - choice.layers[0] + 1 == 15
    assert np.isfinite(choice.scores).all()


def test_sps_command_prints_the_grid_and_writes_a_heatmap(tmp_path):
    from click.testing import CliRunner

    from perturbprobe.cli import cli

    llm = make_tiny_llm("qwen2")
    directory = tmp_path / "model"
    llm.model.save_pretrained(directory)
    llm.tokenizer.save_pretrained(directory)
    rows = [
        {"id": "a", "question": "What is red?", "answers": ["a colour"],
         "paraphrases": ["Tell me what red is.", "Red is what?"]},
        {"id": "b", "question": "Where is Paris?", "answers": ["France"],
         "paraphrases": ["Paris lies where?"]},
        {"id": "c", "question": "No paraphrase here.", "answers": ["x"]},
    ]  # fmt: skip
    dataset = tmp_path / "sets.jsonl"
    dataset.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    out = tmp_path / "sps.png"
    args = ["-q", "sps", "--model", str(directory), "--device", "cpu", "-d", str(dataset)]
    result = CliRunner().invoke(cli, [*args, "--positions", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "SPS on 2 paraphrase sets (rows: offset from the prompt end)"
    assert [line.split()[0] for line in lines[2:5]] == ["1", "2", "3"]
    assert len(lines[2].split()) == 1 + llm.num_layers + 1
    assert "best: offset" in result.stdout
    assert "--set semantic_gradient.semantic_offset=" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fixed_token_offsets():
    prompts = [[5, 1, 2, 3], [6, 7, 2, 3], [2, 3]]
    # offsets 1 and 2 hold 3 and 2 everywhere; offset 3 differs; offset 4 is missing in one
    assert semantic_token._fixed_token_offsets(prompts, 4).tolist() == [True, True, False, False]


def test_a_shared_word_position_is_not_chosen_unless_asked(monkeypatch):
    llm = six_layer_llama()
    prompts = [llm.prompt_ids([{"role": "user", "content": t}]) for s in SETS for t in s]
    fixed = semantic_token._fixed_token_offsets(prompts, 12)
    varying = int(np.flatnonzero(~fixed)[0]) + 1  # first offset inside the user's text
    queries = [q for q, prompt_set in enumerate(SETS) for _ in prompt_set]
    query_of = {tuple(p): q for p, q in zip(prompts, queries, strict=True)}
    real = semantic_token._states_at_offsets

    def with_planted_cell(llm, prompts, n_positions):
        query = torch.tensor([query_of[tuple(p)] for p in prompts])
        return planted(real(llm, prompts, n_positions), query, offset=varying, layer=3)

    monkeypatch.setattr(semantic_token, "_states_at_offsets", with_planted_cell)
    unrestricted = select_semantic_token(llm, SETS, n_positions=12, fixed_tokens_only=False)
    assert unrestricted.offset == varying
    chosen = select_semantic_token(llm, SETS, n_positions=12)
    assert fixed[chosen.offset - 1] and chosen.offset != varying
