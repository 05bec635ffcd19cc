"""One rank of the FSDP2 save test (`torchrun --nproc_per_node 2`, gloo on CPU).

accelerate refuses FSDP without GPUs, so the model is sharded here with torch's own ``fully_shard`` (what
accelerate's FSDP2 plugin calls, one unit per decoder layer and one for the root), and the stand-in for
accelerate's ``Accelerator`` answers ``get_state_dict`` with accelerate's own method. Everything after that is
``cai train``'s save path: ``TrainingStage.whole_model`` then ``save_model_folder``.

    worker.py MODEL_DIR OUT_DIR {full,lora}
"""

from __future__ import annotations

import os
import sys
from functools import partial
from types import SimpleNamespace


def model_with_lora(model_dir: str, lora: bool):
    """The tiny model, with LoRA adapters whose B matrices are not zero (so merging changes the weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter)
    return model


def main(model_dir: str, out_dir: str, kind: str) -> None:
    import torch
    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoTokenizer

    from training import models
    from training.stages import TrainingStage

    dist.init_process_group("gloo")
    model = model_with_lora(model_dir, kind == "lora")
    base = model.get_base_model() if kind == "lora" else model
    for layer in base.model.layers:
        fully_shard(layer)
    fully_shard(model)
    assert type(next(model.parameters())).__name__ == "DTensor"  # sharded: no rank holds the whole weights

    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True,
                                  is_main_process=dist.get_rank() == 0, unwrap_model=lambda module: module)
    accelerator.get_state_dict = partial(Accelerator.get_state_dict, accelerator)
    trainer = SimpleNamespace(accelerator=accelerator, model=model, model_wrapped=model)

    whole = TrainingStage(config=None, method="test").whole_model(trainer)
    if dist.get_rank() == 0:
        models.save_model_folder(whole, AutoTokenizer.from_pretrained(model_dir), out_dir, torch.float32)
    else:
        assert whole is None
    dist.barrier()
    dist.destroy_process_group()
    # The work is done and saved; leave without interpreter teardown, where gloo's threads sometimes abort
    # the process ("terminate called without an active exception") on a loaded machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
