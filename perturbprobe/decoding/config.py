"""Settings of probe-guided generation (GUARD)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import GenerationError

__all__ = ["BRANCH_MODES", "GuardConfig"]

BRANCH_MODES = ("top-k", "sample")


@dataclass(frozen=True)
class GuardConfig:
    """When to fork a continuation and how many branches to try.

    A token at response position t ≤ ``window`` is a spike when its entropy exceeds
    median + z·MAD of the entropies of tokens 1..t (the ``entropy_dynamics`` rule applied
    to the tokens so far) and is at least ``min_entropy``. At a spike the continuation is
    split into ``branches`` branches starting from the state before that token.

    Attributes
    ----------
    branches : int
        K ≥ 2 branches per fork (default 3).
    z : float
        Spike threshold in robust standard deviations, > 0 (default 3.0).
    window : int
        Only tokens 1..W can trigger a fork, W ≥ 1 (default 16).
    max_interventions : int
        Forks on the way to any one answer, ≥ 1 (default 1). A branch can fork again, so
        an answer may take up to K^N branches.
    min_entropy : float
        A spike must also have at least this entropy in nats (default 0.0: the plain rule).
    branch_mode : {"top-k", "sample"}
        ``top-k``: the K most likely tokens, each continued greedily (branch 0 is the greedy
        answer); ``sample``: K continuations sampled at ``temperature``.
    temperature : float
        Sampling temperature for ``branch_mode="sample"``, > 0.
    seed : int
        Seed of the sampled branches (results do not depend on the batch).
    """

    branches: int = 3
    z: float = 3.0
    window: int = 16
    max_interventions: int = 1
    min_entropy: float = 0.0
    branch_mode: str = "top-k"
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check(
            isinstance(self.branches, int) and self.branches >= 2,
            "branches (K) must be an integer >= 2",
            self.branches,
        )
        _check(self.z > 0, "z must be > 0", self.z)
        _check(
            isinstance(self.window, int) and self.window >= 1,
            "window (W) must be an integer >= 1",
            self.window,
        )
        _check(
            isinstance(self.max_interventions, int) and self.max_interventions >= 1,
            "max_interventions (N) must be an integer >= 1",
            self.max_interventions,
        )
        _check(self.min_entropy >= 0, "min_entropy must be >= 0", self.min_entropy)
        _check(
            self.branch_mode in BRANCH_MODES,
            f"branch_mode must be one of {', '.join(BRANCH_MODES)}",
            self.branch_mode,
        )
        _check(self.temperature > 0, "temperature must be > 0", self.temperature)

    def to_dict(self) -> dict:
        return asdict(self)


def _check(ok: bool, message: str, value) -> None:
    if not ok:
        raise GenerationError(f"guard: {message}, got {value!r}")
