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


def synthetic_featureset(
    n_questions: int = 120, *, seed: int = 0, fingerprint: str | None = None, prefix: str = "q"
) -> FeatureSet:
    rng = np.random.default_rng(seed)
    rows, token_rows = [], []
    for q in range(n_questions):
        for source in ("generated", "gold", "wrong"):
            signal = rng.normal()
            if source == "generated":
                label = int(rng.random() < 1 / (1 + np.exp(-2.5 * signal)))
            else:
                label = int(source == "gold")
                signal += 1.5 if label else -1.5
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
    manifest = {
        "format_version": FORMAT_VERSION,
        "config": ExtractorConfig.create(["baseline", "ccps"]).to_dict(),
        "schema": SCHEMA,
        "token_schema": TOKEN_SCHEMA,
        "llm": identity,
        "counts": {"records": len(features), "scored": len(features), "skipped": 0},
        "skipped": [],
    }
    return FeatureSet(features=features, tokens=tokens, manifest=manifest)
