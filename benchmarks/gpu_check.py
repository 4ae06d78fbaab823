"""GPU readiness in one unattended run (< 10 minutes on one GPU), one summary table at the end.

When a CUDA device is present:

  1. the GPU-marked tests (``pytest -m gpu``: CUDA vs CPU features and greedy answers);
  2. bf16 against fp32 weights on the default LLM: the largest relative difference of the
     response-level features of each family, on ``--records`` gold/wrong answers;
  3. peak GPU memory of each family alone on the same records;
  4. ``benchmarks/extract_speed.py`` on the GPU (ccps and r = 20 random samples as a multiple
     of a bare forward; targets ccps <= 1.3x, random r = 20 <= 4x on a GPU);
  5. ``benchmarks/serve_load.py`` when the demo's bundle exists (``make demo``).

Without a CUDA device it says so and exits 0. Each step has a time limit; a step that fails or
runs out of time is reported as such and the others still run. Exit status 1 if any failed.

    python benchmarks/gpu_check.py [--records 32] [--bundle models/smollm2-135m-instruct/auto]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = (
    "baseline",
    "ccps",
    "entropy_dynamics",
    "sua",
    "hidden_states",
    "semantic_gradient",
    "embedding_perturbation",
)


def run_step(name: str, command: list[str], limit: float, summary: list) -> str:
    """Run ``command`` with a time limit, echo its output, add a summary row."""
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit)
        output, status = result.stdout + result.stderr, "ok" if result.returncode == 0 else "FAILED"
    except subprocess.TimeoutExpired as exc:
        output, status = f"{exc.stdout or ''}{exc.stderr or ''}", f"TIMEOUT ({limit:.0f} s)"
    print(output[-6000:])
    summary.append((name, status, f"{time.perf_counter() - started:.0f} s", _last_line(output)))
    return output


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    return lines[-1][:90] if lines else ""


def precision_and_memory(n_records: int, summary: list) -> None:
    """bf16 vs fp32 features per family, and each family's peak GPU memory."""
    from perturbprobe import load_llm
    from perturbprobe.data import load_dataset
    from perturbprobe.decoding import collect
    from perturbprobe.features import extract

    records = collect(
        None, load_dataset("builtin:easy-qa", limit=n_records // 4 + 1), source="gold"
    )[:n_records]
    fp32 = load_llm("default", device="cuda", dtype="float32")
    bf16 = load_llm("default", device="cuda", dtype="bfloat16")
    print(f"\n=== bf16 vs fp32 weights, peak memory ({len(records)} records)")
    print(f"{'family':<24}{'max rel diff':>14}{'median rel diff':>17}{'peak GiB':>10}")
    for family in FAMILIES:
        started = time.perf_counter()
        try:
            torch.cuda.reset_peak_memory_stats()
            a = extract(fp32, records, families=family, progress=False)
            peak = torch.cuda.max_memory_allocated() / 2**30
            b = extract(bf16, records, families=family, progress=False)
            x = a.features[a.schema].to_numpy(np.float64)
            y = b.features[b.schema].to_numpy(np.float64)
            relative = np.abs(x - y) / np.maximum(np.abs(x), 1e-6)
            worst, typical = np.nanmax(relative), np.nanmedian(relative)
            print(f"{family:<24}{worst:>14.3g}{typical:>17.3g}{peak:>10.2f}")
            status, note = "ok", f"bf16 max rel diff {worst:.3g}, peak {peak:.2f} GiB"
        except Exception as exc:  # report and go on with the other families
            status, note = "FAILED", f"{type(exc).__name__}: {exc}"[:90]
            print(f"{family:<24} {note}")
        summary.append(
            (f"bf16/memory {family}", status, f"{time.perf_counter() - started:.0f} s", note)
        )
    del fp32, bf16
    torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--bundle", type=Path, default=ROOT / "models/smollm2-135m-instruct/auto")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device on this machine: nothing to check (run this where a GPU is)")
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    summary: list[tuple[str, str, str, str]] = []
    python = sys.executable
    run_step("gpu tests", [python, "-m", "pytest", "-q", "-m", "gpu", "tests"], 150, summary)
    precision_and_memory(args.records, summary)
    run_step(
        "extract speed",
        [
            python,
            "benchmarks/extract_speed.py",
            "--pairs",
            "32",
            "--naive-pairs",
            "4",
            "--repeats",
            "3",
        ],
        180,
        summary,
    )
    if args.bundle.is_dir():
        run_step(
            "serve load",
            [python, "benchmarks/serve_load.py", "--bundle", str(args.bundle)],
            150,
            summary,
        )
    else:
        summary.append(("serve load", "skipped", "-", f"no bundle at {args.bundle}; make demo"))
    print("\n=== summary")
    print(f"{'step':<34}{'status':<16}{'time':>7}  note")
    for name, status, seconds, note in summary:
        print(f"{name:<34}{status:<16}{seconds:>7}  {note}")
    return 0 if all(status in ("ok", "skipped") for _, status, _, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
