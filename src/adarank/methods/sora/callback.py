"""SoRA in the Trainer: the gates' proximal step after every optimizer step, the ranks it leaves,
the parameters it holds and the live ones, the gates through checkpoints, and the fold at the end.

The Trainer owns the optimizer of A and B (and the task head); the gates are not in it: they
require gradients only from ``on_train_begin``, after the optimizer is made. Each gate's gradient
is moved, as soon as backward has accumulated it, into a buffer of the callback, so the Trainer's
gradient clipping and DDP see A and B exactly as under LoRA, and the gates step on the loss's own
gradient, as in the paper's update. ``on_optimizer_step`` runs once per optimizer step (also under
gradient accumulation): it takes the step size the optimizer has just used, lr_t, and steps the
gates with eta_t = eta * lr_t / learning_rate, so the gates follow the run's warm-up and decay.
Under DDP the buffer is averaged across processes first, as DDP averages the gradients of A and B.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from adarank.errors import UsageError
from adarank.run.directory import checkpoint_folder
from adarank.run.ranks import RankLog
from adarank.methods.sora.gate import fold_gates, gate_of, proximal_step

log = logging.getLogger("adarank")

STATE_FILE = "sora_state.pt"


class SoraGates(TrainerCallback):
    """Steps, counts, logs, checkpoints and finally folds the gates of one SoRA model."""

    def __init__(self, model, plan, layers: dict, rank_log: RankLog | None):
        self.model, self.plan, self.layers, self.rank_log = model, plan, layers, rank_log
        adapter = model.active_adapter
        self.gates = [gate_of(layer, adapter) for layer in layers.values()]
        # Parameters each gate entry switches on or off: its row of A and its column of B.
        self.widths = torch.cat([torch.full((layer.r[adapter],), float(layer.in_features + layer.out_features),
                                            dtype=torch.float64) for layer in layers.values()])  # exact counts
        # Held and trained throughout: A and B of every r_max direction, and every gate entry.
        self.held = int(self.widths.sum()) + len(self.widths)
        self.param_steps = torch.zeros((), dtype=torch.float64)  # sum over steps of the live parameters
        self.grads = torch.zeros(len(self.widths))  # the gates' gradients since the last step
        self.hooks: list = []
        self.steps = 0
        self.logged: dict[str, int] | None = None  # the ranks of the last record
        self.final: dict[str, int] | None = None  # the live ranks folded into the saved adapter

    # --- what the run reports ---------------------------------------------------------------

    def ranks(self) -> dict[str, int]:
        counts = torch.stack([torch.count_nonzero(g) for g in self.gates]).tolist()
        return dict(zip(self.layers, counts))

    def live_params(self) -> torch.Tensor:
        """Nonzero gate dimensions x (in + out), plus every gate entry (all of them are trained)."""
        mask = torch.cat([g.detach() != 0 for g in self.gates])
        return (mask.to(self.widths.device) * self.widths).sum() + mask.numel()

    def summary(self) -> dict:
        final = self.final if self.final is not None else self.ranks()
        final_params = sum(r * (self.layers[n].in_features + self.layers[n].out_features) for n, r in final.items())
        live = float(self.param_steps) / self.steps if self.steps else float(self.live_params())
        # final_adapter_params: the folded adapter's A and B (the live directions, no gates), as saved.
        return {"average_adapter_params": self.held, "average_live_adapter_params": live,
                "final_adapter_params": final_params, "final_live_adapter_params": final_params + len(self.widths),
                "initial_total_rank": self.plan.max_rank * len(self.layers), "final_total_rank": sum(final.values()),
                "gate_steps": self.steps}

    def scalars(self) -> dict[str, float]:
        """For --report_to at logging steps: the parameters held (A and B at r_max, and the gates, which are
        not the model's parameters) and the live ones, as metrics.json counts them, and the gates' mean magnitude."""
        gates = torch.cat([g.detach() for g in self.gates])
        return {"num_train_param": float(self.held), "num_live_param": float(self.live_params()),
                "Sora/mean_abs_gate": float(gates.abs().mean())}

    def _log(self, step: int, event: str, ranks: dict[str, int], **extra) -> None:
        self.logged = ranks
        if self.rank_log is not None:
            self.rank_log.write(step, event, self.plan.max_rank * len(self.layers), ranks,
                                sora_lambda=self.plan.lambda_at(max(step - 1, 0)), **extra)  # of the last step

    # --- Trainer hooks ----------------------------------------------------------------------

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        held = {id(p) for group in (optimizer.param_groups if optimizer is not None else []) for p in group["params"]}
        if any(id(g) in held for g in self.gates):
            raise RuntimeError("the Trainer's optimizer holds SoRA's gates: they take the proximal step only")
        device = self.gates[0].device
        self.widths, self.param_steps = self.widths.to(device), self.param_steps.to(device)
        self.grads = self.grads.to(device)
        views = self.grads.split([g.numel() for g in self.gates])
        for gate, view in zip(self.gates, views):
            gate.requires_grad_(True)
            self.hooks.append(gate.register_post_accumulate_grad_hook(_move_gradient_into(view)))
        if state.global_step == 0:
            phases = self.plan.phases()
            self._log(0, "initial", self.ranks(), **({"phases": phases} if phases else {}))

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        lr = optimizer.param_groups[0]["lr"]
        eta = self.plan.eta * lr / args.learning_rate if args.learning_rate else 0.0
        lam = self.plan.lambda_at(state.global_step)
        with torch.no_grad():
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(self.grads)
                self.grads /= dist.get_world_size()
            gates = torch.cat([g.detach() for g in self.gates])
            stepped = proximal_step(gates, self.grads, eta, lam)
            for gate, value in zip(self.gates, stepped.split([g.numel() for g in self.gates])):
                gate.copy_(value)
            self.grads.zero_()
        self.steps += 1
        self.param_steps += self.live_params()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % max(1, state.logging_steps) == 0:
            ranks = self.ranks()
            if ranks != self.logged:
                self._log(state.global_step, "sparsify", ranks)

    def on_train_end(self, args, state, control, **kwargs):
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
        self._log(state.global_step, "final", self.ranks())
        self.final = fold_gates(self.model, self.layers)
        if not any(self.final.values()):
            log.warning("every SoRA gate ended at zero: the adapters add nothing, so this run scores as the base model "
                        "with a trained head; a smaller --sora_lambda (or --sora_eta) keeps some rank")

    def on_save(self, args, state, control, **kwargs):
        folder = checkpoint_folder(args.output_dir, state.global_step)
        if state.is_world_process_zero and folder.is_dir():
            torch.save({"gates": {name: g.detach().cpu() for name, g in zip(self.layers, self.gates)},
                        "param_steps": float(self.param_steps), "steps": self.steps, "logged": self.logged},
                       folder / STATE_FILE)

    def restore(self, checkpoint: Path) -> None:
        """Before a resumed run trains: the gates, the parameter count so far and the last logged ranks."""
        path = Path(checkpoint) / STATE_FILE
        if not path.is_file():
            raise UsageError(f"{checkpoint} has no {STATE_FILE}: resume a SoRA run from one of its own checkpoints")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        with torch.no_grad():
            for name, gate in zip(self.layers, self.gates):
                gate.copy_(saved["gates"][name].to(gate.device))
        self.param_steps = torch.tensor(saved["param_steps"], dtype=torch.float64)
        self.steps, self.logged = saved["steps"], saved["logged"]


def _move_gradient_into(buffer: torch.Tensor):
    """A hook that adds a gate's freshly accumulated gradient to ``buffer`` and clears it from the gate."""
    def hook(gate: torch.Tensor) -> None:
        buffer.add_(gate.grad)
        gate.grad = None
    return hook
