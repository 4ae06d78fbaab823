"""The import paths of 0.1 still work until 0.3, each with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

from perturbprobe import _deprecated


@pytest.mark.parametrize("old, new", sorted(_deprecated.MOVED_MODULES.items()))
def test_an_old_module_path_is_the_new_module_with_a_warning(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


@pytest.mark.parametrize(
    "package, home, name",
    [
        (package, home, name)
        for package, homes in _deprecated.MOVED_NAMES.items()
        for home in homes
        for name in importlib.import_module(home).__all__
    ],
)
def test_an_old_name_is_the_new_object_with_a_warning(package, home, name, monkeypatch):
    module = importlib.import_module(package)
    monkeypatch.delitem(module.__dict__, name, raising=False)  # resolved by an earlier use
    with pytest.warns(DeprecationWarning, match=f"{package}.{name} moved to {home}.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(home), name)


def test_the_names_of_0_1_still_resolve():
    """Everything ``perturbprobe.probes`` and ``perturbprobe.data`` exported in 0.1."""
    probes = (
        "BUNDLE_FORMAT_VERSION MIN_RECALIBRATION_ANSWERS ProbeBundle Scorer Scores llm_slug "
        "recalibrate score_file Candidate Selection bundle_split default_candidates "
        "evaluate_bundles family_ablation fit_bundle heldout_rows select_probe QuestionSplit "
        "split_by_question PROBES Probe make_probe CCPSProbe CCPSSequenceProbe LightGBMProbe "
        "LogisticCVProbe LogisticProbe StackingProbe"
    )
    data = (
        "COLLECT_SOURCES FORMATS GRADERS Dataset Example Record SelfConsistency accuracy_table "
        "builtin_names collect generate_responses load_dataset normalize_answer pair_record "
        "read_records register_grader self_consistency self_consistency_confidence "
        "to_multiple_choice write_records"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for package, names in (("perturbprobe.probes", probes), ("perturbprobe.data", data)):
            module = importlib.import_module(package)
            assert [n for n in names.split() if not hasattr(module, n)] == []


def test_an_unknown_name_is_still_an_attribute_error():
    import perturbprobe.probes

    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        perturbprobe.probes.Nope  # noqa: B018


def test_new_paths_do_not_warn(recwarn):
    import perturbprobe.bundles
    import perturbprobe.training

    assert perturbprobe.bundles.Scorer and perturbprobe.training.fit_bundle
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
