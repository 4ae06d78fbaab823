"""Synthetic labelled FeatureSets for probe, bundle and report tests (no LLM needed).

Each question has one generated answer (label drawn from a logistic model of the signal),
one gold answer (label 1) and one wrong answer (label 0). Column names are real family
columns (``baseline/...``, ``ccps/...``) so baselines and family selection work; the signal
lives in ``ccps/signal:mean`` and in the per-token ``ccps/signal`` values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from perturbprobe.features import ExtractorConfig, FeatureSet
from perturbprobe.features.featureset import FORMAT_VERSION

IDENTITY = {
    "name": "synthetic/llm",
    "model_type": "llama",
    "architecture": "LlamaForCausalLM",
    "vocab_size": 100,
    "hidden_size": 8,
    "num_layers": 2,
    "head_is_linear": True,
    "fingerprint": "f" * 64,
}
SCHEMA = [
    "baseline/prob:mean",
    "baseline/seq_log_prob",
    "baseline/entropy:mean",
    "ccps/signal:mean",
    "ccps/noise:mean",
    "ccps/noise:max",
]
TOKEN_SCHEMA = ["baseline/prob", "ccps/signal", "ccps/noise"]


BLOCK_WIDTH = 24


def synthetic_featureset(
    n_questions: int = 120,
    *,
    seed: int = 0,
    fingerprint: str | None = None,
    prefix: str = "q",
    block: bool = False,
    shift: float = 0.0,
) -> FeatureSet:
    """``block``: add a ``hidden_states`` block (BLOCK_WIDTH columns; the label's own
    signal, independent of the ccps signal, in its first 3 columns). ``shift``: added to
    every record's latent signal before the labels are drawn (a new domain where the LLM is
    less (shift < 0) or more often right)."""
    rng = np.random.default_rng(seed)
    blocks = []
    rows, token_rows = [], []
    for q in range(n_questions):
        for source in ("generated", "gold", "wrong"):
            signal = rng.normal() + shift
            hidden = rng.normal() if block else 0.0
            if source == "generated":
                label = int(rng.random() < 1 / (1 + np.exp(-2.5 * signal - 2.0 * hidden)))
            else:
                label = int(source == "gold")
                signal += 1.5 if label else -1.5
            if block:
                row_block = rng.normal(size=BLOCK_WIDTH)
                row_block[:3] += (1.0 if label else -1.0) + 0.5 * hidden
                blocks.append(row_block)
            n_tokens = int(rng.integers(2, 7))
            token_signal = signal + rng.normal(scale=0.5, size=n_tokens)
            prob = 1 / (1 + np.exp(-(0.8 * token_signal + rng.normal(size=n_tokens))))
            record_id = f"{prefix}{q}/{source}"
            rows.append(
                {
                    "record_id": record_id,
                    "question_id": f"{prefix}{q}",
                    "label": label,
                    "source": source,
                    "baseline/prob:mean": prob.mean(),
                    "baseline/seq_log_prob": np.log(prob).sum(),
                    "baseline/entropy:mean": rng.gamma(2.0) / (1 + prob.mean()),
                    "ccps/signal:mean": token_signal.mean(),
                    "ccps/noise:mean": rng.normal(),
                    "ccps/noise:max": rng.normal() + 2,
                }
            )
            for t in range(n_tokens):
                token_rows.append(
                    {
                        "record_id": record_id,
                        "token_index": t,
                        "token_id": int(rng.integers(100)),
                        "token": f"t{t}",
                        "baseline/prob": prob[t],
                        "ccps/signal": token_signal[t],
                        "ccps/noise": rng.normal(),
                    }
                )
    features = pd.DataFrame(rows)
    features["label"] = features["label"].astype("Int64")
    features[SCHEMA] = features[SCHEMA].astype(np.float32)
    tokens = pd.DataFrame(token_rows)
    tokens[TOKEN_SCHEMA] = tokens[TOKEN_SCHEMA].astype(np.float32)
    identity = {**IDENTITY, "fingerprint": fingerprint or IDENTITY["fingerprint"]}
    families = ["baseline", "ccps", "hidden_states"] if block else ["baseline", "ccps"]
    layout = {
        "pools": ["mean"],
        "layers": [1],
        "hidden_size": BLOCK_WIDTH,
        "columns": BLOCK_WIDTH,
        "dtype": "float16",
        "order": "pool, layer, dimension",
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "config": ExtractorConfig.create(families).to_dict(),
        "schema": SCHEMA,
        "token_schema": TOKEN_SCHEMA,
        "blocks": {"hidden_states": layout} if block else {},
        "llm": identity,
        "counts": {"records": len(features), "scored": len(features), "skipped": 0},
        "skipped": [],
    }
    arrays = {"hidden_states": np.stack(blocks).astype(np.float16)} if block else {}
    return FeatureSet(features=features, tokens=tokens, manifest=manifest, blocks=arrays)
