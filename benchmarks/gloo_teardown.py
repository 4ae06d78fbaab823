"""Why every rank leaves its process group at exit: two-rank gloo runs, counted.

Each run starts 2 ranks under torchrun. They exchange objects as perturbprobe's ranks do
(``all_gather_object``, ``gather_object``) and exit with status 0, in one of three ways:

- ``bare``: the group is left to the interpreter's teardown;
- ``destroy``: ``dist.destroy_process_group()`` before exit;
- ``perturbprobe``: the exchange goes through :mod:`perturbprobe.distributed`, which destroys
  the group in an ``atexit`` hook.

A run counts as an abort when a rank dies with "terminate called without an active exception"
(SIGABRT) after its work. On the 2-core development machine, loaded by a test suite, ``bare``
aborted in 10 of 40 runs and the other two in 0 of 40. Run it on a loaded machine to see it:

    python benchmarks/gloo_teardown.py --runs 40
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

VARIANTS = ("bare", "destroy", "perturbprobe")


def worker(variant: str) -> None:
    """One rank: join, exchange, leave as ``variant`` says."""
    if variant == "perturbprobe":
        from perturbprobe.distributed import process_group

        group = process_group()
        group.all_gather({group.rank: list(range(1000))})
        group.gather({group.rank: group.rank})
        group.agree(None)
        sys.exit(0)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"rank": dist.get_rank(), "x": list(range(1000))})
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object({"rank": dist.get_rank()}, parts, dst=0)
    if variant == "destroy":
        dist.destroy_process_group()
    sys.exit(0)


def one_run(variant: str) -> tuple[bool, bool]:
    """(aborted, exit status non-zero) of one two-rank torchrun job."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", __file__, "--worker", variant]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    output = result.stdout + result.stderr
    return "terminate called" in output or "SIGABRT" in output, result.returncode != 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per variant (default 20)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    print("| variant | runs | aborts (SIGABRT at exit) | non-zero exit | s/run |")
    print("|---|---|---|---|---|")
    for variant in args.variants.split(","):
        start = time.perf_counter()
        outcomes = [one_run(variant) for _ in range(args.runs)]
        seconds = (time.perf_counter() - start) / args.runs
        aborts = sum(aborted for aborted, _ in outcomes)
        failures = sum(failed for _, failed in outcomes)
        print(f"| {variant} | {args.runs} | {aborts} | {failures} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
