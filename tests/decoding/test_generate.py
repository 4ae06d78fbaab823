"""perturbprobe.generate and `perturbprobe generate`: greedy decoding equal to transformers'
generate, GUARD forks at the right step from the right cache state, batch-independence, the
choice among branches, and clear errors for bad options and files."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import warnings
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from decoder_reference import assert_branches_match_a_fresh_pass
from tiny_models import ARCHS, make_tiny_llm

import perturbprobe
from perturbprobe import GuardConfig
from perturbprobe.bundles import Scorer
from perturbprobe.cli import cli
from perturbprobe.data import load_dataset
from perturbprobe.decoding import collect
from perturbprobe.decoding.decoder import decode
from perturbprobe.decoding.reference import transformers_greedy
from perturbprobe.errors import GenerationError, PerturbprobeWarning
from perturbprobe.features import extract
from perturbprobe.features.distributions import entropy_from_log_probs
from perturbprobe.features.entropy_dynamics import spike_threshold
from perturbprobe.training import fit_bundle

QUESTIONS = [
    "What is the capital of France?",
    "Add two and two.",
    "Name a color.",
    "Who wrote Hamlet? Explain why in a few words, please.",
    "Is water wet?",
    "How many legs does a spider have?",
    "Translate hello into French.",
]
PROMPTS = [[{"role": "user", "content": q}] for q in QUESTIONS]
NEW_TOKENS = 12


# ============================================================ greedy decoding (guard disabled)


@pytest.mark.parametrize("arch", ARCHS)
def test_unguarded_decoding_equals_transformers_generate(arch):
    llm = make_tiny_llm(arch)
    answers = perturbprobe.generate(
        llm, PROMPTS, max_new_tokens=NEW_TOKENS, batch_size=3, progress=False
    )
    assert [a.token_ids for a in answers] == transformers_greedy(
        llm, PROMPTS, max_new_tokens=NEW_TOKENS, batch_size=3
    )
    for answer in answers:
        assert answer.interventions == [] and answer.confidence is None
        assert answer.generated_tokens == len(answer.token_ids) + (
            len(answer.token_ids) < NEW_TOKENS  # the end-of-turn token was decoded too
        )


def test_unguarded_decoding_equals_collects_answers():
    llm = make_tiny_llm("qwen2")
    dataset = load_dataset("builtin:easy-qa", limit=9)
    records = collect(llm, dataset, max_new_tokens=NEW_TOKENS, batch_size=4, progress=False)
    answers = perturbprobe.generate(
        llm, [e.messages for e in dataset], max_new_tokens=NEW_TOKENS, batch_size=4, progress=False
    )
    assert [r.response for r in records] == [a.response for a in answers]
    reference = transformers_greedy(
        llm, [e.messages for e in dataset], max_new_tokens=NEW_TOKENS, batch_size=4
    )
    assert [a.token_ids for a in answers] == reference


def test_one_prompt_gives_one_answer_and_a_string_is_a_question():
    llm = make_tiny_llm("llama")
    one = perturbprobe.generate(llm, QUESTIONS[0], max_new_tokens=NEW_TOKENS, progress=False)
    listed = perturbprobe.generate(llm, [PROMPTS[0]], max_new_tokens=NEW_TOKENS, progress=False)
    assert isinstance(one, perturbprobe.decoding.GuidedAnswer)
    assert one.token_ids == listed[0].token_ids


# ======================================================== a scripted model: forks exactly where


VOCAB, STOP = 8, 7


class ScriptedModel(torch.nn.Module):
    """Next-token logits fixed by the step: ``script[t]`` at response position t + 1, the
    same for every row; the cache just counts columns (it holds no state to get wrong)."""

    def __init__(self, script: torch.Tensor):
        super().__init__()
        self.script, self.prompt_width = script, 0
        self.batch_sizes: list[int] = []

    def forward(self, input_ids, attention_mask, position_ids, cache, use_cache, logits_to_keep):
        if cache is None:  # the prompt pass of a new decode
            self.prompt_width, self.batch_sizes = attention_mask.shape[1], []
        step = attention_mask.shape[1] - self.prompt_width
        self.batch_sizes.append(input_ids.shape[0])
        logits = self.script[min(step, len(self.script) - 1)].expand(input_ids.shape[0], 1, VOCAB)
        return SimpleNamespace(logits=logits, cache=cache or SimpleNamespace(reorder_cache=id))


def scripted_llm(entropy_levels: list[float]):
    """Step t's logits: token t mod 5 at the top, with the rest lifted so that the step's
    entropy rises with ``entropy_levels[t]``; STOP only after the script."""
    script = torch.full((len(entropy_levels) + 1, VOCAB), -30.0)
    for t, level in enumerate(entropy_levels):
        script[t, :5] = -level * torch.arange(5.0)  # flatter (higher entropy) for small level
        script[t, t % 5] = 10.0 if level > 1 else 1.0
    script[-1, STOP] = 10.0

    def pad(sequences, side):
        ids = torch.tensor([list(s) for s in sequences])
        return ids, torch.ones_like(ids)

    model = ScriptedModel(script)
    return SimpleNamespace(model=model, pad=pad, end_of_turn_ids=[STOP]), script


def entropies_of(script: torch.Tensor) -> list[float]:
    return entropy_from_log_probs(torch.log_softmax(script, -1)).tolist()


def test_a_scripted_spike_forks_once_at_its_position():
    # confident (level 3) everywhere but step 5 (1-based), which is flat (level 0.1)
    levels = [3.0, 3.0, 3.0, 3.0, 0.1, 3.0, 3.0]
    llm, script = scripted_llm(levels)
    entropy = entropies_of(script)
    threshold = float(spike_threshold(torch.tensor(entropy[:5], dtype=torch.float64), 3.0))
    assert entropy[4] > threshold  # the script does what it says
    decoded = decode(llm, [[1, 2, 3]], max_new_tokens=20, guard=GuardConfig(branches=3))
    assert len(decoded.forks) == 1
    fork = decoded.forks[0]
    assert fork.position == 5 and fork.threshold == pytest.approx(threshold, rel=1e-4)
    assert fork.entropy == pytest.approx(entropy[4], rel=1e-6)
    assert fork.token_ids == script[4].topk(3).indices.tolist()
    assert len(decoded.branches) == 3
    for number, branch in enumerate(sorted(decoded.branches, key=lambda b: b.path)):
        assert branch.path == ((0, number),)
        assert branch.token_ids[4] == fork.token_ids[number]  # the branch starts with its token
        greedy = script.argmax(-1).tolist()
        assert branch.token_ids[:4] == greedy[:4] and branch.token_ids[5:] == greedy[5:]
    # the batch grows from one row to three at the step after the fork
    assert llm.model.batch_sizes[:6] == [1, 1, 1, 1, 1, 3]
    # 7 tokens + STOP on the path through branch 0; positions 5..8 again on each other branch
    assert decoded.generated == [len(levels) + 1 + 2 * (len(levels) + 1 - 4)]


def test_no_fork_outside_the_window_nor_beyond_max_interventions():
    levels = [3.0, 3.0, 3.0, 3.0, 0.1, 3.0, 3.0, 3.0, 0.1, 3.0]
    llm, _ = scripted_llm(levels)
    assert decode(llm, [[1]], max_new_tokens=20, guard=GuardConfig(window=4)).forks == []
    once = decode(llm, [[1]], max_new_tokens=20, guard=GuardConfig(branches=2, window=16))
    assert [f.position for f in once.forks] == [5]  # the spike at 9 does not fork again
    llm, _ = scripted_llm(levels)
    twice = decode(
        llm, [[1]], max_new_tokens=20, guard=GuardConfig(branches=2, max_interventions=2)
    )
    assert [f.position for f in twice.forks] == [5, 9, 9]  # each branch forks once more
    assert len(twice.branches) == 4
    assert decode(llm, [[1]], max_new_tokens=20, guard=None).forks == []
    assert decode(llm, [[1]], max_new_tokens=20, guard=GuardConfig(min_entropy=50.0)).forks == []


def test_forced_fork_position():
    llm, _ = scripted_llm([3.0] * 6)
    decoded = decode(llm, [[1], [2]], max_new_tokens=20, guard=GuardConfig(), fork_at=[None, 2])
    assert [(f.prompt, f.position, f.threshold) for f in decoded.forks] == [(1, 2, None)]


# ====================================================== real tiny models: cache state, batching


GUARD = GuardConfig(branches=3, window=8, z=1.0)  # z = 1: forks on most tiny-model answers


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_branches_continue_from_the_right_cache_state(arch):
    """Every finished branch's per-token log-probs and entropies, decoded through forked and
    re-indexed caches, equal one fresh forward pass over prompt + branch tokens."""
    llm = make_tiny_llm(arch)
    encoded = [llm.prompt_ids(p) for p in PROMPTS[:4]]
    decoded = decode(llm, encoded, max_new_tokens=NEW_TOKENS, guard=GUARD)
    assert decoded.forks, "the test needs at least one fork"
    assert_branches_match_a_fresh_pass(llm, encoded, decoded.branches)


@pytest.mark.parametrize("mode", ["top-k", "sample"])
def test_batched_and_single_prompt_results_agree(mode):
    llm = make_tiny_llm("llama")
    guard = GuardConfig(branches=3, window=8, z=1.0, branch_mode=mode, max_interventions=2)
    batched = perturbprobe.generate(
        llm, PROMPTS, guard=guard, max_new_tokens=NEW_TOKENS, batch_size=4, progress=False
    )
    assert sum(bool(a.interventions) for a in batched) >= 2
    for prompt, together in zip(PROMPTS, batched, strict=True):
        alone = perturbprobe.generate(
            llm, prompt, guard=guard, max_new_tokens=NEW_TOKENS, progress=False
        )
        assert alone.token_ids == together.token_ids
        assert alone.generated_tokens == together.generated_tokens
        assert [
            (i.position, [a.token_id for a in i.alternatives]) for i in alone.interventions
        ] == [(i.position, [a.token_id for a in i.alternatives]) for i in together.interventions]
        assert alone.mean_log_prob == pytest.approx(together.mean_log_prob, abs=1e-5)


def test_without_a_scorer_the_best_mean_log_prob_wins():
    llm = make_tiny_llm("qwen2")
    answers = perturbprobe.generate(
        llm, PROMPTS, guard=GUARD, max_new_tokens=NEW_TOKENS, progress=False
    )
    forked = [a for a in answers if a.interventions]
    assert forked
    for answer in forked:
        (intervention,) = answer.interventions
        scores = [alt.mean_log_prob for alt in intervention.alternatives]
        chosen = [alt.chosen for alt in intervention.alternatives]
        assert chosen == [i == scores.index(max(scores)) for i in range(len(scores))]
        assert answer.mean_log_prob == max(scores)
        assert answer.response == intervention.alternatives[chosen.index(True)].response
        assert [alt.prob for alt in intervention.alternatives] == sorted(
            (alt.prob for alt in intervention.alternatives), reverse=True
        )


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    llm = make_tiny_llm("llama")
    records = collect(None, load_dataset("builtin:easy-qa", limit=40), source="gold")
    featureset = extract(llm, records, families="baseline,entropy_dynamics", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerturbprobeWarning)
        bundle = fit_bundle(featureset, probe="logistic", n_bootstrap=10)
    return bundle.save(tmp_path_factory.mktemp("generate") / "bundle")


def test_with_a_scorer_the_most_trusted_branch_wins(tiny_bundle):
    llm = make_tiny_llm("llama")
    scorer = Scorer.load(tiny_bundle, llm=llm)
    answers = perturbprobe.generate(
        llm, PROMPTS, scorer=scorer, guard=GUARD, max_new_tokens=NEW_TOKENS, progress=False
    )
    forked = [(p, a) for p, a in zip(PROMPTS, answers, strict=True) if a.interventions]
    assert forked
    for prompt, answer in forked:
        (intervention,) = answer.interventions
        for alt in intervention.alternatives:  # the recorded confidence is the scorer's
            if alt.response:
                assert alt.confidence == pytest.approx(
                    scorer.confidence(prompt, alt.response), abs=1e-4
                )
        best = max(
            alt.confidence for alt in intervention.alternatives if alt.confidence is not None
        )
        assert answer.confidence == best
        assert [alt.chosen for alt in intervention.alternatives].count(True) == 1
    record = json.loads(json.dumps(forked[0][1].guard_record()))  # JSON-ready
    assert record["interventions"][0]["alternatives"][0]["token_id"] >= 0


def test_the_shift_of_scored_branches_is_checked_once_per_run(tiny_bundle, monkeypatch, caplog):
    """Branches are scored in small batches; one shift check over all of them, not a
    warning per batch."""
    llm = make_tiny_llm("llama")
    scorer = Scorer.load(tiny_bundle, llm=llm)
    checked = []
    original = scorer.bundle.check_shift_values

    def always_shifted(values):
        checked.append(len(next(iter(values.values()))))
        return dataclasses.replace(original(values), shifted=True)

    monkeypatch.setattr(scorer.bundle, "check_shift_values", always_shifted)
    with caplog.at_level(logging.WARNING, logger="perturbprobe"):
        answers = perturbprobe.generate(
            llm,
            PROMPTS,
            scorer=scorer,
            guard=GUARD,
            max_new_tokens=NEW_TOKENS,
            batch_size=2,
            progress=False,
        )
    branches = sum(len(a.interventions[0].alternatives) for a in answers if a.interventions)
    assert len(checked) >= 3  # ≥ 2 batches of branches scored (each checked), + the run's check
    assert [r.name for r in caplog.records] == ["perturbprobe.decoding.guided"]
    assert "guard: the branches scored by the probe" in caplog.records[0].getMessage()
    assert checked[-1] == branches  # the last check saw every scored branch


# ================================================================================ bad input


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"branches": 1}, "branches \\(K\\) must be an integer >= 2, got 1"),
        ({"window": 0}, "window \\(W\\) must be an integer >= 1, got 0"),
        ({"z": 0.0}, "z must be > 0, got 0.0"),
        ({"z": -1.0}, "z must be > 0"),
        ({"z": math.nan}, "z must be > 0, got nan"),
        ({"max_interventions": 0}, "max_interventions \\(N\\) must be an integer >= 1"),
        ({"branch_mode": "beam"}, "branch_mode must be one of top-k, sample, got 'beam'"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"min_entropy": -1.0}, "min_entropy must be >= 0"),
    ],
)
def test_bad_guard_options_are_clear_errors(options, message):
    with pytest.raises(GenerationError, match=f"^guard: {message}"):
        GuardConfig(**options)


def test_bad_generate_arguments_are_clear_errors():
    llm = make_tiny_llm("llama", max_positions=64)
    with pytest.raises(GenerationError, match="max_new_tokens and batch_size must be >= 1"):
        perturbprobe.generate(llm, PROMPTS, max_new_tokens=0)
    with pytest.raises(GenerationError, match="fork_at needs a guard"):
        perturbprobe.generate(llm, PROMPTS[:2], fork_at=[1, 2])
    with pytest.raises(GenerationError, match="fork_at has 1 entries for 2 prompts"):
        perturbprobe.generate(llm, PROMPTS[:2], guard=GUARD, fork_at=[1])
    with pytest.raises(
        perturbprobe.PerturbprobeError, match=r"prompt 0: .* exceed the model's context of 64"
    ):
        perturbprobe.generate(llm, "a question " * 40, max_new_tokens=8, progress=False)


# ======================================================================================= CLI


def write_prompts(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_cli_generate_plain_and_guarded(tmp_path, tiny_llama_dir, tiny_bundle):
    llm = make_tiny_llm("llama")
    rows = [{"id": f"q{i}", "question": q} for i, q in enumerate(QUESTIONS[:4])]
    rows.append({"id": "m", "messages": PROMPTS[4], "extra": [1, 2]})
    prompts = write_prompts(tmp_path / "prompts.jsonl", rows)
    runner = CliRunner()

    def generate(out, *options):
        """`perturbprobe -q generate` of the prompts into ``out``; it must succeed."""
        args = ["-m", tiny_llama_dir, "-i", prompts, "-o", out, *options]
        args += ["--max-new-tokens", NEW_TOKENS]
        result = runner.invoke(cli, ["-q", "generate", *map(str, args)])
        assert result.exit_code == 0, result.output
        return result

    plain = tmp_path / "plain.jsonl"
    generate(plain)
    written = [json.loads(line) for line in plain.read_text().splitlines()]
    expected = perturbprobe.generate(
        llm, [PROMPTS[i] for i in range(5)], max_new_tokens=NEW_TOKENS, progress=False
    )
    assert [w["response"] for w in written] == [a.response for a in expected]
    assert [{k: v for k, v in w.items() if k != "response"} for w in written] == rows

    guarded = tmp_path / "guarded.jsonl"
    result = generate(
        guarded, "--guard", "--bundle", tiny_bundle, "-k", 3, "--window", 8, "--z", "1.0"
    )
    written = [json.loads(line) for line in guarded.read_text().splitlines()]
    assert all("guard" in w and w["guard"]["generated_tokens"] > 0 for w in written)
    forked = [w for w in written if w["guard"]["interventions"]]
    assert forked and "forked" in result.output
    for w in forked:
        alternatives = w["guard"]["interventions"][0]["alternatives"]
        assert len(alternatives) == 3 and all("confidence" in a for a in alternatives)
        chosen = next(a for a in alternatives if a["chosen"])
        assert w["response"] == chosen["response"]


@pytest.mark.parametrize(
    ("lines", "args", "message"),
    [
        (['{"question": "a"}', "{not json"], [], "prompts.jsonl line 2: invalid JSON"),
        (['{"id": 1}'], [], "line 1: give exactly one of 'messages' and 'question'"),
        (['{"question": "a", "response": "b"}'], [], "already has 'response'"),
        (['{"messages": [{"role": "bot", "content": "x"}]}'], [], "has role 'bot'"),
        ([""], [], "holds no prompts"),
        (['{"question": "a"}'], ["--guard", "-k", "1"], "branches \\(K\\) must be an integer >= 2"),
        (['{"question": "a"}'], ["--guard", "--z", "0"], "z must be > 0"),
        (['{"question": "a"}'], ["--guard", "--window", "0"], "window \\(W\\) must be"),
        (['{"question": "a"}'], ["--branches", "4"], "--branches only applies with --guard"),
        (['{"question": "a"}'], ["--bundle", "x"], "--bundle only applies with --guard"),
    ],
)
def test_cli_bad_input_fails_before_the_model_loads(tmp_path, lines, args, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    result = CliRunner().invoke(  # a model that does not exist: the error must come first
        cli,
        ["generate", "-m", str(tmp_path / "no-model"), "-i", str(prompts), "-o", str(out), *args],
    )
    assert result.exit_code == 1
    lines_out = result.output.strip().splitlines()
    assert len(lines_out) == 1 and lines_out[0].startswith("perturbprobe: error:")
    assert re.search(message, lines_out[0]), lines_out[0]
    assert not out.exists()
