"""exit_rank: a rank that joined a group leaves it and exits at once with the given status,
its output flushed; a process that never joined one is left alone."""

from __future__ import annotations

import subprocess
import sys

RANK = """
import os, sys
import torch.distributed as dist
from perturbprobe.distributed import exit_rank
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
dist.init_process_group("gloo", rank=0, world_size=1, init_method="tcp://127.0.0.1:0")
print("written", end="")  # unflushed: exit_rank must flush it
exit_rank(3)
print("not reached")
"""


def test_a_rank_exits_with_its_status_and_flushed_output():
    result = subprocess.run(
        [sys.executable, "-c", RANK], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout == "written"


def test_without_a_group_it_returns():
    code = "from perturbprobe.distributed import exit_rank; exit_rank(3); print('back')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "back", result.stderr
