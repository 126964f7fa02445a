"""A task's command line under torchrun, as src/glue_sst2.py runs it, except that each process also
saves its trained adapter tensors and AdaLoRA rank pattern to $DUMP/rank<N>.pt, so that a test can
compare the processes (the pipeline itself saves from process 0 only)."""

import os
import sys
from pathlib import Path

import torch
from fixtures.paths import SRC  # this script's folder, tests/, is first on sys.path

sys.path.insert(0, str(SRC))
import adarank.pipeline as pipeline  # noqa: E402


class SavingEveryProcess(pipeline.RunTrainer):
    def train(self, *args, **kwargs):
        outcome = super().train(*args, **kwargs)
        config = self.model.peft_config[self.model.active_adapter]
        torch.save({"tensors": {n: p.detach().clone() for n, p in self.model.named_parameters() if "lora_" in n},
                    "rank_pattern": getattr(config, "rank_pattern", None)},
                   Path(os.environ["DUMP"]) / f"rank{self.args.process_index}.pt")
        return outcome


pipeline.RunTrainer = SavingEveryProcess
pipeline.main(sys.argv[1], sys.argv[2:])
