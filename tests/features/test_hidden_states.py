"""``hidden_states``: pooled residual-stream activations, checked against the model's own
``output_hidden_states`` one pair at a time, and the FeatureSet block storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_llm

from perturbprobe.data import Record
from perturbprobe.errors import ExtractionError
from perturbprobe.features import ExtractorConfig, FeatureSet, extract
from perturbprobe.features.hidden_states import auto_layers

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def rec(record_id, question, response, label=1):
    return Record(
        id=record_id,
        question_id=f"q-{record_id}",
        messages=({"role": "user", "content": question},),
        response=response,
        label=label,
        source="generated",
    )


RECORDS = [
    rec("a", "Name a color.", "Blue is a color, and red is a color too."),
    rec("b", "Add two and two.", "Four", label=0),
    rec("c", "What is the capital of France?", "Paris is the capital.", label=1),
    rec("d", "How many legs does a spider have?", "Eight.", label=0),
]
ALL_POOLS = ["hidden_states.pools=mean,last,prompt_last", "hidden_states.dtype=float32"]


def reference_block(llm, record, layers, pools):
    """The same pooling from an unbatched forward with ``output_hidden_states``."""
    pair = llm.encode_pair(record.messages, record.response)
    ids = torch.tensor([pair.input_ids])
    with torch.no_grad():
        states = llm.model(input_ids=ids, output_hidden_states=True).hidden_states
    start, stop = len(pair.prompt_ids), len(pair.input_ids)
    parts = []
    for pool in pools:
        for layer in layers:
            h = states[layer][0].double()  # (L, D)
            parts.append(
                {"mean": h[start:stop].mean(0), "last": h[stop - 1], "prompt_last": h[start - 1]}[
                    pool
                ]
            )
    return torch.cat(parts).numpy()


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_block_matches_output_hidden_states(arch):
    llm = make_tiny_llm(arch)
    fs = extract(
        llm,
        RECORDS,
        families="hidden_states",
        overrides=[*ALL_POOLS, "hidden_states.layers=0,1,2"],
        batch_size=4,  # one right-padded batch of different lengths
        progress=False,
    )
    block = fs.blocks["hidden_states"]
    layout = fs.block_layouts["hidden_states"]
    assert layout["layers"] == [0, 1, 2] and layout["pools"] == ["mean", "last", "prompt_last"]
    assert block.shape == (4, 3 * 3 * llm.head.weight.shape[1]) == (4, layout["columns"])
    for row, record in enumerate(RECORDS):
        expected = reference_block(llm, record, [0, 1, 2], ["mean", "last", "prompt_last"])
        np.testing.assert_allclose(block[row], expected, rtol=1e-4, atol=1e-5)


def test_gradient_pass_keeps_the_same_states():
    """With a gradient family, the states come from the gradient pass: same values."""
    llm = make_tiny_llm("llama")
    plain = extract(llm, RECORDS, families="hidden_states", overrides=ALL_POOLS, progress=False)
    shared = extract(
        llm,
        RECORDS,
        families="embedding_perturbation,hidden_states",
        overrides=[*ALL_POOLS, "embedding_perturbation.samples=2"],
        progress=False,
    )
    np.testing.assert_allclose(
        shared.blocks["hidden_states"], plain.blocks["hidden_states"], rtol=1e-5, atol=1e-6
    )


def test_no_extra_forward_pass(monkeypatch):
    """hidden_states alongside baseline runs exactly the forward passes baseline runs alone."""
    llm = make_tiny_llm("llama")
    calls = []
    original = llm.model.base_model.forward

    def counting(*args, **kwargs):
        calls.append(kwargs.get("output_hidden_states"))
        return original(*args, **kwargs)

    monkeypatch.setattr(llm.model.base_model, "forward", counting)
    extract(llm, RECORDS, families="baseline", batch_size=2, progress=False)
    alone = len(calls)
    calls.clear()
    extract(llm, RECORDS, families="baseline,hidden_states", batch_size=2, progress=False)
    assert len(calls) == alone == 2


def test_default_band_and_float16_storage():
    assert auto_layers(30) == (15, 16, 18, 20, 21)
    assert auto_layers(2) == (1,)
    llm = make_tiny_llm("llama")
    fs = extract(llm, RECORDS, families="baseline,hidden_states", progress=False)
    layout = fs.block_layouts["hidden_states"]
    assert layout["pools"] == ["mean"] and layout["dtype"] == "float16"
    assert fs.blocks["hidden_states"].dtype == np.float16
    X, groups = fs.matrix()
    assert X.dtype == np.float32 and groups[-1] == ("hidden_states", layout["columns"])
    assert X.shape == (4, len(fs.schema) + layout["columns"])
    # hidden_states has no scalar columns: the schema is baseline's alone
    assert all(name.startswith("baseline/") for name in fs.schema)


def test_block_round_trip_subset_join(tmp_path):
    llm = make_tiny_llm("llama")
    fs = extract(llm, RECORDS, families="hidden_states", progress=False)
    fs.save(tmp_path / "fs")
    assert (tmp_path / "fs" / "hidden_states.npy").is_file()
    loaded = FeatureSet.load(tmp_path / "fs")
    np.testing.assert_array_equal(loaded.blocks["hidden_states"], fs.blocks["hidden_states"])
    part = loaded.subset(np.array([2, 0]))
    np.testing.assert_array_equal(part.blocks["hidden_states"], fs.blocks["hidden_states"][[2, 0]])
    other = extract(llm, RECORDS[::-1], families="baseline", progress=False)
    joined = other.join(fs)  # rows in `other`'s (reversed) order
    np.testing.assert_array_equal(joined.blocks["hidden_states"], fs.blocks["hidden_states"][::-1])
    assert set(joined.block_layouts) == {"hidden_states"}


def test_corrupt_block_is_refused(tmp_path):
    llm = make_tiny_llm("llama")
    fs = extract(llm, RECORDS, families="hidden_states", progress=False)
    fs.save(tmp_path / "fs")
    np.save(tmp_path / "fs" / "hidden_states.npy", np.zeros((3, 5), dtype=np.float16))
    with pytest.raises(ExtractionError, match=r"hidden_states\.npy has shape"):
        FeatureSet.load(tmp_path / "fs")
    (tmp_path / "fs" / "hidden_states.npy").write_bytes(b"not an npy file")
    with pytest.raises(ExtractionError, match="unreadable hidden_states block"):
        FeatureSet.load(tmp_path / "fs")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("hidden_states.layers=7", "layer 7 does not exist; the model has 2 layers"),
        ("hidden_states.layers=one", "must be 'auto' or distinct"),
        ("hidden_states.layers=1,1", "must be 'auto' or distinct"),
        ("hidden_states.pools=median", "subset of mean, last, prompt_last"),
        ("hidden_states.dtype=int8", "must be one of float16, float32"),
    ],
)
def test_bad_options(option, message):
    llm = make_tiny_llm("llama")
    with pytest.raises(ExtractionError, match=message):
        config = ExtractorConfig.create("hidden_states", [option])
        extract(llm, RECORDS, config=config, progress=False)
