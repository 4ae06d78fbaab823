"""Does branching at an early entropy spike (GUARD) make the default LLM's answers more
often right — and is it the *spike* that helps, or just trying K branches somewhere?

On each dataset, the default LLM answers every question five ways; every answer is graded
with the dataset's grader (the LLM's own generated answers, never teacher-forced text):

  greedy        plain greedy decoding (what `collect` records);
  guard         fork K top-alternatives at the first spike in the first W tokens, keep the
                branch the demo's bundle trusts most (`perturbprobe generate --guard`);
  guard-logp    the same forks, the branch with the best mean token log-prob kept (no probe);
  random-pos    the control: the same questions as `guard` are forked, with the same K and the
                same probe, but at a uniformly random position in the first min(W, T) tokens
                of the greedy answer (T its length) — same budget, no targeting;
  best-of-K     K sampled answers per question (temperature 1), the probe picks one.

Printed per dataset: accuracy with a 95% bootstrap interval over questions; "any branch
right" (the kept answer or any branch right — what a perfect choice among the branches would
reach, so a reader can tell a fork that found no right answer from a probe that missed it);
generated tokens per answer (all branches; × greedy); the share of questions forked; wall
seconds; and paired bootstrap intervals of guard − greedy, guard − random-pos and
guard − best-of-K. Per-question answers and grades go to the JSON file.

easy-qa questions are restricted to the demo's held-out test split (questions the bundle's
probe and calibrator never saw), found from the demo's FeatureSet; arithmetic is a domain
the probe was never fitted on.

    python benchmarks/guided_generation.py [--bundle models/smollm2-135m-instruct/auto]
        [--arithmetic 150] [--limit N] [--branches 3] [--window 16] [--z 3.0]
        [--max-new-tokens 32] [--out runs/guided_generation.json]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

import perturbprobe
from perturbprobe import GuardConfig
from perturbprobe.bundles import Scorer
from perturbprobe.data import load_dataset, split_by_question
from perturbprobe.data.graders import grader_name_for, resolve_grader
from perturbprobe.features import FeatureSet

ARMS = ("greedy", "guard", "guard-logp", "random-pos", "best-of-K")


def heldout_questions(features_dir: Path) -> set[str] | None:
    """Question ids of the demo's test split (the split `make demo` fits with, seed 0)."""
    if not (features_dir / "manifest.json").exists():
        return None
    featureset = FeatureSet.load(features_dir)
    split = split_by_question(featureset.question_ids, featureset.y, random_state=0)
    return {str(featureset.question_ids[i]) for i in split.test}


def grade(examples, answers) -> np.ndarray:
    correct = []
    for example, answer in zip(examples, answers, strict=True):
        _, grader = resolve_grader(grader_name_for(example))
        correct.append(int(grader(answer.response, example)))
    return np.array(correct)


def any_branch_right(examples, answers) -> np.ndarray:
    """1 where the kept answer or any branch of a fork is right: the best a perfect choice
    among the branches could do (the ceiling of the probe's selection)."""
    right = []
    for example, answer in zip(examples, answers, strict=True):
        _, grader = resolve_grader(grader_name_for(example))
        responses = [answer.response] + [
            alternative.response
            for intervention in answer.interventions
            for alternative in intervention.alternatives
        ]
        right.append(int(any(grader(response, example) for response in responses)))
    return np.array(right)


def bootstrap(values: np.ndarray, n: int, rng) -> tuple[float, float, float]:
    """Mean and 95% percentile interval over resampled questions."""
    index = rng.integers(0, len(values), size=(n, len(values)))
    means = values[index].mean(axis=1)
    return float(values.mean()), *map(float, np.percentile(means, [2.5, 97.5]))


