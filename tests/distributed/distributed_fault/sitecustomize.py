"""Fault injection for tests/distributed/test_distributed.py: put this directory on PYTHONPATH
and set PERTURBPROBE_TEST_FAIL_RANK=k, and rank k of a torchrun job fails in its first extraction
pass (as a rank running out of memory would)."""

import os

if os.environ.get("RANK") is not None and os.environ.get("RANK") == os.environ.get(
    "PERTURBPROBE_TEST_FAIL_RANK"
):
    from perturbprobe.features import engine

    def _failing_pass(*args, **kwargs):
        raise RuntimeError("injected failure in the extraction pass")

    engine._run_pass = _failing_pass
