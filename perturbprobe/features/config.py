"""The extractor configuration: which families run, every hyper-parameter, the response span.

One serialisable object, stored in every FeatureSet manifest and probe bundle, so a probe is
always scored with the features it was fitted on. Options are addressed by dotted names on
the command line: ``--set ccps.radius=10 --set response_end=eot``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ExtractionError
from ..llm.pairs import RESPONSE_ENDS

__all__ = ["DEFAULT_FAMILIES", "DEFAULT_OPTIONS", "ExtractorConfig"]

# What ``extract`` computes unless told otherwise: the families that share one forward pass
# (about 1.5x a bare forward on the default LLM, benchmarks/extract_speed.py) — `sua` with its
# `hidden` source, which reuses the CCPS trajectory, and `hidden_states`, the pass's own
# activations. The gradient families (`embedding_perturbation`, `semantic_gradient`, `sua`'s
# embedding sources: 4-27x a forward) are opt-in; ``families="all"`` computes every family.
DEFAULT_FAMILIES = ("baseline", "ccps", "entropy_dynamics", "sua", "hidden_states")
DEFAULT_OPTIONS = ("sua.sources=hidden",)


def _registry() -> dict[str, type]:
    from . import FAMILIES

    return FAMILIES


@dataclass(frozen=True)
class ExtractorConfig:
    """Families (in column order) with their configs, and the response span convention.

    Build one with :meth:`create`; ``to_dict``/``from_dict`` round-trip through JSON.
    """

    family_configs: Mapping[str, Any] = field(default_factory=dict)
    response_end: str = "template"

    def __post_init__(self) -> None:
        if self.response_end not in RESPONSE_ENDS:
            raise ExtractionError(
                f"response_end must be one of {', '.join(RESPONSE_ENDS)}, got {self.response_end!r}"
            )
        if not self.family_configs:
            raise ExtractionError("no feature family selected")

    @property
    def families(self) -> list[str]:
        return list(self.family_configs)

    @classmethod
    def create(
        cls, families: Sequence[str] | str | None = None, overrides: Iterable[str] = ()
    ) -> ExtractorConfig:
        """Default configs for ``families``, then ``overrides``.

        Parameters
        ----------
        families : list of str or comma-separated str, optional
            Default: :data:`DEFAULT_FAMILIES` with :data:`DEFAULT_OPTIONS` (the cheap ones);
            ``"all"``: every registered family with its own defaults.
        overrides : iterable of "key=value"
            ``<family>.<option>=<value>`` or ``response_end=<value>``.
        """
        registry = _registry()
        if families is None:
            config = cls({name: registry[name].Config() for name in DEFAULT_FAMILIES})
            return config.with_overrides([*DEFAULT_OPTIONS, *overrides])
        if families == "all":
            names = list(registry)
        elif isinstance(families, str):
            names = [name.strip() for name in families.split(",") if name.strip()]
        else:
            names = list(families)
        unknown = [name for name in names if name not in registry]
        if unknown:
            raise ExtractionError(
                f"unknown feature famil{'y' if len(unknown) == 1 else 'ies'} "
                f"{', '.join(map(repr, unknown))}; available: {', '.join(registry)}"
            )
        config = cls({name: registry[name].Config() for name in dict.fromkeys(names)})
        return config.with_overrides(overrides)

    def with_overrides(self, overrides: Iterable[str]) -> ExtractorConfig:
        """A copy with ``key=value`` options applied (values parsed by the option's type)."""
        configs = dict(self.family_configs)
        response_end = self.response_end
        for item in overrides:
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ExtractionError(f"option {item!r} is not of the form key=value")
            if key == "response_end":
                response_end = raw.strip()
                continue
            family, dot, option = key.partition(".")
            if not dot:
                raise ExtractionError(
                    f"unknown option {key!r}; use response_end or <family>.<option>"
                )
            if family not in configs:
                raise ExtractionError(
                    f"option {key!r} is for family {family!r}, which is not selected "
                    f"(selected: {', '.join(configs)})"
                )
            configs[family] = _set_option(configs[family], family, option, raw.strip())
        return ExtractorConfig(configs, response_end)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"response_end": ..., "families": {name: {option: value}}}``."""
        return {
            "response_end": self.response_end,
            "families": {
                name: dataclasses.asdict(config) for name, config in self.family_configs.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExtractorConfig:
        """Inverse of :meth:`to_dict`; unknown families or options raise."""
        registry = _registry()
        configs = {}
        for name, options in dict(data.get("families", {})).items():
            if name not in registry:
                raise ExtractionError(f"unknown feature family {name!r} in the configuration")
            try:
                configs[name] = registry[name].Config(**options)
            except TypeError as exc:
                raise ExtractionError(f"bad options for family {name!r}: {exc}") from exc
        return cls(configs, data.get("response_end", "template"))

    def build_families(self) -> list:
        """Instantiate the families, in order."""
        registry = _registry()
        return [registry[name](config) for name, config in self.family_configs.items()]


def _set_option(config, family: str, option: str, raw: str):
    names = [f.name for f in dataclasses.fields(config)]
    if option not in names:
        raise ExtractionError(
            f"family {family!r} has no option {option!r}; options: {', '.join(names) or 'none'}"
        )
    kind = typing.get_type_hints(type(config))[option]
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            value: Any = raw.lower() in ("true", "1", "yes")
        else:
            value = kind(raw)
    except ValueError:
        raise ExtractionError(
            f"option {family}.{option} expects a {kind.__name__}, got {raw!r}"
        ) from None
    return dataclasses.replace(config, **{option: value})
