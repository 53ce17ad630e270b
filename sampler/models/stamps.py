"""The metadata our tools stamp into the files they write, so every host runs those files on the right timesteps.

- `dmd2_trained_timesteps` ("999,749,499,249", first step first): written by the trainer's exports and the shapes
  world; read by the ComfyUI loaders, the A1111 plan and `python -m sampler generate`.
- `dmd2_plan` (a `TRAINED_TIMESTEPS` name): written by `merge` / `convert-lora` for released DMD2 weights; read by
  the A1111 plan.

No network and no weights here: the A1111 extension reads stamps on hosts whose huggingface_hub is too old for
downloads.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ..errors import CorruptFileError
from ..plans import check_trained

#: Metadata key our trainer stamps into the models it exports: "999,749,499,249", first step first.
TRAINED_TIMESTEPS_KEY = "dmd2_trained_timesteps"


def timesteps_metadata(trained: Sequence[int]) -> dict[str, str]:
    """The metadata entry that makes our loaders and samplers run an exported generator on `trained`."""
    return {TRAINED_TIMESTEPS_KEY: ",".join(str(t) for t in check_trained(trained))}


def timesteps_from_metadata(metadata: Mapping[str, str], name: str | None = None) -> tuple[int, ...] | None:
    """Trained timesteps stamped in a file's metadata, None when it has none; a malformed stamp is an error."""
    raw = metadata.get(TRAINED_TIMESTEPS_KEY)
    if raw is None:
        return None
    try:
        return check_trained(int(t) for t in raw.split(","))
    except ValueError as e:
        raise CorruptFileError(f"{name or 'the file'} has a malformed {TRAINED_TIMESTEPS_KEY} metadata entry "
                               f"{raw!r}: {e}") from None


#: Metadata key of the plan `merge` / `convert-lora` stamp into merged checkpoints and converted LoRAs.
PLAN_KEY = "dmd2_plan"
