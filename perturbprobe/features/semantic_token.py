"""The semantic preserving token t* and the Semantic Preservation Score (SPS) grid.

SemGrad (paper §3.2) takes gradients with respect to the hidden states of one prompt token,
t*, over a band of layers. t* is stored as an *offset from the end of the rendered generation
prompt*: offset 1 is the last prompt token, offset k the k-th from the end, so one number
serves prompts of every length.

Default t* (:func:`default_semantic_offset`): the token that opens the assistant turn, the
first token where a probe message rendered with and without ``add_generation_prompt`` differs
(a longest common prefix, so templates that append an end-of-sequence token without the
generation prompt, like Phi-3's, work too). When the template adds nothing (Mistral's
``[INST]`` templates) or there is none, t* is the last token of the user's text.

==============  ===========================  ==============================================
Family          t* (default)                 Why
==============  ===========================  ==============================================
ChatML: Qwen2,  the last ``<|im_start|>``    opens the assistant turn; the paper measures it
Qwen3, SmolLM2                               as the best token for Qwen3-4B-Instruct
Llama-3         the last                     opens the assistant header; the paper's t* for
                ``<|start_header_id|>``      Llama-3.1-8B-Instruct
Mistral         the last token of the        ``[INST] … [/INST]`` templates add no token for
                user's text                  the answer; the paper's t* for Mistral-Nemo
Gemma-2         the last                     opens the model turn, as ``<|im_start|>`` does
                ``<start_of_turn>``          in ChatML
Phi-3           ``<|assistant|>``            opens the assistant turn, as in ChatML
GPT-2, or no    the last token of the        no assistant marker exists; the plain prompt is
template        user's text                  the text plus ``"\\n"``, so t* is offset 2
==============  ===========================  ==============================================

Measured t* (:func:`select_semantic_token`): SPS(l, t) = S_within − S_across over the last
``n_positions`` prompt positions t and every ``hidden_states`` index l (0 = embedding output,
L = final-norm output). For each (t, l) take the hidden state of every prompt (each paraphrase
of each query) at offset t, in layer l; with s the cosine similarity,

- S_within = mean over queries of the mean s over ordered pairs of distinct paraphrases of
  that query (the paper's 1/N Σ_n 1/(K(K+1)) Σ_{i≠j});
- S_across = mean s over all ordered pairs of prompts from different queries. The paper pairs
  only the original questions; we pool every prompt: the same similarity of unrelated
  prompts, estimated from more pairs.

Both come from per-query sums of unit vectors (Σ_{i≠j} u_i·u_j = ‖Σ_i u_i‖² − Σ_i ‖u_i‖²),
linear in the number of prompts. Offsets beyond a prompt's length are missing (a query needs
two prompts present at an offset); a zero vector has cosine similarity 0 with everything. The
authors' code does not implement SPS; this is ours.

The chosen cell is the best (offset, layer) over the layers SemGrad can use (indices 1…L−1);
the layer band is ⌊L/2⌋ layers wide, like the default band L−⌊L/2⌋…L−1 of FEATURES.md,
centred on the best layer and shifted to stay within 1…L−1.

Read the heatmap (:func:`plot_sps`) before trusting a choice: inside the user's text,
paraphrases ending with the same word score high already at layer 0 (lexical overlap, not
meaning; on SmolLM2 and 60 easy-qa sets: offset 8, 0.45 at layer 0), hence
``fixed_tokens_only``. A semantic cell scores low at layer 0 and higher deeper.

>>> from perturbprobe import load_llm
>>> llm = load_llm("default")  # doctest: +SKIP
>>> sets = [["What is the capital of France?", "Which city is France's capital?"],
...         ["How many legs does a spider have?", "A spider has how many legs?"]]
>>> select_semantic_token(llm, sets).to_config()  # doctest: +SKIP
{'semantic_offset': 1, 'layer_band': '15-29'}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import ExtractionError
from ..llm.adapter import LLM
from ..llm.architectures import run_decoder
from ..llm.pairs import render_ids

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "SemanticTokenChoice",
    "default_semantic_offset",
    "plot_sps",
    "select_semantic_token",
    "sps_grid",
]

# The message rendered to locate t*: plain words, no space before punctuation (so decoding
# cannot change it), and not found in any system prompt.
_PROBE_TEXT = "What is the capital of France?"


# ---- the default t* -------------------------------------------------------------------------
def default_semantic_offset(llm: LLM) -> int:
    """The default t* of ``llm``'s chat format, as an offset from the end of the prompt.

    See the module docstring for the rule and the table of families.

    Parameters
    ----------
    llm : LLM

    Returns
    -------
    int
        ≥ 1; 1 is the last token of the generation prompt.

    Raises
    ------
    PairEncodingError
        If the chat template cannot render a single user message.
    """
    messages = [{"role": "user", "content": _PROBE_TEXT}]
    prompt = llm.prompt_ids(messages, what="the t* probe message")
    if llm.has_chat_template:
        try:
            without = render_ids(llm.tokenizer, messages, add_generation_prompt=False)
        except Exception:  # jinja raises its own types; fall back to the user's text
            without = prompt
        start = _common_prefix_length(prompt, without)
        if start < len(prompt):
            return len(prompt) - start
    return _last_text_token_offset(llm.tokenizer, prompt, _PROBE_TEXT)


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _last_text_token_offset(tokenizer, prompt: Sequence[int], text: str) -> int:
    """Offset of the token that completes ``text`` in ``prompt`` (1 if it never does)."""
    for end in range(1, len(prompt) + 1):
        decoded = tokenizer.decode(list(prompt[:end]), clean_up_tokenization_spaces=False)
        if text in decoded:
            return len(prompt) - end + 1
    return 1


# ---- the SPS grid ---------------------------------------------------------------------------
class _Moments:
    """Running sums for SPS, in float64 on the CPU; memory does not grow with the queries.

    A query's prompts are summed while it is *open*; once it is closed (all its prompts
    added, see :meth:`close_before`), only scalars per cell are kept. With u_i the unit state
    of prompt i, S_q = Σ_{i∈q} u_i and n_q the number of prompts of q present at a cell:

    - Σ_{i≠j∈q} u_i·u_j = ‖S_q‖² − Σ_{i∈q} ‖u_i‖²  (within, per query);
    - Σ over ordered pairs from different queries = ‖Σ_q S_q‖² − Σ_q ‖S_q‖², over
      (Σ_q n_q)² − Σ_q n_q² pairs  (across).
    """

    def __init__(self):
        self._open: dict[int, list[torch.Tensor]] = {}  # q -> [S_q (P, C, D), Σ‖u‖², n_q]
        self._total = None  # Σ_i u_i (P, C, D)
        self._within_sum = self._within_queries = None  # Σ_q mean within; queries with n_q ≥ 2
        self._norms = self._n = self._n_squared = None  # Σ_q ‖S_q‖², Σ_q n_q, Σ_q n_q²

    def add(self, states: torch.Tensor, query_index: torch.Tensor) -> None:
        """Add ``states`` (B, P, C, D), NaN where missing, of prompts of ``query_index`` (B,)."""
        present = ~torch.isnan(states).any(dim=-1)  # (B, P, C)
        units = F.normalize(states.masked_fill(~present[..., None], 0.0), dim=-1)
        units = units.to("cpu", torch.float64)
        present = present.to("cpu", torch.float64)
        query_index = query_index.to("cpu")
        if self._total is None:
            self._total = units.new_zeros(units.shape[1:])
            cell = units.new_zeros(units.shape[1:-1])
            self._within_sum, self._within_queries = cell, cell.clone()
            self._norms, self._n, self._n_squared = cell.clone(), cell.clone(), cell.clone()
        self._total += units.sum(dim=0)
        for query in query_index.unique().tolist():
            rows = query_index == query
            parts = [
                units[rows].sum(dim=0),
                units[rows].square().sum((0, -1)),
                present[rows].sum(0),
            ]
            if query in self._open:
                parts = [old + new for old, new in zip(self._open[query], parts, strict=True)]
            self._open[query] = parts

    def close_before(self, query: float) -> None:
        """Fold every open query numbered below ``query`` into the per-cell scalars."""
        for done in [q for q in self._open if q < query]:
            query_sum, squares, n = self._open.pop(done)
            norm = query_sum.square().sum(dim=-1)  # ‖S_q‖² (P, C)
            paired = n >= 2
            within = (norm - squares) / (n * (n - 1)).clamp(min=1)
            self._within_sum += torch.where(paired, within, 0.0)
            self._within_queries += paired
            self._norms += norm
            self._n += n
            self._n_squared += n.square()

    def scores(self) -> np.ndarray:
        """SPS (P, C) = S_within − S_across, NaN where either is undefined."""
        self.close_before(float("inf"))
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        within = torch.where(
            self._within_queries > 0, self._within_sum / self._within_queries.clamp(min=1), nan
        )
        across_pairs = self._total.square().sum(dim=-1) - self._norms
        across_count = self._n.square() - self._n_squared
        across = torch.where(across_count > 0, across_pairs / across_count.clamp(min=1), nan)
        return (within - across).numpy()


def _sps_from_states(states: torch.Tensor, query_index: torch.Tensor) -> np.ndarray:
    """SPS (P, C) of ``states`` (n_prompts, P, C, D), NaN where missing, grouped by
    ``query_index`` (n_prompts,); C = L+1 ``hidden_states`` indices."""
    moments = _Moments()
    moments.add(states, query_index)
    return moments.scores()


def _flatten_sets(paraphrase_sets) -> tuple[list, list[int]]:
    """Every prompt as messages, and the query each belongs to; validates the sets."""
    if isinstance(paraphrase_sets, str) or not isinstance(paraphrase_sets, Sequence):
        raise ExtractionError("paraphrase_sets must be a list of lists of prompts")
    if len(paraphrase_sets) < 2:
        raise ExtractionError(
            f"SPS needs at least 2 paraphrase sets (queries), got {len(paraphrase_sets)}"
        )
    prompts, query_index = [], []
    for query, prompt_set in enumerate(paraphrase_sets):
        if isinstance(prompt_set, str) or not isinstance(prompt_set, Sequence):
            raise ExtractionError(
                f"paraphrase set {query} must be a list of prompts (str or messages), "
                f"got {type(prompt_set).__name__}"
            )
        if len(prompt_set) < 2:
            raise ExtractionError(
                f"paraphrase set {query} has {len(prompt_set)} prompt(s); each needs at least "
                "2 (the question and a paraphrase)"
            )
        for prompt in prompt_set:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            prompts.append(messages)
            query_index.append(query)
    return prompts, query_index


def _states_at_offsets(llm: LLM, prompts: Sequence[Sequence[int]], n_positions: int):
    """Hidden states (B, P, L+1, D), float32, at offsets 1…P; NaN where a prompt is shorter."""
    input_ids, attention_mask = llm.pad(prompts, side="right")
    lengths = attention_mask.sum(dim=1)  # (B,)
    offsets = torch.arange(1, n_positions + 1, device=input_ids.device)
    positions = lengths[:, None] - offsets[None, :]  # (B, P)
    present = positions >= 0
    rows = torch.arange(len(prompts), device=input_ids.device)[:, None]
    out = run_decoder(llm.model, input_ids, attention_mask, True)
    states = torch.stack(
        [layer[rows, positions.clamp(min=0)].float() for layer in out.hidden_states], dim=2
    )  # (B, P, L+1, D)
    if not torch.isfinite(states[present]).all():
        raise ExtractionError(f"the LLM {llm.name!r} produced non-finite hidden states")
    return states.masked_fill(~present[..., None, None], float("nan"))


def sps_grid(
    llm: LLM,
    paraphrase_sets: Sequence[Sequence],
    *,
    n_positions: int = 10,
    batch_size: int = 8,
    progress: bool = False,
) -> np.ndarray:
    """The Semantic Preservation Score of every (offset, layer) cell.

    Parameters
    ----------
    llm : LLM
    paraphrase_sets : sequence of sequences of (str or messages)
        One set per query: the question and its paraphrases. A str is one user message;
        messages are lists of ``{"role", "content"}``. Rendered with the chat template and
        the generation prompt (:meth:`LLM.prompt_ids`).
    n_positions : int
        How many prompt positions, counted from the end (offsets 1…n_positions).
    batch_size : int
        Prompts per forward pass (right-padded). Results do not depend on it.
    progress : bool
        Show a progress bar over batches.

    Returns
    -------
    ndarray (n_positions, L+1)
        Row k−1 is offset k, column l is ``hidden_states[l]``; NaN where fewer than two
        queries have states at that offset.

    Raises
    ------
    ExtractionError
        Fewer than 2 sets, a set with fewer than 2 prompts, n_positions or batch_size < 1,
        or non-finite hidden states.
    PairEncodingError
        A prompt cannot be rendered.

    Notes
    -----
    Beyond one forward pass, memory is a few (n_positions, L+1, D) float64 sums per query in
    the current batch, whatever the number of sets; states are gathered at the last
    ``n_positions`` tokens only. Runs under ``torch.no_grad`` with the model in eval mode (the
    caller's mode is restored).
    """
    for name, value in (("n_positions", n_positions), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ExtractionError(f"{name} must be an int >= 1, got {value!r}")
    messages, queries = _flatten_sets(paraphrase_sets)
    prompts = [
        llm.prompt_ids(m, what=f"paraphrase set {q}")
        for m, q in zip(messages, queries, strict=True)
    ]
    query_index = torch.tensor(queries)
    moments = _Moments()
    was_training = llm.model.training
    llm.model.eval()
    try:
        with torch.no_grad():
            starts = range(0, len(prompts), batch_size)
            for start in tqdm(starts, desc="SPS", unit="batch", disable=not progress):
                batch = slice(start, start + batch_size)
                moments.add(
                    _states_at_offsets(llm, prompts[batch], n_positions), query_index[batch]
                )
                if start + batch_size < len(queries):  # prompts come query by query
                    moments.close_before(queries[start + batch_size])
    finally:
        llm.model.train(was_training)
    return moments.scores()


# ---- the choice -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SemanticTokenChoice:
    """t* and the layer band chosen from an SPS grid.

    Attributes
    ----------
    offset : int
        Best position, as an offset from the end of the prompt (1 = last token).
    layers : tuple of (int, int)
        Inclusive band (first, last) of ``hidden_states`` indices, ⌊L/2⌋ wide, centred on the
        best layer and within 1…L−1.
    scores : ndarray (n_offsets, L+1)
        The SPS grid; rows are offsets 1…n_offsets, columns ``hidden_states`` indices.
    layer : int or None
        The best layer at ``offset`` (the band's centre before clipping).
    """

    offset: int
    layers: tuple[int, int]
    scores: np.ndarray = field(repr=False, compare=False)
    layer: int | None = None

    def to_config(self) -> dict:
        """The ``semantic_gradient`` options of this choice: ``{"semantic_offset": int,
        "layer_band": "first-last"}``."""
        return {"semantic_offset": int(self.offset), "layer_band": "{}-{}".format(*self.layers)}

    def to_overrides(self) -> list[str]:
        """The same as ``--set`` options: ``["semantic_gradient.semantic_offset=1", ...]``."""
        return [f"semantic_gradient.{key}={value}" for key, value in self.to_config().items()]


def _best_cell(scores: np.ndarray) -> tuple[int, int] | None:
    """(offset, layer) of the highest finite score over layers 1…L−1; None if there is none."""
    usable = scores[:, 1:-1]
    if not np.isfinite(usable).any():
        return None
    row, column = np.unravel_index(np.nanargmax(usable), usable.shape)
    return int(row) + 1, int(column) + 1


def _fixed_token_offsets(prompts: Sequence[Sequence[int]], n_positions: int) -> np.ndarray:
    """Bool (n_positions,): True at offsets where every prompt has the same token."""
    fixed = np.zeros(n_positions, dtype=bool)
    for offset in range(1, n_positions + 1):
        tokens = {p[-offset] if len(p) >= offset else None for p in prompts}
        fixed[offset - 1] = len(tokens) == 1 and None not in tokens
    return fixed


def _layer_band(best_layer: int, n_layers: int) -> tuple[int, int]:
    """⌊L/2⌋ layers centred on ``best_layer``, shifted to fit within 1…L−1."""
    width = n_layers // 2
    first = min(max(best_layer - (width - 1) // 2, 1), n_layers - width)
    return first, first + width - 1


def select_semantic_token(
    llm: LLM,
    paraphrase_sets: Sequence[Sequence],
    *,
    n_positions: int = 10,
    batch_size: int = 8,
    progress: bool = False,
    fixed_tokens_only: bool = True,
) -> SemanticTokenChoice:
    """Choose t* and the SemGrad layer band from the SPS grid of ``paraphrase_sets``.

    Parameters
    ----------
    llm : LLM
        With at least 2 layers.
    paraphrase_sets, n_positions, batch_size, progress
        As in :func:`sps_grid`.
    fixed_tokens_only : bool
        Choose only among offsets where every prompt has the same token (template tokens);
        all offsets when there is none. A position where paraphrases merely share a *word*
        scores high without preserving meaning: on the default LLM and 60 easy-qa sets the
        unrestricted best cell is offset 8, layer 1, which already scores 0.45 on the raw
        token embeddings (layer 0) and is a different token in different prompts.

    Returns
    -------
    SemanticTokenChoice
        The best cell over offsets 1…n_positions and layers 1…L−1 (ties: the smallest
        offset, then the lowest layer); store it with :meth:`SemanticTokenChoice.to_config`.

    Raises
    ------
    ExtractionError
        As :func:`sps_grid`, or the LLM has fewer than 2 layers.
    """
    if llm.num_layers < 2:
        raise ExtractionError(
            f"SemGrad's layer band needs at least 2 layers; {llm.name!r} has {llm.num_layers}"
        )
    scores = sps_grid(
        llm, paraphrase_sets, n_positions=n_positions, batch_size=batch_size, progress=progress
    )
    candidates = scores
    if fixed_tokens_only:
        prompts = [llm.prompt_ids(m) for m in _flatten_sets(paraphrase_sets)[0]]
        fixed = _fixed_token_offsets(prompts, n_positions)  # (n_positions,)
        if fixed.any():
            candidates = np.where(fixed[:, None], scores, np.nan)
    offset, layer = _best_cell(candidates)  # offset 1 exists in every prompt: never None
    return SemanticTokenChoice(offset, _layer_band(layer, llm.num_layers), scores, layer)


def plot_sps(
    scores: np.ndarray, ax: Axes | None = None, *, cell: tuple[int, int] | None = None
) -> Axes:
    """Heatmap of an SPS grid: x = layer, y = offset, colour bar, the chosen cell outlined.

    Parameters
    ----------
    scores : array-like (n_offsets, L+1)
        From :func:`sps_grid` or :attr:`SemanticTokenChoice.scores`.
    cell : (offset, layer), optional
        The cell to outline, e.g. ``(choice.offset, choice.layer)``; default: the highest
        score over layers 1…L−1.
    ax : matplotlib Axes, optional
        Where to draw; a new figure when None. Nothing is written to disk.

    Returns
    -------
    matplotlib Axes

    Raises
    ------
    ExtractionError
        If ``scores`` is not a non-empty 2-D array.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.size == 0:
        raise ExtractionError(f"scores must be a non-empty 2-D array, got shape {scores.shape}")
    from matplotlib.patches import Rectangle

    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(8.0, 4.0), layout="constrained").add_subplot()
    n_offsets, n_columns = scores.shape
    image = ax.imshow(
        scores,
        aspect="auto",
        cmap="viridis",
        interpolation="nearest",
        extent=(-0.5, n_columns - 0.5, n_offsets + 0.5, 0.5),
    )
    ax.figure.colorbar(image, ax=ax, label="SPS = S_within − S_across")
    best = _best_cell(scores) if cell is None else cell
    if best is not None:
        offset, layer = best
        ax.add_patch(
            Rectangle((layer - 0.5, offset - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)
        )
        ax.set_title(f"Semantic Preservation Score (chosen: offset {offset}, layer {layer})")
    else:
        ax.set_title("Semantic Preservation Score")
    ax.set_xlabel("layer (hidden_states index; 0 = embeddings)")
    ax.set_ylabel("offset from the end of the prompt")
    ax.set_yticks(range(1, n_offsets + 1))
    return ax
