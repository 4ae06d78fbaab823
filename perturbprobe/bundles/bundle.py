"""ProbeBundle: a fitted probe with everything needed to use it safely, as a directory.

A bundle directory holds

- ``manifest.json``: format version, perturbprobe version, creation time, the LLM's identity
  (name, architecture, sizes, fingerprint of tokenizer and head), the extractor config, the
  feature schema (ordered columns the probe reads), the probe's name and hyper-parameters,
  the calibrator, the abstention threshold (if any), a training-data summary, the held-out
  metrics, the sha256 of every other file, and ``manifest_sha256`` over the rest of the
  manifest itself;
- the probe's state, written by the probe as arrays and JSON, never a pickle:
  ``logistic.safetensors`` + ``logistic.json``, ``logistic-cv.safetensors`` +
  ``logistic-cv.json``, ``lightgbm.txt`` (LightGBM's own text format), ``ccps.safetensors`` +
  ``ccps.json`` (torch weights), or one ``stacking-<i>/`` sub-directory per base probe of a
  stacking probe plus ``stacking.json``;
- ``calibrators.json``: the probe's calibrator and the baselines' calibrators (plain numbers);
- ``split.json``: the record ids of the train / validation / test parts (and of the
  recalibration answers of a recalibrated bundle);
- ``shift.json``: a compact reference of the in-distribution inputs (quantiles of the probe's
  raw score and of a few key features on held-out answers), for the shift warning;
- ``report.html``, ``metrics.json``, ``reliability.png``: the held-out evaluation.

:meth:`ProbeBundle.load` checks the format version, the manifest's own hash and every file's
hash (:func:`~perturbprobe.bundles.verification.verified_manifest`), so a corrupt or
hand-edited bundle is refused. Bundles are written to a temporary
sibling directory and renamed, so an interrupted save never leaves a directory that looks
complete.

Loading never runs code from the bundle: nothing is unpickled, and :mod:`.verification`
refuses any directory that is not exactly its manifest's files, unmodified.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import output_directory
from .._version import __version__
from ..calibration.calibrators import Calibrator, calibrator_from_dict
from ..calibration.prior_shift import adjust_to_prior
from ..calibration.report import Report
from ..calibration.risk_control import RiskControlledThreshold
from ..calibration.shift import ShiftCheck, ShiftReference
from ..errors import BundleError, PerturbprobeError
from ..features import ExtractorConfig, FeatureSet, extract
from ..features.featureset import ManifestSchema
from ..probes.base import Probe, probe_class
from .verification import BUNDLE_FORMAT_VERSION, seal_manifest, verified_manifest

if TYPE_CHECKING:
    from ..data.records import Record
    from ..llm import LLM

__all__ = ["BUNDLE_FORMAT_VERSION", "SHIFT_ALPHA", "SHIFT_FEATURES", "ProbeBundle", "llm_slug"]

_CALIBRATORS = "calibrators.json"
_SPLIT = "split.json"
_SHIFT = "shift.json"

# Response-level columns the shift reference summarises besides the probe's raw score, when
# the probe reads them: the answer's confidence, the distributions' spread and its length.
SHIFT_FEATURES = ("baseline/prob:mean", "baseline/entropy:mean", "baseline/n_tokens")
# Significance level of the shift warning (Bonferroni over the summarised features): with
# batches drawn like the training data it fires about once per 1,000 batches.
SHIFT_ALPHA = 0.001


@dataclass
class ProbeBundle(ManifestSchema):
    """A fitted probe, its calibrator and provenance; see the module docstring for the files.

    Attributes
    ----------
    probe : Probe
        Fitted; reads the columns ``schema`` (table probes) or ``token_schema`` (sequence).
    calibrator : Calibrator
        Fitted on the validation part; maps the probe's P(correct) to a calibrated one.
    manifest : dict
        ``llm``, ``extractor``, ``schema``, ``token_schema``, ``probe``, ``calibrator``,
        ``training``, ``metrics`` (and, once saved or loaded, versions and hashes).
    baseline_calibrators : dict of str to Calibrator
        Calibrators of the baseline scores, fitted on the same part as ``calibrator``.
    abstention : RiskControlledThreshold or None
        Abstain below this calibrated confidence (selective risk ≤ r with prob. ≥ 1 − δ).
    report : Report or None
        The held-out evaluation (written as report.html, metrics.json, reliability.png).
    split : dict of str to list of str
        Record ids of the ``train``, ``validation`` and ``test`` parts (and
        ``recalibration``).
    shift_reference : ShiftReference or None
        Quantiles of the raw score and key features on held-out in-distribution answers.
    """

    probe: Probe
    calibrator: Calibrator
    manifest: dict[str, Any]
    baseline_calibrators: dict[str, Calibrator] = field(default_factory=dict)
    abstention: RiskControlledThreshold | None = None
    report: Report | None = None
    split: dict[str, list[str]] = field(default_factory=dict)
    shift_reference: ShiftReference | None = None

    # ---- what the probe reads (schema, token_schema: ManifestSchema) ------------------------
    @property
    def blocks(self) -> list[str]:
        """Wide blocks (``hidden_states``) a table probe reads after ``schema``, in order."""
        return list(self.manifest.get("blocks", {}))

    @property
    def extractor_config(self) -> ExtractorConfig:
        """The extractor config restricted to the families the probe reads."""
        config = self.manifest["extractor"]
        needed = {name.split("/", 1)[0] for name in self.schema + self.token_schema}
        needed |= set(self.blocks)
        families = {k: v for k, v in config["families"].items() if k in needed}
        return ExtractorConfig.from_dict({**config, "families": families})

    def extract(
        self,
        llm: LLM,
        records: Sequence[Record],
        *,
        allow_llm_mismatch: bool = False,
        batch_size: int = 8,
        progress: bool = True,
    ) -> FeatureSet:
        """The features this bundle's probe reads, for ``records``, extracted with its options
        by ``llm`` (refused unless it is the LLM the probe was fitted on)."""
        self.check_llm(llm.identity(), allow_mismatch=allow_llm_mismatch)
        return extract(
            llm, records, config=self.extractor_config, batch_size=batch_size, progress=progress
        )

    def probe_inputs(self, featureset: FeatureSet, *, allow_llm_mismatch: bool = False):
        """The probe's input for every record of ``featureset``: a DataFrame (n, F) in schema
        order, a float32 array (n, F + ΣK) when the probe reads blocks too, or a list of
        (T_i, F) arrays; raises BundleError if the features do not match."""
        self.check_features(featureset, allow_llm_mismatch=allow_llm_mismatch)
        if self.probe.input_kind == "sequence":
            return featureset.token_sequences(self.token_schema)
        return featureset.probe_table(self.schema, self.blocks)

    def predict_raw(self, featureset: FeatureSet, *, allow_llm_mismatch: bool = False):
        """The probe's uncalibrated P(correct) (n,) for every record of ``featureset``."""
        inputs = self.probe_inputs(featureset, allow_llm_mismatch=allow_llm_mismatch)
        return self.probe.predict_proba(inputs)[:, 1]

    def predict_confidence(
        self, featureset: FeatureSet, *, allow_llm_mismatch: bool = False
    ) -> np.ndarray:
        """Calibrated P(correct) (n,) for every record of ``featureset``."""
        raw = self.predict_raw(featureset, allow_llm_mismatch=allow_llm_mismatch)
        return self.calibrator.transform(raw)

    def adjust_to_accuracy(self, confidence: np.ndarray, target_accuracy: float) -> np.ndarray:
        """Calibrated confidences (n,) moved from the calibration data's accuracy to
        ``target_accuracy`` (prior-shift correction, when the accuracy on your traffic is
        known; see :func:`~perturbprobe.calibration.adjust_to_prior`)."""
        source = self.manifest["calibrator"].get("positive_rate")
        if source is None:
            raise BundleError(
                "this bundle does not record its calibration data's accuracy; fit it again "
                "to use target_accuracy"
            )
        _check_accuracy(target_accuracy)
        return adjust_to_prior(confidence, source_rate=source, target_rate=target_accuracy)

    def shift_values(self, featureset: FeatureSet, raw: np.ndarray) -> dict[str, np.ndarray]:
        """What the shift reference summarises, for the records of ``featureset``: the raw
        probe score ``raw`` (n,) and the :data:`SHIFT_FEATURES` columns the probe reads."""
        values = {"probe score": np.asarray(raw, dtype=np.float64)}
        for column in SHIFT_FEATURES:
            if column in self.schema:
                values[column] = featureset.features[column].to_numpy(dtype=np.float64)
        return values

    def check_shift(self, featureset: FeatureSet, raw: np.ndarray) -> ShiftCheck | None:
        """Whether a batch of inputs looks unlike the training data (None without a
        reference); ``raw`` is the probe's raw score of each record of ``featureset``."""
        return self.check_shift_values(self.shift_values(featureset, raw))

    def check_shift_values(self, values: dict[str, np.ndarray]) -> ShiftCheck | None:
        """:meth:`check_shift` on precomputed :meth:`shift_values` (each (n,)), e.g. of a
        subset of the scored pairs; None without a reference."""
        if self.shift_reference is None:
            return None
        return self.shift_reference.check(values, alpha=SHIFT_ALPHA)

    def recalibrate(self, featureset: FeatureSet, **kwargs) -> ProbeBundle:
        """A copy with the calibrator (and abstention threshold) refitted on labelled answers
        of a new domain; see :func:`perturbprobe.probes.recalibrate`."""
        from .recalibration import recalibrate

        return recalibrate(self, featureset, **kwargs)

    def abstain(self, confidence: np.ndarray) -> np.ndarray | None:
        """Boolean (n,): True where the bundle's threshold says abstain; None without one."""
        return None if self.abstention is None else self.abstention.abstain(confidence)

    # ---- compatibility checks ---------------------------------------------------------------
    def check_llm(self, identity: dict[str, Any], *, allow_mismatch: bool = False) -> None:
        """Refuse an LLM whose fingerprint differs from the one the probe was fitted on."""
        expected = self.manifest["llm"]
        if identity.get("fingerprint") == expected.get("fingerprint") or allow_mismatch:
            return
        raise BundleError(
            f"this probe was fitted on LLM {expected.get('name')!r} "
            f"({expected.get('architecture')}, vocab {expected.get('vocab_size')}, fingerprint "
            f"{str(expected.get('fingerprint'))[:12]}…) but the features come from "
            f"{identity.get('name')!r} (fingerprint {str(identity.get('fingerprint'))[:12]}…); "
            "its confidences would be meaningless. Use the bundle's LLM, or pass "
            "allow_llm_mismatch=True / --allow-llm-mismatch if you know the weights are the same"
        )

    def check_features(self, featureset: FeatureSet, *, allow_llm_mismatch: bool = False) -> None:
        """Refuse features with missing columns, other family options or another LLM."""
        self.check_llm(featureset.manifest["llm"], allow_mismatch=allow_llm_mismatch)
        available = set(featureset.schema) | set(featureset.token_schema)
        missing = [name for name in self.schema + self.token_schema if name not in available]
        if missing:
            raise BundleError(
                f"the features lack {len(missing)} column(s) the probe reads "
                f"(e.g. {', '.join(missing[:3])}); extract with the bundle's families: "
                f"{', '.join(self.extractor_config.families)}"
            )
        for name, layout in self.manifest.get("blocks", {}).items():
            if featureset.block_layouts.get(name) != layout:
                raise BundleError(
                    f"the features' {name} block is {featureset.block_layouts.get(name)} but the "
                    f"probe was fitted on {layout}; extract with the bundle's families: "
                    f"{', '.join(self.extractor_config.families)}"
                )
        ours = self.extractor_config.to_dict()
        theirs = featureset.manifest["config"]
        for family, options in ours["families"].items():
            if theirs["families"].get(family) != options:
                raise BundleError(
                    f"family {family!r} was extracted with options "
                    f"{theirs['families'].get(family)} but the probe was fitted with {options}; "
                    "extract again with the bundle's options"
                )
        if theirs.get("response_end") != ours["response_end"]:
            raise BundleError(
                f"features use response_end={theirs.get('response_end')!r}, the probe was fitted "
                f"with {ours['response_end']!r}; extract again with --set "
                f"response_end={ours['response_end']}"
            )

    # ---- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the bundle directory atomically; refuse to replace one unless asked."""
        path = Path(path)
        advice = "choose another --out or pass --overwrite"
        with output_directory(
            path, overwrite=overwrite, error=BundleError, advice=advice
        ) as staging:
            self.probe.save_state(staging)
            calibrators = {
                "probe": self.calibrator.to_dict(),
                "baselines": {k: c.to_dict() for k, c in self.baseline_calibrators.items()},
            }
            _write_json(staging / _CALIBRATORS, calibrators)
            _write_json(staging / _SPLIT, self.split)
            if self.shift_reference is not None:
                _write_json(staging / _SHIFT, self.shift_reference.to_dict())
            if self.report is not None:
                self.report.write(staging)
            manifest = {
                **self.manifest,
                "perturbprobe_version": __version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "abstention": None if self.abstention is None else self.abstention.to_dict(),
            }
            manifest = seal_manifest(staging, manifest)
        self.manifest = manifest
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProbeBundle:
        """Read and verify a bundle directory (version, hashes); the report is not loaded."""
        path = Path(path)
        manifest = verified_manifest(path)
        try:
            probe = probe_class(manifest["probe"]["name"]).load_state(
                path, manifest["probe"]["params"]
            )
            calibrators = json.loads((path / _CALIBRATORS).read_text(encoding="utf-8"))
            calibrator = calibrator_from_dict(calibrators["probe"])
            baselines = {k: calibrator_from_dict(v) for k, v in calibrators["baselines"].items()}
            abstention = manifest.get("abstention")
            if abstention is not None:
                abstention = RiskControlledThreshold.from_dict(abstention)
            split = json.loads((path / _SPLIT).read_text(encoding="utf-8"))
            shift = None
            if _SHIFT in manifest["files"]:
                shift = ShiftReference.from_dict(
                    json.loads((path / _SHIFT).read_text(encoding="utf-8"))
                )
        except PerturbprobeError as exc:
            raise BundleError(f"{path}: {exc}") from exc
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise BundleError(f"{path}: unusable bundle ({type(exc).__name__}: {exc})") from exc
        return cls(
            probe=probe,
            calibrator=calibrator,
            manifest=manifest,
            baseline_calibrators=baselines,
            abstention=abstention,
            split=split,
            shift_reference=shift,
        )

    def __repr__(self) -> str:
        return (
            f"ProbeBundle({self.manifest['probe']['name']} + {self.manifest['calibrator']['name']}"
            f", {self.probe.n_features_in_} features, "
            f"LLM {self.manifest['llm'].get('name')!r})"
        )


def llm_slug(name: str) -> str:
    """Directory-safe short name of an LLM: ``HuggingFaceTB/SmolLM2-135M-Instruct`` →
    ``smollm2-135m-instruct`` (bundles default to ``models/<slug>/<probe>``)."""
    stem = Path(str(name).rstrip("/")).name.removesuffix(".gguf")
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.") or "llm"


def _check_accuracy(value: float) -> None:
    try:
        ok = 0 < float(value) < 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise BundleError(f"target accuracy must be in (0, 1), got {value!r}")


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf-8")
