"""AdaLoRA's allocation in the Trainer: the callback that runs it once per optimizer step, logs
the ranks, counts the live parameters, and carries the allocator's state through checkpoints; and
how to read that state."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import TrainerCallback

from adarank.errors import UsageError
from adarank.run.ranks import RankLog
from adarank.run.directory import checkpoint_folder

ALLOCATOR_STATE_FILE = "adalora_allocator.pt"


def importance_steps(config) -> set[int]:
    """The optimizer steps (``state.global_step`` at ``on_optimizer_step``) whose importance averages
    matter (PEFT's AdaLoraConfig ``config``): those pruning starts from (t = tinit), and the last ones
    before the final mask (PEFT stops updating them at T - tfinal and clears them after that mask)."""
    return {config.tinit, config.total_step - config.tfinal - 1}


def triplet_scores(allocator) -> dict[str, torch.Tensor]:
    """Each adapted matrix's triplet scores (eq. 11) from the allocator's averages, by its lora_E name:
    the score of lambda plus the mean over its row of A and its column of B, a score being the
    smoothed sensitivity times the smoothed uncertainty (eq. 10)."""
    scores = {}
    for key in allocator.exp_avg_ipt:
        if ".lora_E." not in key:
            continue
        score = lambda part: allocator.exp_avg_ipt[key.replace("lora_E", part)] * \
            allocator.exp_avg_unc[key.replace("lora_E", part)]  # noqa: E731  (eq. 10)
        scores[key] = score("lora_E").view(-1) + score("lora_A").mean(dim=1) + score("lora_B").mean(dim=0)
    return scores


def mask_threshold(scores: dict[str, torch.Tensor], pruned: int) -> float:
    """The score at or below which triplets are masked when ``pruned`` of them go (eq. 12's threshold:
    the ``pruned``-th smallest triplet score of all adapted matrices)."""
    return float(torch.kthvalue(torch.cat([s.view(-1) for s in scores.values()]), k=pruned)[0])


class AdaLoraAllocation(TrainerCallback):
    """Runs AdaLoRA's importance update and budget allocation once per optimizer step.

    ``on_optimizer_step`` is the one hook that fires exactly once per optimizer
    step (also under gradient accumulation) while the gradients still exist;
    at ``on_step_end`` they have been zeroed. ``state.global_step`` there still
    counts the steps before this one, as PEFT's ``update_and_allocate`` expects.
    """

    def __init__(self, model: PeftModel, rank_log: RankLog | None):
        self.model = model
        self.rank_log = rank_log
        self.calls = 0  # allocations run, checked against the Trainer's step count at the end
        self.first_step = 0
        self.seconds = 0.0  # spent in the allocation (importance update, masking), for metrics.json
        self.threshold: float | None = None  # of the last masking, for ranks.jsonl and the scalars
        # Sum over the run's optimizer steps of the live parameters, and the steps it covers (through
        # checkpoints; None: resumed from a checkpoint that did not carry them, so the average is unknown).
        self.live_sum, self.live_steps = 0.0, 0
        inner = dict(model.base_model.model.named_parameters())  # each triplet's row of P and column of Q
        self.widths = {self._unnamed(name % "lora_E"): inner[name % "lora_A"].shape[1] + inner[name % "lora_B"].shape[0]
                       for name in self._allocator.name_set}
        self._live: tuple | None = None  # (the rank pattern last counted, its live parameters)
        self._record_thresholds()

    def _record_thresholds(self) -> None:
        """Keep the threshold of each masking, from the scores the mask is built from (after the
        step's importance update; PEFT clears the scores after the final mask)."""
        allocator = self._allocator
        mask_to_budget = allocator.mask_to_budget

        def recorded(model, budget):
            pruned = allocator.init_bgt - budget
            self.threshold = mask_threshold(triplet_scores(allocator), pruned) if pruned > 0 else None
            return mask_to_budget(model, budget)

        allocator.mask_to_budget = recorded

    @property
    def _config(self):
        return self.model.peft_config[self.model.active_adapter]

    @property
    def _allocator(self):
        return self.model.base_model.rankallocator

    def effective_ranks(self) -> dict[str, int]:
        """Rank of each module as the allocator's mask says (raw nonzeros drift between masks)."""
        pattern = self._config.rank_pattern
        if pattern:
            return {name: int(sum(mask)) for name, mask in pattern.items()}
        return {name % "lora_E": self._config.init_r for name in self._allocator.name_set}

    def _unnamed(self, key: str) -> str:
        """A lora_E name without the adapter's: PEFT's save_pretrained swaps the rank pattern for one whose
        keys lack it."""
        return key.replace(f".{self._allocator.adapter_name}", "")

    def live_params(self) -> int:
        """The parameters of the triplets the mask leaves on: each one's row of P and column of Q, plus
        every entry of E (masked entries are trained too, and may return). Counted again only when the
        allocator sets a new rank pattern."""
        pattern = self._config.rank_pattern
        if self._live is None or self._live[0] is not pattern:
            live = sum(rank * self.widths[self._unnamed(name)] for name, rank in self.effective_ranks().items())
            self._live = (pattern, live + self._allocator.init_bgt)
        return self._live[1]

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps != self._config.total_step:
            raise RuntimeError(
                f"AdaLoRA was set up for {self._config.total_step} steps but the Trainer runs "
                f"{state.max_steps}: the step count in adarank.run.steps disagrees with the Trainer"
            )
        self.first_step = state.global_step
        if state.global_step == 0:
            config = self._config  # the schedule's phases, so plots need no knowledge of the method
            phases = {"warm-up (tinit)": [0, config.tinit],
                      "final (tfinal)": [config.total_step - config.tfinal, config.total_step]}
            self._log(0, "initial", self._allocator.init_bgt, phases=phases)
        elif args.resume_from_checkpoint:
            self.restore(Path(args.resume_from_checkpoint))

    def on_optimizer_step(self, args, state, control, **kwargs):
        step = state.global_step
        self.calls += 1
        started = time.perf_counter()
        self.model.base_model.update_and_allocate(step)
        self.seconds += time.perf_counter() - started
        if self.live_steps is not None:
            self.live_sum += self.live_params()
            self.live_steps += 1
        budget, masked = self._allocator.budget_schedule(step)
        final_step = self._config.total_step - self._config.tfinal
        if (masked and step < final_step) or step == final_step:
            self._log(step + 1, "prune", budget,
                      **({"mask_threshold": self.threshold} if self.threshold is not None else {}))

    def summary(self) -> dict:
        """metrics.json's AdaLoRA figures: the allocation's time, and the live parameters averaged over
        the optimizer steps (null where a resume lost the steps before it) and at the end."""
        average = None if self.live_steps is None else \
            self.live_sum / self.live_steps if self.live_steps else float(self.live_params())
        return {"allocation_seconds": round(self.seconds, 3),
                "allocation_seconds_per_step": round(self.seconds / self.calls, 6) if self.calls else None,
                "average_live_adapter_params": average, "final_live_adapter_params": self.live_params()}

    def on_train_end(self, args, state, control, **kwargs):
        if self.calls != state.global_step - self.first_step:
            raise RuntimeError(
                f"AdaLoRA's allocation ran {self.calls} times over {state.global_step - self.first_step} optimizer steps"
            )
        self._log(state.global_step, "final", self._allocator.target_bgt)

    def on_save(self, args, state, control, **kwargs):
        """Make the checkpoint resumable.

        PEFT saves an AdaLoRA adapter cut to its current rank pattern, and loading
        it shrinks the modules, which no longer fit the optimizer state. So the
        checkpoint gets the full-shape adapter, and the rank pattern travels with
        the allocator's importance averages, which no PEFT checkpoint holds.
        """
        folder = checkpoint_folder(args.output_dir, state.global_step)
        if not (state.is_world_process_zero and folder.is_dir()):
            return
        config = self._config
        pattern, config.rank_pattern = config.rank_pattern, None
        try:
            self.model.save_pretrained(str(folder))
        finally:
            config.rank_pattern = pattern
        allocator = self._allocator
        torch.save(
            {"ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt,
             "exp_avg_unc": allocator.exp_avg_unc, "rank_pattern": pattern,
             "live_sum": self.live_sum, "live_steps": self.live_steps},
            folder / ALLOCATOR_STATE_FILE,
        )

    def restore(self, checkpoint: Path) -> None:
        """Bring back the allocator's state saved by ``on_save`` (call before training resumes)."""
        if not (checkpoint / ALLOCATOR_STATE_FILE).is_file():
            raise UsageError(
                f"{checkpoint} has no {ALLOCATOR_STATE_FILE}: resume an AdaLoRA run from one of its own checkpoints"
            )
        saved = torch.load(checkpoint / ALLOCATOR_STATE_FILE, map_location="cpu", weights_only=False)
        device = next(self.model.parameters()).device
        allocator = self._allocator
        for name in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            setattr(allocator, name, {k: v.to(device) for k, v in saved[name].items()})
        self._config.rank_pattern = saved["rank_pattern"]
        # A checkpoint written before the live count existed: the steps before it are not known.
        self.live_sum, self.live_steps = saved.get("live_sum", 0.0), saved.get("live_steps")

    def _log(self, step: int, event: str, budget: int, **extra) -> None:
        if self.rank_log is not None:
            self.rank_log.write(
                step, event, budget, self.effective_ranks(),
                init_budget=self._allocator.init_bgt, target_budget=self._allocator.target_bgt, **extra,
            )
