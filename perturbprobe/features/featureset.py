"""FeatureSet: the extracted features of a set of records, and its directory format.

A FeatureSet directory holds

- ``features.parquet``: one row per scored record — ``record_id``, ``question_id``,
  ``label`` (nullable), ``source`` (generated, gold or wrong), then the response-level
  feature columns in schema order;
- ``tokens.parquet``: one row per response token — ``record_id``, ``token_index``,
  ``token_id``, ``token``, then the per-token feature columns;
- ``manifest.json``: format version, perturbprobe version, creation time, the extractor
  config, the schema and token schema, the LLM's identity, counts, and the records that
  could not be scored with the reason.

Directories are written to a temporary sibling and renamed at the end, so an interrupted
extraction never leaves a directory that looks complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._io import atomic_directory
from ..errors import ExtractionError

__all__ = ["FORMAT_VERSION", "FeatureSet"]

# Bump when a reader of the previous version would misread the files (renamed or removed
# columns, changed meaning). Adding manifest keys does not need a bump.
# Version 2 added the ``source`` column.
FORMAT_VERSION = 2
_FILES = ("features.parquet", "tokens.parquet", "manifest.json")
_ID_COLUMNS = ["record_id", "question_id", "label", "source"]
_TOKEN_ID_COLUMNS = ["record_id", "token_index", "token_id", "token"]


@dataclass
class FeatureSet:
    """Features of scored records, with labels, per-token values and provenance.

    Attributes
    ----------
    features : DataFrame (n_records, 4 + n_features)
    tokens : DataFrame (n_tokens, 4 + n_token_features)
    manifest : dict
    """

    features: pd.DataFrame
    tokens: pd.DataFrame
    manifest: dict[str, Any]

    # ---- views ------------------------------------------------------------------------------
    @property
    def schema(self) -> list[str]:
        """Ordered response-level feature column names (what a probe is fitted on)."""
        return list(self.manifest["schema"])

    @property
    def token_schema(self) -> list[str]:
        """Ordered per-token feature column names."""
        return list(self.manifest["token_schema"])

    @property
    def X(self) -> pd.DataFrame:
        """Response-level features (n_records, n_features), columns in schema order."""
        return self.features[self.schema]

    @property
    def y(self) -> np.ndarray:
        """Labels (n_records,) as int (1 correct, 0 incorrect); raises if any is missing."""
        labels = self.features["label"]
        if labels.isna().any():
            raise ExtractionError(
                f"{int(labels.isna().sum())} of {len(labels)} records have no label; "
                "collect labelled records to fit or evaluate a probe"
            )
        return labels.to_numpy(dtype=np.int64)

    @property
    def record_ids(self) -> list[str]:
        return self.features["record_id"].tolist()

    @property
    def question_ids(self) -> list[str]:
        return self.features["question_id"].tolist()

    @property
    def sources(self) -> np.ndarray:
        """Provenance of each record (n_records,): ``generated``, ``gold`` or ``wrong``."""
        return self.features["source"].to_numpy(dtype=object)

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Records that could not be scored: ``[{"id": ..., "reason": ...}]``."""
        return list(self.manifest.get("skipped", []))

    def token_matrix(self, record_id: str) -> np.ndarray:
        """Per-token features (T, n_token_features) of one record."""
        rows = self.tokens[self.tokens["record_id"] == record_id]
        if rows.empty and record_id not in set(self.record_ids):
            raise KeyError(f"no record {record_id!r} in this FeatureSet")
        return rows.sort_values("token_index")[self.token_schema].to_numpy(dtype=np.float32)

    def token_sequences(self, columns: Sequence[str] | None = None) -> list[np.ndarray]:
        """Per-token feature matrices, one (T_i, n_columns) float32 array per record, in
        record order (the input of sequence probes); ``columns`` default to the token schema."""
        columns = self.token_schema if columns is None else list(columns)
        missing = [name for name in columns if name not in self.tokens]
        if missing:
            raise ExtractionError(f"no per-token column {missing[0]!r} in this FeatureSet")
        order = {record_id: i for i, record_id in enumerate(self.record_ids)}
        position = self.tokens["record_id"].map(order).to_numpy()
        ranked = np.lexsort((self.tokens["token_index"].to_numpy(), position))
        values = self.tokens[columns].to_numpy(dtype=np.float32)[ranked]
        counts = np.bincount(position[ranked], minlength=len(order))
        return np.split(values, np.cumsum(counts)[:-1])

    def subset(self, rows: np.ndarray) -> FeatureSet:
        """The records at positions ``rows`` (int indices or a boolean mask), same manifest."""
        rows = np.asarray(rows)
        positions = np.flatnonzero(rows) if rows.dtype == bool else rows
        features = self.features.iloc[positions].reset_index(drop=True)
        kept = self.tokens["record_id"].isin(set(features["record_id"]))
        tokens = self.tokens[kept].reset_index(drop=True)
        return FeatureSet(features=features, tokens=tokens, manifest=self.manifest)

    def join(self, other: FeatureSet) -> FeatureSet:
        """This FeatureSet's families and ``other``'s, for the same records and LLM (e.g.
        extracted in separate runs); rows in this one's order.

        Raises
        ------
        ExtractionError
            If the LLMs, the response span, the records or their tokens differ, or a family
            is in both.
        """
        mine, theirs = self.manifest, other.manifest
        if mine["llm"].get("fingerprint") != theirs["llm"].get("fingerprint"):
            raise ExtractionError("cannot join FeatureSets of different LLMs")
        if mine["config"]["response_end"] != theirs["config"]["response_end"]:
            raise ExtractionError("cannot join FeatureSets with different response_end")
        both = set(mine["config"]["families"]) & set(theirs["config"]["families"])
        if both:
            raise ExtractionError(f"cannot join: both FeatureSets have {', '.join(sorted(both))}")
        if sorted(self.record_ids) != sorted(other.record_ids):
            raise ExtractionError("cannot join FeatureSets of different records")
        extra = other.features.set_index("record_id").loc[self.record_ids, other.schema]
        features = pd.concat([self.features, extra.reset_index(drop=True)], axis=1)
        keys = ["record_id", "token_index"]
        tokens = self.tokens.merge(
            other.tokens[keys + other.token_schema], on=keys, how="left", validate="1:1"
        )
        if len(other.tokens) != len(self.tokens) or tokens[other.token_schema].isna().any().any():
            raise ExtractionError("cannot join: the records' response tokens differ")
        manifest = {
            **mine,
            "config": {
                **mine["config"],
                "families": {**mine["config"]["families"], **theirs["config"]["families"]},
            },
            "schema": self.schema + other.schema,
            "token_schema": self.token_schema + other.token_schema,
        }
        return FeatureSet(features=features, tokens=tokens, manifest=manifest)

    def __len__(self) -> int:
        return len(self.features)

    def __repr__(self) -> str:
        families = ", ".join(self.manifest["config"]["families"])
        return (
            f"FeatureSet({len(self)} records, {len(self.schema)} features, "
            f"{len(self.tokens)} tokens, families: {families})"
        )

    # ---- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the directory atomically; refuse to replace an existing one unless asked."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ExtractionError(f"{path} already exists; choose another --out or remove it")
        with atomic_directory(path) as staging:
            self.features.to_parquet(staging / "features.parquet", index=False)
            self.tokens.to_parquet(staging / "tokens.parquet", index=False)
            text = json.dumps(self.manifest, indent=2, ensure_ascii=False)
            (staging / "manifest.json").write_text(text, encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSet:
        """Read a FeatureSet directory, checking its files, version and schema."""
        path = Path(path)
        missing = [name for name in _FILES if not (path / name).is_file()]
        if missing:
            raise ExtractionError(
                f"{path} is not a FeatureSet directory (missing {', '.join(missing)}); "
                "create one with `perturbprobe extract`"
            )
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
            features = pd.read_parquet(path / "features.parquet")
            tokens = pd.read_parquet(path / "tokens.parquet")
        except (OSError, ValueError) as exc:
            raise ExtractionError(f"{path}: unreadable FeatureSet ({exc})") from exc
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise ExtractionError(
                f"{path}: FeatureSet format version {version!r}, this perturbprobe reads "
                f"{FORMAT_VERSION}; extract the features again"
            )
        expected = _ID_COLUMNS + list(manifest["schema"])
        if list(features.columns) != expected:
            raise ExtractionError(f"{path}: features.parquet columns do not match the manifest")
        if list(tokens.columns) != _TOKEN_ID_COLUMNS + list(manifest["token_schema"]):
            raise ExtractionError(f"{path}: tokens.parquet columns do not match the manifest")
        features["label"] = features["label"].astype("Int64")
        return cls(features=features, tokens=tokens, manifest=manifest)
