"""Production scoring: a saved bundle + its LLM → calibrated confidence for (prompt, response).

>>> scorer = Scorer.load("models/smollm2-135m-instruct/lightgbm", llm="default")  # doctest: +SKIP
>>> scorer.confidence("What is the capital of France?", "Paris")                  # doctest: +SKIP
0.93

The scorer extracts only the feature families the bundle's probe reads, with the bundle's
options, then applies the probe and its calibrator (and, given ``target_accuracy``, the
prior-shift correction). Each batch is compared with the bundle's shift reference; a batch
that looks unlike the training data gets a one-line warning (``Scores.shift``).

Thread safety: a Scorer may be shared between threads; calls are serialised by a lock (the
LLM runs one batch at a time), so concurrent callers wait for each other rather than
interleaving passes. For throughput, batch pairs in one :meth:`Scorer.score` call.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import write_jsonl
from ..calibration.shift import ShiftCheck
from ..data.records import Record, pair_record
from ..errors import DatasetError, PairEncodingError, PerturbprobeError
from ..features import extract
from ..llm import LLM, load_llm
from .bundle import ProbeBundle

if TYPE_CHECKING:
    from ..distributed import ProcessGroup

__all__ = ["Scorer", "Scores", "score_file"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    """Result of :meth:`Scorer.score` for n pairs.

    Attributes
    ----------
    confidence : float array (n,)
        Calibrated P(correct); NaN for pairs that could not be scored.
    abstain : bool array (n,) or None
        True where the bundle's risk-controlled threshold says abstain (also True for pairs
        that could not be scored); None when the bundle has no threshold.
    errors : dict of int to str
        Position → why that pair could not be scored.
    shift : ShiftCheck or None
        Whether the scored pairs, as a batch, look unlike the probe's training data (None
        when the bundle has no shift reference or nothing was scored).
    shift_values : dict of str to float array (n,), or None
        What the shift check reads, per pair (NaN for pairs that could not be scored), so a
        subset of the pairs can be checked on its own with
        :meth:`ProbeBundle.check_shift_values`; None when the bundle has no shift reference.
    """

    confidence: np.ndarray
    abstain: np.ndarray | None
    errors: dict[int, str]
    shift: ShiftCheck | None = None
    shift_values: dict[str, np.ndarray] | None = None


class Scorer:
    """Scores answers with a fitted :class:`ProbeBundle` on the LLM it was fitted for.

    Parameters
    ----------
    bundle : ProbeBundle
    llm : LLM
    allow_llm_mismatch : bool
        Score even if the LLM's fingerprint differs from the bundle's (you take the risk).
    batch_size : int
        Pairs per teacher-forced pass.
    memory_mb : float
        Budget of the head arithmetic (results do not depend on it).
    target_accuracy : float in (0, 1), optional
        The accuracy you know the LLM has on your traffic: confidences are moved from the
        calibration data's accuracy to it (prior-shift correction; the probe's ranking is
        unchanged). Without it confidences reflect the calibration data's base rate.
    group : ProcessGroup, optional
        Under torchrun: each rank extracts its share of every :meth:`score` call's batches;
        rank 0 gets the :class:`Scores`, the other ranks None
        (:mod:`perturbprobe.distributed`).
    """

    def __init__(
        self,
        bundle: ProbeBundle,
        llm: LLM,
        *,
        allow_llm_mismatch: bool = False,
        batch_size: int = 8,
        memory_mb: float = 256.0,
        target_accuracy: float | None = None,
        group: ProcessGroup | None = None,
    ):
        bundle.check_llm(llm.identity(), allow_mismatch=allow_llm_mismatch)
        if target_accuracy is not None:  # fail now, not at the first request
            bundle.adjust_to_accuracy(np.array([0.5]), target_accuracy)
        self.target_accuracy = target_accuracy
        self.bundle = bundle
        self.llm = llm
        self.allow_llm_mismatch = allow_llm_mismatch
        self.batch_size = batch_size
        self.memory_mb = memory_mb
        self.group = group
        self._config = bundle.extractor_config
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        bundle_dir: str | os.PathLike,
        llm: LLM | str = "default",
        *,
        allow_llm_mismatch: bool = False,
        device: str | None = None,
        dtype: str = "float32",
        **kwargs,
    ) -> Scorer:
        """Load and verify a bundle, and the LLM when given by name (see :func:`load_llm`)."""
        bundle = ProbeBundle.load(bundle_dir)
        if isinstance(llm, str):
            llm = load_llm(llm, device=device, dtype=dtype)
        return cls(bundle, llm, allow_llm_mismatch=allow_llm_mismatch, **kwargs)

    def confidence(self, messages: str | list[dict[str, str]], response: str) -> float:
        """Calibrated P(correct) of one answer; ``messages`` may be a plain question string.

        Raises PairEncodingError for an unusable pair (empty response, too long, bad messages).
        """
        scores = self.score([{"messages": messages, "response": response}])
        if scores.errors:
            raise PairEncodingError(scores.errors[0])
        return float(scores.confidence[0])

    def score(
        self, pairs: Iterable[Mapping[str, Any]], *, progress: bool = False, warn_shift: bool = True
    ) -> Scores | None:
        """Score many pairs in batches; unusable pairs are reported, the rest still scored.

        Parameters
        ----------
        pairs : iterable of mappings
            Each with ``response`` and ``messages`` (a list of {"role", "content"} or a
            string) or ``question`` (a string).
        progress : bool
            Show a progress bar over pairs.
        warn_shift : bool
            Log a warning when these pairs look shifted; a caller that checks a larger
            batch itself (from ``Scores.shift_values``) passes False.
        """
        records: list[Record] = []
        errors: dict[int, str] = {}
        pairs = list(pairs)
        for index, pair in enumerate(pairs):
            try:
                records.append(pair_record(index, pair))
            except PerturbprobeError as exc:
                errors[index] = str(exc)
        confidence = np.full(len(pairs), np.nan)
        with self._lock:
            featureset = self._extract(records, errors, progress)
        if self.group is not None and not self.group.is_root:
            return None
        shift = shift_values = None
        if featureset is not None:
            raw = self.bundle.predict_raw(featureset, allow_llm_mismatch=self.allow_llm_mismatch)
            values = self.bundle.calibrator.transform(raw)
            if self.target_accuracy is not None:
                values = self.bundle.adjust_to_accuracy(values, self.target_accuracy)
            positions = np.asarray(featureset.record_ids, dtype=np.int64)
            confidence[positions] = values
            if self.bundle.shift_reference is not None:
                scored_values = self.bundle.shift_values(featureset, raw)
                shift = self.bundle.check_shift_values(scored_values)
                shift_values = {}
                for name, column in scored_values.items():
                    shift_values[name] = np.full(len(pairs), np.nan)
                    shift_values[name][positions] = column
            if warn_shift and shift is not None and shift.shifted:
                logger.warning("%s", shift.message())
        abstain = None
        if self.bundle.abstention is not None:
            abstain = np.ones(len(pairs), dtype=bool)
            scored = ~np.isnan(confidence)
            abstain[scored] = self.bundle.abstention.abstain(confidence[scored])
        return Scores(
            confidence=confidence,
            abstain=abstain,
            errors=dict(sorted(errors.items())),
            shift=shift,
            shift_values=shift_values,
        )

    def _extract(self, records: list[Record], errors: dict[int, str], progress: bool):
        """Features of the usable records, or None when there are none (reasons → errors).
        Encoding first (tokenisation only) finds every unusable pair with its reason."""
        usable = []
        for record in records:
            try:
                self.llm.encode_pair(
                    record.messages, record.response, response_end=self._config.response_end
                )
                usable.append(record)
            except PerturbprobeError as exc:
                errors[int(record.id)] = str(exc)
        if not usable:
            return None
        return extract(
            self.llm,
            usable,
            config=self._config,
            batch_size=self.batch_size,
            memory_mb=self.memory_mb,
            progress=progress,
            group=self.group,
        )

    def __repr__(self) -> str:
        return f"Scorer({self.bundle!r}, {self.llm!r})"


def score_file(
    scorer: Scorer, input_path: str | os.PathLike, output_path: str | os.PathLike, **kwargs
) -> tuple[dict[int, str], ShiftCheck | None] | None:
    """Score a JSONL file of pairs into another, in order (``perturbprobe score``).

    Each output row is the input row plus ``confidence`` (and ``abstain`` when the bundle has
    a threshold). A row that cannot be scored (bad JSON, missing fields, empty or too long
    response) keeps its place with ``confidence: null`` and an ``error``; the rest are still
    scored. The output is written atomically.

    Returns
    -------
    errors : dict of int to str
        1-based line number → why that line could not be scored.
    shift : ShiftCheck or None
        The shift check of the scored lines as one batch (see :attr:`Scores.shift`).

    On ranks other than 0 of a scorer's torchrun ``group`` it writes nothing and returns None.
    """
    rows: list[dict[str, Any] | None] = []
    errors: dict[int, str] = {}
    try:
        lines = Path(input_path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read pairs from {input_path}: {exc}") from exc
    lines = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    for number, line in lines:
        try:
            row = json.loads(line)
        except ValueError as exc:
            row, errors[number] = None, f"not valid JSON ({exc})"
        rows.append(row)
    scores = scorer.score([row if row is not None else {} for row in rows], **kwargs)
    if scores is None:
        return None  # a rank other than 0 of a torchrun job: rank 0 writes
    output = []
    for position, ((number, _), row) in enumerate(zip(lines, rows, strict=True)):
        if number not in errors and position in scores.errors:
            errors[number] = scores.errors[position]
        out = dict(row) if isinstance(row, dict) else {"input": row}
        confidence = scores.confidence[position]
        out["confidence"] = None if np.isnan(confidence) else float(confidence)
        if scores.abstain is not None:
            out["abstain"] = bool(scores.abstain[position])
        if number in errors:
            out["error"] = errors[number]
        output.append(out)
    write_jsonl(output_path, output)
    return dict(sorted(errors.items())), scores.shift
