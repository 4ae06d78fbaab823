"""FeatureSet: the extracted features of a set of records, and its directory format.

A FeatureSet directory holds

- ``features.parquet``: one row per scored record — ``record_id``, ``question_id``,
  ``label`` (nullable), ``source`` (generated, gold or wrong), ``domain`` and ``format``
  (nullable: the kind of question and the answer format), then the response-level feature
  columns in schema order;
- ``tokens.parquet``: one row per response token — ``record_id``, ``token_index``,
  ``token_id``, ``token``, then the per-token feature columns;
- ``<family>.npy``: for a family that returns one wide block per record (``hidden_states``),
  the (n_records, K) array in record order, float16 or float32, read without pickle and
  memory-mapped; its layout (what the K columns are) is in the manifest's ``blocks``;
- ``manifest.json``: format version, perturbprobe version, creation time, the extractor
  config, the schema and token schema, the block layouts, the LLM's identity, counts, and
  the records that could not be scored with the reason.

Directories are written to a temporary sibling and renamed at the end, so an interrupted
extraction never leaves a directory that looks complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._io import output_directory
from .._version import __version__
from ..errors import ExtractionError

__all__ = ["FORMAT_VERSION", "FeatureSet", "ManifestSchema"]

# Bump when a reader of the previous version would misread the files (renamed or removed
# columns, changed meaning). Adding manifest keys does not need a bump.
# Version 2 added the ``source`` column; version 3 the blocks; version 4 the ``domain`` and
# ``format`` columns (versions 2 and 3 are still read: their records have neither).
FORMAT_VERSION = 4
_READABLE_VERSIONS = (2, 3, 4)
_FILES = ("features.parquet", "tokens.parquet", "manifest.json")
_ID_COLUMNS = ["record_id", "question_id", "label", "source", "domain", "format"]
_ID_COLUMNS_BEFORE_4 = _ID_COLUMNS[:4]
_TOKEN_ID_COLUMNS = ["record_id", "token_index", "token_id", "token"]


class ManifestSchema:
    """The columns named by a ``manifest`` attribute: a FeatureSet's, or what a bundle's probe
    reads."""

    manifest: dict[str, Any]

    @property
    def schema(self) -> list[str]:
        """Ordered response-level column names (empty for a sequence probe's bundle)."""
        return list(self.manifest["schema"])

    @property
    def token_schema(self) -> list[str]:
        """Ordered per-token column names (empty for a table probe's bundle)."""
        return list(self.manifest["token_schema"])


@dataclass
class FeatureSet(ManifestSchema):
    """Features of scored records, with labels, per-token values and provenance.

    Attributes
    ----------
    features : DataFrame (n_records, 6 + n_features)
    tokens : DataFrame (n_tokens, 4 + n_token_features)
    manifest : dict
    blocks : dict of str to ndarray (n_records, K)
        Wide per-record blocks by family (``hidden_states``), rows in record order.
    """

    features: pd.DataFrame
    tokens: pd.DataFrame
    manifest: dict[str, Any]
    blocks: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for position, name in ((4, "domain"), (5, "format")):  # records that carry neither
            if name not in self.features:
                empty = pd.Series([None] * len(self.features), dtype=object)
                self.features.insert(min(position, self.features.shape[1]), name, empty)
        for name, block in self.blocks.items():
            if block.ndim != 2 or block.shape[0] != len(self.features):
                raise ExtractionError(
                    f"block {name!r} has shape {block.shape}; expected ({len(self.features)}, K)"
                )

    # ---- views ------------------------------------------------------------------------------
    @property
    def families(self) -> list[str]:
        """The extracted feature families, in column order."""
        return list(self.manifest["config"]["families"])

    @property
    def block_layouts(self) -> dict[str, dict[str, Any]]:
        """``{family: layout}`` of the wide blocks (``columns``: their width K)."""
        return dict(self.manifest.get("blocks", {}))

    def matrix(self, families: Sequence[str] | None = None) -> tuple[np.ndarray, list]:
        """Every feature of ``families`` (all when None) as one float32 array, for probes.

        Returns
        -------
        X : ndarray (n_records, F), float32
            The families' response-level columns in schema order, then their blocks
            (``probe_table(columns, blocks)``).
        groups : list of (family, width)
            Which consecutive columns of X belong to which family, in X's order.
        """
        wanted = self.families if families is None else list(families)
        unknown = [name for name in wanted if name not in self.families]
        if unknown:
            raise ExtractionError(
                f"the features have no {', '.join(unknown)} family; "
                f"available: {', '.join(self.families)}"
            )
        columns = [name for name in self.schema if name.split("/", 1)[0] in wanted]
        blocks = [family for family in self.block_layouts if family in wanted]
        groups = self.column_groups(columns, blocks)
        if not groups:
            raise ExtractionError(f"the families {', '.join(wanted)} have no columns")
        table = self.probe_table(columns, blocks)
        return np.asarray(table, dtype=np.float32), groups

    def column_groups(
        self, columns: Sequence[str], blocks: Sequence[str] = ()
    ) -> list[tuple[str, int]]:
        """``(family, width)`` of the consecutive columns of ``probe_table(columns, blocks)``,
        in its order: the columns' families (``family/feature`` names), then each block."""
        groups: dict[str, int] = {}
        for name in columns:
            family = name.split("/", 1)[0]
            groups[family] = groups.get(family, 0) + 1
        groups.update({name: int(self.block_layouts[name]["columns"]) for name in blocks})
        return list(groups.items())

    def probe_table(self, columns: Sequence[str], blocks: Sequence[str] = ()):
        """What a table probe reads: the DataFrame ``features[columns]`` (n, F) when there are
        no ``blocks`` (feature names kept), else one float32 array (n, F + ΣK) — the columns,
        then each block, in order (missing values as NaN)."""
        if not blocks:
            return self.features[list(columns)]
        missing = [name for name in blocks if name not in self.blocks]
        if missing:
            raise ExtractionError(f"the features have no {', '.join(missing)} block")
        scalars = self.features[list(columns)].to_numpy(dtype=np.float32, na_value=np.nan)
        return np.concatenate(
            [scalars, *(np.asarray(self.blocks[b]) for b in blocks)], axis=1, dtype=np.float32
        )

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
    def domains(self) -> np.ndarray:
        """The kind of question of each record (n_records,), None where unknown."""
        return _optional_column(self.features, "domain")

    @property
    def formats(self) -> np.ndarray:
        """The answer format of each record (n_records,), None where unknown."""
        return _optional_column(self.features, "format")

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
        blocks = {name: np.asarray(block[positions]) for name, block in self.blocks.items()}
        return FeatureSet(features=features, tokens=tokens, manifest=self.manifest, blocks=blocks)

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
        theirs_rows = pd.Index(other.record_ids).get_indexer(self.record_ids)
        blocks = {**self.blocks, **{n: b[theirs_rows] for n, b in other.blocks.items()}}
        manifest = {
            **mine,
            "config": {
                **mine["config"],
                "families": {**mine["config"]["families"], **theirs["config"]["families"]},
            },
            "schema": self.schema + other.schema,
            "token_schema": self.token_schema + other.token_schema,
            "blocks": {**self.block_layouts, **other.block_layouts},
        }
        return FeatureSet(features=features, tokens=tokens, manifest=manifest, blocks=blocks)

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
        advice = "choose another --out or remove it"
        with output_directory(
            path, overwrite=overwrite, error=ExtractionError, advice=advice
        ) as staging:
            self.features.to_parquet(staging / "features.parquet", index=False)
            self.tokens.to_parquet(staging / "tokens.parquet", index=False)
            for name, block in self.blocks.items():
                array = np.ascontiguousarray(block)
                np.save(staging / f"{name}.npy", array, allow_pickle=False)
            text = json.dumps(self.manifest, indent=2, ensure_ascii=False)
            (staging / "manifest.json").write_text(text, encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSet:
        """Read a FeatureSet directory, checking its files, version and schema.

        Blocks are memory-mapped read-only (``.npy``, never unpickled), so a wide block costs
        memory only for the rows a probe reads."""
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
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        if version not in _READABLE_VERSIONS:
            newer = isinstance(version, int) and version > max(_READABLE_VERSIONS)
            raise ExtractionError(
                f"{path}: FeatureSet format version {version!r}, this perturbprobe "
                f"({__version__}) reads {', '.join(map(str, _READABLE_VERSIONS))}; "
                + ("upgrade perturbprobe" if newer else "extract the features again")
            )
        for key in ("schema", "token_schema", "config", "llm"):
            if key not in manifest:
                raise ExtractionError(
                    f"{path}: manifest.json has no {key!r}; the FeatureSet is corrupt"
                )
        id_columns = _ID_COLUMNS if version >= 4 else _ID_COLUMNS_BEFORE_4  # 4 added 2 columns
        _check_columns(path, "features.parquet", features, id_columns + manifest["schema"])
        _check_columns(path, "tokens.parquet", tokens, _TOKEN_ID_COLUMNS + manifest["token_schema"])
        features["label"] = features["label"].astype("Int64")
        blocks = {}
        for name, layout in manifest.get("blocks", {}).items():
            try:
                blocks[name] = np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ExtractionError(f"{path}: unreadable {name} block ({exc})") from exc
            if blocks[name].shape != (len(features), layout.get("columns")):
                raise ExtractionError(
                    f"{path}: {name}.npy has shape {blocks[name].shape}, the manifest says "
                    f"({len(features)}, {layout.get('columns')}); the FeatureSet is corrupt"
                )
        return cls(features=features, tokens=tokens, manifest=manifest, blocks=blocks)


def _optional_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    values = frame[name].to_numpy(dtype=object) if name in frame else np.full(len(frame), None)
    return np.array([None if pd.isna(v) else str(v) for v in values], dtype=object)


def _check_columns(path: Path, name: str, frame: pd.DataFrame, expected: list[str]) -> None:
    """Refuse a Parquet file whose columns differ from the manifest's, naming the first few."""
    columns = list(frame.columns)
    if columns == expected:
        return
    details, present, wanted = [], set(columns), set(expected)
    missing = [c for c in expected if c not in present]
    if missing:
        details.append("missing " + ", ".join(map(repr, missing[:3])))
    extra = [c for c in columns if c not in wanted]
    if extra:
        details.append("unexpected " + ", ".join(map(repr, extra[:3])))
    detail = "; ".join(details) or "same columns in another order"
    raise ExtractionError(
        f"{path}: {name} columns do not match the manifest ({detail}); the FeatureSet is "
        "corrupt: extract the features again"
    )
