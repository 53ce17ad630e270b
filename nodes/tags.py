"""The DMD2 facts a MODEL carries (its trained timesteps), and the one place that reads and writes them.

The DMD2 loaders tag the MODEL they return; the DMD2 scheduler, the DMD2 sampler and the stock `dmd2` scheduler read
the tag, so nobody types 399. The tag lives in two spots, both copied by ModelPatcher.clone() (so LoRA loaders,
model patches and every other clone keep it):

- `model_options["dmd2"]`: what nodes holding the MODEL and the sampler function (extra_args["model_options"]) read;
- a `dmd2_facts` attribute on a copy of the model's `model_sampling`, installed as an object patch: the stock
  scheduler path hands a scheduler only `model_sampling`, so that is the only place it can see the tag.

A node that later replaces model_sampling (e.g. ModelSamplingDiscrete) drops the second copy, not the first.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

from ..sampler.plans import DEFAULT_TRAINED, check_trained

TAG = "dmd2"
ATTRIBUTE = "dmd2_facts"


@dataclass(frozen=True)
class DMD2Facts:
    """What a DMD2 generator was trained on. `source`: where the facts came from (catalog id, or a note)."""

    trained_timesteps: tuple[int, ...]
    source: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "trained_timesteps", check_trained(self.trained_timesteps))

    @property
    def steps(self) -> int:
        """The step count the model was distilled for (one UNet pass per trained timestep)."""
        return len(self.trained_timesteps)


def tag_model(model: Any, facts: DMD2Facts) -> Any:
    """A clone of the ModelPatcher `model` tagged with `facts` (the input is left untouched)."""
    tagged = model.clone()
    tagged.model_options[TAG] = facts
    sampling = copy.copy(tagged.get_model_object("model_sampling"))
    # A shallow copy of an nn.Module shares its registries; give the copy its own, like a fresh instance would have.
    for registry in ("_parameters", "_buffers", "_modules"):
        if isinstance(getattr(sampling, registry, None), dict):
            object.__setattr__(sampling, registry, dict(getattr(sampling, registry)))
    object.__setattr__(sampling, ATTRIBUTE, facts)
    tagged.add_object_patch("model_sampling", sampling)
    return tagged


def options_facts(model_options: Mapping[str, Any] | None) -> DMD2Facts | None:
    """The facts in a model_options dict (a MODEL's, or the sampler's extra_args["model_options"])."""
    facts = (model_options or {}).get(TAG)
    return facts if isinstance(facts, DMD2Facts) else None


def sampling_facts(model_sampling: Any) -> DMD2Facts | None:
    """The facts on a model_sampling object (what the stock scheduler handler receives)."""
    facts = getattr(model_sampling, ATTRIBUTE, None)
    return facts if isinstance(facts, DMD2Facts) else None


def model_facts(model: Any) -> DMD2Facts | None:
    """The facts of a ModelPatcher, None for a model no DMD2 node tagged."""
    return options_facts(model.model_options) or sampling_facts(model.get_model_object("model_sampling"))


def trained_of(facts: DMD2Facts | None) -> tuple[int, ...]:
    """Trained timesteps to plan with: the tag's, else the 4-step plan (999, 749, 499, 249)."""
    return facts.trained_timesteps if facts is not None else DEFAULT_TRAINED
