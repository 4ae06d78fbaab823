"""The import paths of 0.1 still work until 0.3, each with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys

import pytest

from perturbprobe import _deprecated


@pytest.mark.parametrize("old, new", sorted(_deprecated.MOVED_MODULES.items()))
def test_an_old_module_path_is_the_new_module_with_a_warning(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


@pytest.mark.parametrize(
    "package, name",
    [(package, name) for package, names in _deprecated.MOVED_NAMES.items() for name in names],
)
def test_an_old_name_is_the_new_object_with_a_warning(package, name, monkeypatch):
    module = importlib.import_module(package)
    monkeypatch.delitem(module.__dict__, name, raising=False)  # resolved by an earlier use
    new = _deprecated.MOVED_NAMES[package][name]
    with pytest.warns(DeprecationWarning, match=f"{package}.{name} moved to {new}.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


def test_an_unknown_name_is_still_an_attribute_error():
    import perturbprobe.probes

    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        perturbprobe.probes.Nope  # noqa: B018


def test_new_paths_do_not_warn(recwarn):
    import perturbprobe.bundles
    import perturbprobe.training

    assert perturbprobe.bundles.Scorer and perturbprobe.training.fit_bundle
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
