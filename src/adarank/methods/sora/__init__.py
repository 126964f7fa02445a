"""SoRA (Ding et al., "Sparse Low-rank Adaptation of Pre-trained Language Models", EMNLP 2023):
LoRA started at a rank r_max with a gate g between A and B, h = W0 x + B (g * (A x)); the gate
takes a proximal gradient step (soft-thresholding) after every optimizer step, so dimensions
switch off, and after training the zero dimensions are dropped and g is folded into B, leaving a
plain PEFT LoRA adapter of the learned ranks.

- ``arguments``: the flags, their defaults and where each comes from, the sparsity schedule;
- ``gate``: the gated PEFT layer, the proximal step, the fold into a plain LoRA layer;
- ``callback``: the step in the Trainer, ranks.jsonl, live parameters, checkpointed gates;
- ``method``: the plan, the PEFT model, parameter counts (adarank's method interface).
"""

from adarank.methods.sora.arguments import DEFAULT_LAMBDA, SoraArguments
from adarank.methods.sora.callback import STATE_FILE, SoraGates
from adarank.methods.sora.gate import GatedLinear, add_gates, fold_gates, proximal_step
from adarank.methods.sora.method import Sora, SoraPlan

__all__ = ["DEFAULT_LAMBDA", "STATE_FILE", "GatedLinear", "Sora", "SoraArguments", "SoraGates", "SoraPlan",
           "add_gates", "fold_gates", "proximal_step"]