def run_dataset(name, examples, llm, scorer, args) -> dict:
    prompts = [example.messages for example in examples]
    guard = GuardConfig(branches=args.branches, window=args.window, z=args.z)
    common = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    answers, seconds = {}, {}

    def timed(arm, **kwargs):
        start = time.perf_counter()
        answers[arm] = perturbprobe.generate(llm, prompts, **common, **kwargs)
        seconds[arm] = time.perf_counter() - start
        print(f"  {arm}: {seconds[arm]:.0f} s", flush=True)

    print(f"{name}: {len(prompts)} questions", flush=True)
    timed("greedy", progress=False)
    timed("guard", scorer=scorer, guard=guard, progress=False)
    timed("guard-logp", guard=guard, progress=False)
    rng = random.Random(args.seed)
    fork_at = [
        rng.randint(1, max(1, min(args.window, len(greedy.token_ids))))
        if forked.interventions
        else None
        for greedy, forked in zip(answers["greedy"], answers["guard"], strict=True)
    ]
    timed("random-pos", scorer=scorer, guard=guard, fork_at=fork_at, progress=False)
    sampling = GuardConfig(branches=args.branches, branch_mode="sample", seed=args.seed)
    timed("best-of-K", scorer=scorer, guard=sampling, fork_at=[1] * len(prompts), progress=False)

    np_rng = np.random.default_rng(args.seed)
    correct = {arm: grade(examples, answers[arm]) for arm in ARMS}
    tokens = {arm: np.mean([a.generated_tokens for a in answers[arm]]) for arm in ARMS}
    forked = np.array([bool(a.interventions) for a in answers["guard"]])
    rows = {}
    for arm in ARMS:
        rows[arm] = {
            "accuracy": bootstrap(correct[arm], args.bootstrap, np_rng),
            "any_branch_right": bootstrap(
                any_branch_right(examples, answers[arm]), args.bootstrap, np_rng
            ),
            "tokens_per_answer": float(tokens[arm]),
            "tokens_vs_greedy": float(tokens[arm] / tokens["greedy"]),
            "forked": float(np.mean([bool(a.interventions) for a in answers[arm]])),
            "seconds": seconds[arm],
        }
    differences = {
        "guard - greedy": bootstrap(correct["guard"] - correct["greedy"], args.bootstrap, np_rng),
        "guard - random-pos": bootstrap(
            correct["guard"] - correct["random-pos"], args.bootstrap, np_rng
        ),
        "guard - best-of-K": bootstrap(
            correct["guard"] - correct["best-of-K"], args.bootstrap, np_rng
        ),
        "guard - greedy, forked questions only": bootstrap(
            (correct["guard"] - correct["greedy"])[forked], args.bootstrap, np_rng
        )
        if forked.any()
        else None,
    }
    changed = sum(
        a.response != g.response for a, g in zip(answers["guard"], answers["greedy"], strict=True)
    )
    per_question = [
        {
            "id": example.id,
            **{
                arm: {"response": answers[arm][i].response, "correct": int(correct[arm][i])}
                for arm in ARMS
            },
        }
        for i, example in enumerate(examples)
    ]
    return {
        "questions": len(prompts),
        "forked": int(forked.sum()),
        "guard_changed_answers": int(changed),
        "arms": rows,
        "differences": differences,
        "answers": per_question,
    }


def interval(values: tuple[float, float, float]) -> str:
    value, low, high = values
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def print_table(name: str, result: dict) -> None:
    print(
        f"\n{name}: {result['questions']} questions, guard forked {result['forked']}, "
        f"changed {result['guard_changed_answers']} answers"
    )
    print(
        f"| {'arm':<11} | {'accuracy [95% CI]':<22} | {'any branch right':<22} "
        "| tokens/answer | × greedy | forked | seconds |"
    )
    print(f"|{'-' * 13}|{'-' * 24}|{'-' * 24}|{'-' * 15}|{'-' * 10}|{'-' * 8}|{'-' * 9}|")
    for arm, row in result["arms"].items():
        print(
            f"| {arm:<11} | {interval(row['accuracy']):<22} | "
            f"{interval(row['any_branch_right']):<22} | "
            f"{row['tokens_per_answer']:>13.1f} | {row['tokens_vs_greedy']:>7.2f}× | "
            f"{row['forked']:>6.0%} | {row['seconds']:>7.0f} |"
        )
    for label, difference in result["differences"].items():
        if difference is not None:
            value, low, high = difference
            print(f"  {label}: {value:+.3f} [{low:+.3f}, {high:+.3f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="models/smollm2-135m-instruct/auto")
    parser.add_argument(
        "--features",
        default="runs/demo/features",
        type=Path,
        help="the demo's FeatureSet, to find easy-qa's held-out questions",
    )
    parser.add_argument("--arithmetic", type=int, default=150, help="arithmetic questions")
    parser.add_argument("--limit", type=int, default=None, help="questions per dataset at most")
    parser.add_argument("--branches", type=int, default=3)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--z", type=float, default=3.0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/guided_generation.json"))
    args = parser.parse_args()
    llm = perturbprobe.load_llm("default")
    scorer = Scorer.load(args.bundle, llm=llm)
    datasets = {}
    easy = load_dataset("builtin:easy-qa")
    heldout = heldout_questions(args.features)
    if heldout is None:
        print(
            f"warning: no FeatureSet at {args.features}; easy-qa includes questions the "
            "probe was fitted on (run `make demo` first)"
        )
        datasets["easy-qa"] = list(easy)
    else:
        datasets["easy-qa (held-out)"] = [e for e in easy if e.id in heldout]
    datasets["arithmetic"] = list(load_dataset(f"builtin:arithmetic?n={args.arithmetic}"))
    settings = {k: str(v) for k, v in vars(args).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, examples in datasets.items():
        examples = examples[: args.limit] if args.limit else examples
        results[name] = run_dataset(name, examples, llm, scorer, args)
        # written after each dataset, so a long run cut short keeps what it finished
        args.out.write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    for name, result in results.items():
        print_table(name, result)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
