"""What the feature tests expect, spelled out here independently of the product (FEATURES.md),
and small runners shared by several feature test modules.

The expected names are written by hand on purpose: a test that read them from the product
would check the product against itself.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_llm

from perturbprobe.errors import ExtractionError
from perturbprobe.features import CCPS, CCPSConfig, PassBatch, extract

# ---- expected names -----------------------------------------------------------------------------

# Every feature family, in the documented order of ``--families all``.
FAMILY_NAMES = (  # noqa: SIM905
    "baseline ccps entropy_dynamics embedding_perturbation semantic_gradient sua hidden_states"
).split()

# The response-level columns of ``entropy_dynamics``, in order (no per-token columns).
ED_NAMES = (  # noqa: SIM905
    "max_entropy argmax_rel_pos n_spikes first_spike_pos first_spike_rel_pos early_max_entropy "
    "pre_spike_mean_entropy post_spike_mean_entropy entropy_slope"
).split()


# ---- running a family ---------------------------------------------------------------------------
def ccps_on_tensors(head, hidden, token_ids, radius=2.0, steps=5) -> dict[str, torch.Tensor]:
    """The ``ccps`` family on handcrafted tensors, through the family protocol: one response
    of ``n = hidden.shape[0]`` tokens, in one chunk; ``{name: (n,) tensor}`` in column order."""
    n = hidden.shape[0]
    batch = PassBatch(
        head=head,
        final_hidden=hidden,
        token_ids=token_ids,
        lengths=torch.tensor([n]),
        chunk_tokens=n,
    )
    out = CCPS(CCPSConfig(radius=radius, steps=steps)).compute(batch)
    return {name: out.token_values[:, i] for i, name in enumerate(out.token_names)}


def assert_bad_option_fails(family, option, message, records) -> None:
    """``extract`` of ``family`` on the tiny Llama with the override ``family.option`` raises an
    :class:`ExtractionError` whose message matches ``message``."""
    with pytest.raises(ExtractionError, match=message):
        extract(
            make_tiny_llm("llama"),
            records,
            families=family,
            overrides=[f"{family}.{option}"],
            progress=False,
        )
