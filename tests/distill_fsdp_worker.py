"""Worker of test_distill_fsdp.py, run under torchrun with gloo CPU processes: the trainer prepared by accelerate's
FSDP2 path (torch's fully_shard, real sharding over the processes), 2 steps + checkpoint + resume + 1 step against 3
straight steps. accelerate only turns FSDP on for GPU processes, so this forces its distributed type; everything
after that is accelerate's and torch's own FSDP2 code."""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FSDPModule

from distill.trainer import DistillTrainer
from sampler.models.tiny import tiny_sd15_unet
from test_distill import RandomData, small_config


def fsdp_accelerator() -> Accelerator:
    acc = Accelerator()
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
        transformer_cls_names_to_wrap=["BasicTransformerBlock", "ResnetBlock2D"])
    return acc


def main(folder: Path) -> None:
    config = small_config(lora_rank=4)
    straight = DistillTrainer(tiny_sd15_unet(), RandomData(), config, fsdp_accelerator())
    assert isinstance(straight.generator, FSDPModule) and isinstance(straight.critic, FSDPModule)
    assert all(type(p).__name__ == "DTensor" for p in straight.critic.parameters())
    for _ in range(3):
        straight.step()
    first = DistillTrainer(tiny_sd15_unet(), RandomData(), config, fsdp_accelerator())
    first.step(), first.step()
    saved = first.save_checkpoint(folder)
    resumed = DistillTrainer(tiny_sd15_unet(), RandomData(), config, fsdp_accelerator())
    resumed.load_checkpoint(saved)
    resumed.step()
    a, b = straight.student(), resumed.student()  # gathered on the main process, None elsewhere
    if a is not None:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), "FSDP resume diverged"
        print("FSDP2 resume bit-exact", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
