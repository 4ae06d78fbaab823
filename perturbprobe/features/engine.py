"""The extraction engine: records → one teacher-forced pass per batch → every family → FeatureSet.

The engine encodes every record once, batches pairs of similar length (right padding with an
attention mask), runs the pass once per batch, upcasts the final hidden states to float32,
hands the shared results to each requested family, aggregates per-token features over each
response, and checks that no NaN or inf leaves it.

Passes per batch (F = forward, B = backward w.r.t. activations only, ≈ 1 F each; "head" =
arithmetic on the LM head over response tokens only). Every family reads the same forward:

============================  ================================================================
families requested            passes
============================  ================================================================
baseline, ccps,               1 F (no gradients) + head
entropy_dynamics
embedding_perturbation        1 F with autograd + 1 B (ℓ₁ = Σ log p) + 1 F (l∞) + 1 F (l2)
                              + r F (random; stacked into passes of ≤ 64 sequences)
semantic_gradient             1 F with autograd + 1 B batched over ℓ₁ and ℓ_ω (≈ 2 B) + head
                              (ParaGrad, ~3 head products per response)
hidden_states                 nothing more: every layer's output of the shared pass is kept
                              and pooled (mean over the response, last tokens)
sua                           hidden: head only (the CCPS trajectory, shared with ``ccps``);
                              embed_adv: the gradient pass + 1 F; embed_random: r F;
                              paraphrase: K F per record (no gradients)
any of the above together     one forward with autograd and *one* backward, batched over the
                              losses the families need (at most 2: ℓ₁, ℓ_ω), whose final hidden
                              states serve every family; perturbed passes with equal settings
                              are computed once (``sua`` reuses ``embedding_perturbation``'s,
                              ``ccps``'s trajectory)
============================  ================================================================

Measured on the default LLM (``benchmarks/extract_speed.py``, 2 CPU cores, × a bare forward):
baseline 0.9, ccps 1.3, entropy_dynamics 1.0, semantic_gradient 3.8, embedding_perturbation
5.8 (r = 2) and 20.6 (r = 20), sua 1.5 (hidden only) and 24.6 (r = 20), all families 8.6
(r = 2) and 26.9 (r = 20).
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .._version import __version__
from ..data.records import Record
from ..errors import ExtractionError, PairEncodingError
from ..llm import LLM, EncodedPair
from .base import PassBatch, aggregate_tokens, tokens_per_chunk
from .config import ExtractorConfig
from .embedding_pass import EmbeddingPass, GradientRequest
from .featureset import FORMAT_VERSION, FeatureSet
from .paraphrase_pass import ParaphrasePass, paraphrased_pairs

if TYPE_CHECKING:
    from ..distributed import ProcessGroup

__all__ = ["extract"]

logger = logging.getLogger(__name__)

# What the engine can give families, each computed once per batch: the final hidden states of
# the teacher-forced pass; the pass on input embeddings with one backward (EmbeddingPass; its
# final hidden states then serve every family, so no second forward); the responses under the
# records' paraphrased prompts (ParaphrasePass); every layer's output of that same pass
# (``hidden_states``: kept, not recomputed).
_PROVIDED = frozenset({"final_hidden", "hidden_states", "input_gradient", "paraphrases"})


def extract(
    llm: LLM,
    records: Sequence[Record],
    *,
    families: Sequence[str] | str | None = None,
    config: ExtractorConfig | None = None,
    overrides: Iterable[str] = (),
    batch_size: int = 8,
    skip_invalid: bool = False,
    memory_mb: float = 256.0,
    progress: bool = True,
    group: ProcessGroup | None = None,
) -> FeatureSet | None:
    """Extract features for ``records`` with one teacher-forced pass per batch.

    Parameters
    ----------
    llm : LLM
    records : sequence of Record
        E.g. from :func:`perturbprobe.data.read_records`.
    families : list of str or comma-separated str, optional
        Feature families to compute, or ``"all"``; default: the cheap ones
        (:data:`~perturbprobe.features.config.DEFAULT_FAMILIES`). Ignored if ``config``.
    config : ExtractorConfig, optional
        The full configuration (families and options); ``overrides`` apply on top.
    overrides : iterable of "key=value"
        E.g. ``["ccps.radius=10", "response_end=eot"]``.
    batch_size : int
        Pairs per forward pass. Results do not depend on it.
    skip_invalid : bool
        Skip records that cannot be scored (empty response, too long, bad messages) and list
        them in the manifest, instead of raising.
    memory_mb : float
        Budget for the (tokens × vocabulary) head arithmetic; long responses are processed
        in chunks that fit. Results do not depend on it.
    progress : bool
        Show a progress bar over records.
    group : ProcessGroup, optional
        Run data-parallel under torchrun (:func:`perturbprobe.distributed.process_group`):
        each rank extracts its share of the batches; rank 0 returns the whole FeatureSet,
        the same as one process would, and the other ranks return None.

    Returns
    -------
    FeatureSet (None on ranks other than 0 of a ``group``)

    Raises
    ------
    PairEncodingError
        A record cannot be scored and ``skip_invalid`` is False (the error names it).
    """
    if batch_size < 1:
        raise ExtractionError(f"batch_size must be >= 1, got {batch_size}")
    config = (config or ExtractorConfig.create(families)).with_overrides(overrides)
    family_objects = config.build_families()
    needs = set().union(*(family.needs for family in family_objects))
    if needs - _PROVIDED:
        raise ExtractionError(
            f"the engine cannot yet provide {sorted(needs - _PROVIDED)} for "
            f"{[f.name for f in family_objects if f.needs - _PROVIDED]}"
        )
    for family in family_objects:
        family.prepare(llm)
    keep_states = "hidden_states" in needs
    request = None
    if "input_gradient" in needs:
        requests = [f.gradient_request() for f in family_objects if "input_gradient" in f.needs]
        requests.append(GradientRequest(keep_hidden_states=keep_states))
        request = functools.reduce(GradientRequest.merge, requests)
    pairs, skipped = _encode(llm, records, config.response_end, skip_invalid)
    paraphrases = None
    if "paraphrases" in needs:
        paraphrases = {i: paraphrased_pairs(llm, records[i], pair) for i, pair in pairs.items()}
    if not pairs:
        raise ExtractionError(
            "no record could be scored: "
            + "; ".join(f"{s['id']}: {s['reason']}" for s in skipped[:3])
        )
    head = llm.head.to(torch.float32)
    vocab = head.weight.shape[0]
    chunk_tokens = tokens_per_chunk(memory_mb, vocab)
    columns = [family.columns() for family in family_objects]
    token_schema = [name for tokens, _ in columns for name in tokens]
    schema = [name for _, response in columns for name in response]
    layouts = {f.name: f.block_layout() for f in family_objects}
    layouts = {name: layout for name, layout in layouts.items() if layout is not None}

    order = sorted(pairs, key=lambda index: -len(pairs[index].input_ids))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if group is not None:  # whole batches per rank: every row computed as in one process
        batches = group.shard(batches, cost=lambda index: len(pairs[index].input_ids))
    rows: dict[int, tuple] = {}  # record index → (response row, token rows, {block: row})

    def run_batches() -> None:
        total = sum(map(len, batches))
        with tqdm(total=total, desc="extracting", unit="rec", disable=not progress) as bar:
            for indices in batches:
                batch = _run_pass(
                    llm, head, [pairs[i] for i in indices], chunk_tokens, request, keep_states
                )
                if paraphrases is not None:
                    batch.paraphrases = ParaphrasePass.run(
                        llm, [paraphrases[i] for i in indices], batch.lengths
                    )
                tokens, responses, blocks = _compute_families(family_objects, batch)
                per_pair_tokens = torch.split(tokens, batch.lengths.tolist())
                for row, index in enumerate(indices):
                    block_row = {name: block[row].numpy() for name, block in blocks.items()}
                    rows[index] = (responses[row].numpy(), per_pair_tokens[row].numpy(), block_row)
                bar.update(len(indices))

    if group is None:
        run_batches()
    else:
        group.run(run_batches)
        rows = group.gather(rows)
        if rows is None:
            return None  # not rank 0: rank 0 has everything

    kept = list(pairs)  # record indices in record order
    features = _features_frame(records, kept, schema, {i: rows[i][0] for i in kept})
    tokens = _tokens_frame(llm, records, kept, pairs, token_schema, {i: rows[i][1] for i in kept})
    blocks = {
        name: _block_array(name, [rows[i][2][name] for i in kept], layouts[name])
        for name in layouts
    }
    _check_finite(features, schema, tokens, token_schema)
    manifest = {
        "format_version": FORMAT_VERSION,
        "perturbprobe_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "schema": schema,
        "token_schema": token_schema,
        "blocks": layouts,
        "llm": llm.identity(),
        "counts": {
            "records": len(records),
            "scored": len(kept),
            "skipped": len(skipped),
            "tokens": len(tokens),
        },
        "fallback_records": [records[i].id for i in kept if pairs[i].used_fallback],
        "skipped": skipped,
        "world_size": 1 if group is None else group.world_size,
    }
    return FeatureSet(features=features, tokens=tokens, manifest=manifest, blocks=blocks)


def _encode(llm, records, response_end, skip_invalid):
    pairs: dict[int, EncodedPair] = {}
    skipped: list[dict[str, str]] = []
    for index, record in enumerate(records):
        try:
            pairs[index] = llm.encode_pair(
                record.messages,
                record.response,
                response_end=response_end,
                what=f"record {record.id!r}",
            )
        except PairEncodingError as exc:
            if not skip_invalid:
                raise PairEncodingError(f"{exc} (use --skip-invalid to skip such records)") from exc
            skipped.append({"id": record.id, "reason": str(exc)})
            logger.warning("skipping %s", exc)
    return pairs, skipped


def _run_pass(
    llm: LLM, head, pairs: list[EncodedPair], chunk_tokens: int, request, keep_states: bool
):
    if request is not None:
        embedding_pass = EmbeddingPass(llm, pairs, head, chunk_tokens, request)
        return PassBatch(
            head=head,
            final_hidden=embedding_pass.final_hidden,
            token_ids=embedding_pass.token_ids,
            lengths=embedding_pass.response_mask.sum(dim=1),
            chunk_tokens=chunk_tokens,
            embedding_pass=embedding_pass,
            prompt_lengths=embedding_pass.token_positions[:, 0],
            hidden_states=embedding_pass.hidden_states,
        )
    out = llm.teacher_forced(pairs, logits=False, hidden_states=keep_states)
    mask = out.response_mask  # (B, T_max)
    return PassBatch(
        head=head,
        final_hidden=out.final_hidden[mask].to(torch.float32),  # (N, D)
        token_ids=out.response_ids[mask],  # (N,)
        lengths=out.response_lengths,
        chunk_tokens=chunk_tokens,
        prompt_lengths=out.prompt_lengths,
        hidden_states=out.hidden_states,
    )


def _compute_families(families, batch: PassBatch):
    """(N, n_token_features), (B, n_features) in schema order, and {family: (B, K)} blocks,
    for one batch."""
    token_parts, response_parts, blocks = [], [], {}
    with torch.no_grad():
        for family in families:
            output = family.compute(batch)
            token_parts.append(output.token_values)
            if family.aggregate:
                response_parts.append(aggregate_tokens(batch, output.token_values))
            response_parts.append(output.response_values)
            if output.block_values is not None:
                blocks[family.name] = output.block_values.cpu()
    tokens = torch.cat(token_parts, dim=1).cpu()
    responses = torch.cat(response_parts, dim=1).cpu()
    return tokens, responses, blocks


def _block_array(name: str, rows: list[np.ndarray], layout: dict) -> np.ndarray:
    """The (n_records, K) block in its storage dtype; non-finite values (a float16 overflow)
    raise."""
    values = np.stack(rows).astype(layout["dtype"])
    if not np.isfinite(values).all():
        hint = f" (float16 overflows above 65,504: --set {name}.dtype=float32)"
        raise ExtractionError(
            f"non-finite values in the {name} block"
            + (hint if layout["dtype"] == "float16" else "; this is a bug, please report it")
        )
    return values


def _features_frame(records, kept, schema, rows) -> pd.DataFrame:
    values = np.stack([rows[i] for i in kept]) if kept else np.zeros((0, len(schema)))
    frame = pd.DataFrame(values.astype(np.float32), columns=schema)
    frame.insert(0, "record_id", [records[i].id for i in kept])
    frame.insert(1, "question_id", [records[i].question_id for i in kept])
    frame.insert(2, "label", pd.array([records[i].label for i in kept], dtype="Int64"))
    frame.insert(3, "source", [records[i].source for i in kept])
    frame.insert(4, "domain", pd.Series([records[i].domain for i in kept], dtype=object))
    frame.insert(5, "format", pd.Series([records[i].format for i in kept], dtype=object))
    return frame


def _tokens_frame(llm, records, kept, pairs, token_schema, rows) -> pd.DataFrame:
    values = np.concatenate([rows[i] for i in kept]).astype(np.float32)
    frame = pd.DataFrame(values, columns=token_schema)
    ids = [token for i in kept for token in pairs[i].response_ids]
    decode = llm.tokenizer.convert_ids_to_tokens
    frame.insert(0, "record_id", [records[i].id for i in kept for _ in pairs[i].response_ids])
    frame.insert(1, "token_index", [t for i in kept for t in range(len(pairs[i].response_ids))])
    frame.insert(2, "token_id", ids)
    frame.insert(3, "token", decode(ids))
    return frame


def _check_finite(features, schema, tokens, token_schema) -> None:
    for name, frame, columns in (("features", features, schema), ("tokens", tokens, token_schema)):
        values = frame[columns].to_numpy()
        if not np.isfinite(values).all():
            bad = [c for c in columns if not np.isfinite(frame[c].to_numpy()).all()]
            raise ExtractionError(
                f"non-finite {name} values in {', '.join(bad[:5])}: this is a bug, please report it"
            )
