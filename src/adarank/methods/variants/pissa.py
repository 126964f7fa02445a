"""PiSSA (Meng et al., NeurIPS 2024, "PiSSA: Principal Singular Values and Singular Vectors Adaptation").

LoRA started on the principal part of each weight instead of at zero (the method's section, eqs. 2-3):
with W = U S V^T, B A starts as the top r singular directions, B0 = U_r S_r^1/2 and A0 = S_r^1/2 V_r^T
(each divided by the square root of the update scale s, so that s B0 A0 is that part), and the frozen base becomes
the residual W_res = W - s B0 A0, so the model computes what it did before training. The exact SVD is
the default (PEFT's ``init_lora_weights="pissa"``); ``--pissa_niter N`` takes the paper's fast
randomised SVD with N subspace iterations (``"pissa_niter_N"``). Ranks and parameters are LoRA's;
the paper's formulation W = W_res + B A has no update scale, so alpha defaults to r (scale 1), not
the recipe's alpha (16 over r = 2 would move the principal directions 8x as fast); an explicit
``--lora_alpha`` wins.

An adapter saved as trained fits W_res only. The run's adapter/ is PEFT's conversion to plain LoRA,
Delta W = s (B A - B0 A0) = s [B, -B0] [A; A0]: rank 2r, alpha 2 alpha (the same scale), loading onto
the unmodified base model. Checkpoints keep PiSSA's form: a resumed run rebuilds the same residual
from the same weights and trains on.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from peft import PeftModel, get_peft_model_state_dict
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

from adarank.errors import UsageError
from adarank.methods.base import AdapterParameters, AdapterRequest, BuiltAdapter, Ranks, Shapes, lora_parameters
from adarank.methods.lora import LoraPlan
from adarank.methods.variants.common import LoraVariant, VariantPlan, extended


@dataclass
class PissaArguments:
    pissa_niter: int | None = field(default=None, metadata={
        "help": "pissa: initialise from a fast randomised SVD with this many subspace iterations (PEFT's "
                "pissa_niter_N; 16 is quick on a 7B model) instead of the exact SVD (the default)."})


@dataclass(frozen=True)
class PissaPlan(VariantPlan):
    init_lora_weights: str = "pissa"

    @property
    def saved_rank(self) -> int:
        """The rank of the adapter the run saves, converted to plain LoRA: [B, -B0] [A; A0]."""
        return 2 * self.r

    def peft_options(self) -> dict:
        return {"init_lora_weights": self.init_lora_weights}

    def describe(self) -> str:
        return (f"PiSSA: every adapted matrix trains its top {self.r} singular directions over a frozen residual; "
                f"adapter/ is saved as a plain LoRA of rank {self.saved_rank} for the unmodified base model.")

    def as_dict(self) -> dict:
        return {**super().as_dict(), "saved_rank": self.saved_rank}


class Pissa(LoraVariant):
    """LoRA initialised on each weight's principal singular directions, over the frozen residual."""

    name = "pissa"
    title = "PiSSA"
    arguments = PissaArguments

    def variant_plan(self, lora: LoraPlan, request: AdapterRequest) -> PissaPlan:
        niter = self.own_arguments(request).pissa_niter
        if niter is not None and niter < 0:
            raise UsageError(f"--pissa_niter {niter} must be 0 or more subspace iterations "
                             "(leave it out for the exact SVD)")
        if "lora_alpha" not in request.explicit:  # the paper's scale of 1
            lora = replace(lora, lora_alpha=float(lora.r))
        return extended(lora, PissaPlan, init_lora_weights="pissa" if niter is None else f"pissa_niter_{niter}")

    def adapter_parameters(self, ranks: Ranks, shapes: Shapes) -> AdapterParameters:
        """Training holds LoRA's A and B at rank r; adapter/ holds their conversion, plain LoRA of rank 2r."""
        trained = super().adapter_parameters(ranks, shapes)
        return AdapterParameters(trained.start, lora_parameters(2 * ranks.end, shapes), held=trained.most)

    def build(self, model: nn.Module, plan: PissaPlan, request: AdapterRequest) -> BuiltAdapter:
        # Its SVD needs r singular directions of every adapted matrix: a larger --lora_r is refused once the
        # model is loaded, for every method (modules.check_rank_fits).
        built = super().build(model, plan, request)
        return BuiltAdapter(built.model, callbacks=[SavesAsLora(built.model)])


class SavesAsLora(TrainerCallback):
    """Makes the model's save, once training has ended, PEFT's conversion to a plain LoRA adapter
    (``path_initial_model_for_weight_conversion``), from the initial adapter saved here when the
    adapters are built. Before then (the Trainer's checkpoints) the save is PiSSA's own."""

    def __init__(self, model: PeftModel):
        self.model = model
        self.folder = tempfile.TemporaryDirectory(prefix="adarank-pissa-")  # removed with this object
        self.initial = Path(self.folder.name) / "pissa_init"
        self.trained = False
        self._save = model.save_pretrained
        save_initial_adapter(model, self.initial)
        model.save_pretrained = self.save_pretrained

    def on_train_end(self, args, state, control, **kwargs):
        self.trained = True

    def save_pretrained(self, directory, **kwargs) -> None:
        if not self.trained:
            return self._save(directory, **kwargs)
        with warnings.catch_warnings():  # PEFT warns that PiSSA changed the base when it loads the initial adapter
            warnings.filterwarnings("ignore", message="PiSSA changes the base weights")
            self._save(directory, path_initial_model_for_weight_conversion=str(self.initial), **kwargs)
        keep_trained_modules(self.model, Path(directory))


def save_initial_adapter(model: PeftModel, folder: Path) -> None:
    """The adapter as initialised, B0 and A0, in the form PEFT's conversion reads: configured as
    LoRA's default init, so that loading it leaves the base weights alone (PEFT's documented recipe)."""
    config = model.peft_config[model.active_adapter]
    init, config.init_lora_weights = config.init_lora_weights, True
    try:
        model.save_pretrained(str(folder))
    finally:
        config.init_lora_weights = init


def keep_trained_modules(model: PeftModel, directory: Path) -> None:
    """Put back what PEFT's conversion leaves out of the saved weights: everything but the LoRA
    factors (the task head trained in full, ``modules_to_save``)."""
    path = directory / SAFETENSORS_WEIGHTS_NAME
    rest = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()
            if ".lora_A." not in k and ".lora_B." not in k}
    if rest:
        save_file({**load_file(path), **rest}, path, metadata={"format": "pt"})
