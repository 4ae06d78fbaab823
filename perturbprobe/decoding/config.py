"""Settings of generation: sampling (:class:`SamplingConfig`) and probe-guided generation
(GUARD, :class:`GuardConfig`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import GenerationError

__all__ = ["BRANCH_MODES", "GuardConfig", "SamplingConfig"]

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


def _check(ok: bool, message: str, value, what: str = "guard") -> None:
    if not ok:
        raise GenerationError(f"{what}: {message}, got {value!r}")


@dataclass(frozen=True)
class SamplingConfig:
    """How plain (unguarded) decoding picks tokens; the names are OpenAI's.

    Attributes
    ----------
    n : int
        Continuations per prompt, >= 1 (default 1).
    temperature : float or None
        > 0: sample from softmax(logits / temperature); 0 or None (default): greedy.
    top_p : float
        Nucleus sampling, in (0, 1] (default 1: the whole distribution): sample from the
        smallest set of most likely tokens whose probability reaches ``top_p``. Ignored when
        greedy.
    seed : int
        Seed of the samples. Sample k of a prompt is drawn from its own generator, seeded from
        (seed, the prompt's token ids, k), so it does not depend on the batch.
    """

    n: int = 1
    temperature: float | None = None
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check(
            isinstance(self.n, int) and not isinstance(self.n, bool) and self.n >= 1,
            "n must be an integer >= 1",
            self.n,
            what="sampling",
        )
        _check(
            self.temperature is None
            or (
                _is_number(self.temperature)
                and math.isfinite(self.temperature)
                and self.temperature >= 0
            ),
            "temperature must be a finite number >= 0 (0 or None: greedy)",
            self.temperature,
            what="sampling",
        )
        _check(
            _is_number(self.top_p) and 0 < self.top_p <= 1,
            "top_p must be in (0, 1]",
            self.top_p,
            what="sampling",
        )
        _check(
            isinstance(self.seed, int) and not isinstance(self.seed, bool),
            "seed must be an integer",
            self.seed,
            what="sampling",
        )

    @property
    def sampled(self) -> bool:
        """Whether tokens are sampled (temperature > 0) rather than chosen greedily."""
        return bool(self.temperature)

    def to_dict(self) -> dict:
        return asdict(self)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
