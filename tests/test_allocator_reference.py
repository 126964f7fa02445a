"""An independent check that our AdaLoRA allocation is the paper's.

``PaperAllocator`` is AdaLoRA's importance and budget written from the paper's
equations (Zhang et al., ICLR 2023, eqs. 8-12), not from PEFT's code. It runs
beside a real tiny training run through the project's wiring (the method's
``build`` and its ``AdaLoraAllocation`` callback in a ``transformers.Trainer``):
a callback placed before the project's reads every adapter weight and gradient
at ``on_optimizer_step``, before PEFT masks; one placed after it compares PEFT's
budget, whether it masked, its rank pattern and the zeroed singular values with
the reference, at every optimizer step. Mutants of PEFT's allocator (another
importance formula or schedule) must be reported as disagreements.

Conventions the equations leave open; the reference follows the authors' code
(QingruZhang/AdaLoRA, loralib/adalora.py), which PEFT follows too:
- t counts the optimizer steps before this one (0-based), and I(t) = |w * grad|
  takes w just after this step's optimizer.step() (the authors call the
  allocator there), with this step's gradient. The literal reading, w before
  the step, is not the same: in this run it swaps one triplet's mask at t = 12.
  We follow the authors, whose code produced the paper's results.
- Importance is updated only while t < T - t_f: the final mask at t = T - t_f
  uses the averages of steps 0 .. T - t_f - 1, and stays fixed afterwards
  (in this run, also counting step T - t_f would give the same final mask).
- Masks are taken at t_i < t <= T - t_f when t % delta_t == 0, and always at
  t = T - t_f (PEFT forces that one; the authors' code masks at every t > T - t_f
  with the frozen scores, which gives the same set).
- b(t) is truncated to an integer, as in the authors' code.
- Ties at the cut: "keep the top b(t)" does not decide between equal scores
  (PEFT masks every triplet tied with the cut); the comparison reports a tie
  as a disagreement rather than guessing, so a pass means no tie occurred.
"""

from __future__ import annotations

import math

import pytest
import torch
from peft.tuners.adalora.layer import RankAllocator
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed

from adarank.arguments import AdapterArguments
from adarank.tasks.glue.data import load_glue, tokenize
from adarank.tasks.glue.model import load_model
from adarank.tasks import TASKS
from conftest import build_adapter

# 36 optimizer steps: warm-up to t_i = 6, masks at t = 9, 12, ..., 27, the final mask
# at T - t_f = 28 (not a multiple of delta_t), then 7 steps at the fixed final mask.
T, TINIT, TFINAL, DELTA_T = 36, 6, 8, 3
INIT_R, TARGET_R = 4, 2
BETA1, BETA2 = 0.85, 0.85
BATCH = 8
PEFT_NAMES = {"lora_B": "P", "lora_E": "lambda", "lora_A": "Q"}  # W + P diag(lambda) Q


def adapter_tensors(model) -> dict[str, dict[str, torch.nn.Parameter]]:
    """{module: {"P": lora_B (d1 x r), "lambda": lora_E (r x 1), "Q": lora_A (r x d2)}}."""
    found: dict[str, dict[str, torch.nn.Parameter]] = {}
    for name, p in model.base_model.model.named_parameters():
        for peft_name, symbol in PEFT_NAMES.items():
            suffix = f".{peft_name}.default"
            if name.endswith(suffix):
                found.setdefault(name[: -len(suffix)], {})[symbol] = p
    return found


class PaperAllocator:
    """AdaLoRA's budget allocation from the paper's equations, in float64."""

    def __init__(self, modules, init_r, target_r, tinit, tfinal, delta_t, total_step, beta1, beta2):
        self.modules, self.r = sorted(modules), init_r
        self.b0, self.bT = init_r * len(modules), target_r * len(modules)
        self.tinit, self.tfinal, self.delta_t, self.T = tinit, tfinal, delta_t, total_step
        self.beta1, self.beta2 = beta1, beta2
        self.i_bar: dict = {}
        self.u_bar: dict = {}
        self.kept: dict[str, frozenset[int]] | None = None  # None until the first mask
        self.cut_gap = math.inf  # (last kept - first dropped score) / top score, at the latest mask

    def budget(self, t: int) -> int:
        if t <= self.tinit:
            return self.b0  # eq. 12, warm-up
        if t > self.T - self.tfinal:
            return self.bT  # eq. 12, final phase
        progress = (t - self.tinit) / (self.T - self.tfinal - self.tinit)
        return int(self.bT + (self.b0 - self.bT) * (1 - progress) ** 3)  # eq. 12, cubic decrease

    def allocates(self, t: int) -> bool:
        """Whether step t takes a new mask (see the module docstring)."""
        final = self.T - self.tfinal
        return self.tinit < t <= final and (t % self.delta_t == 0 or t == final)

    def observe(self, tensors) -> None:
        for module, parts in tensors.items():
            for symbol, p in parts.items():
                key = (module, symbol)
                sensitivity = (p.detach().double() * p.grad.detach().double()).abs()  # I = |w dL/dw|
                i_bar = self.beta1 * self.i_bar.get(key, 0.0) + (1 - self.beta1) * sensitivity  # eq. 8
                u_bar = self.beta2 * self.u_bar.get(key, 0.0) + (1 - self.beta2) * (sensitivity - i_bar).abs()  # eq. 9
                self.i_bar[key], self.u_bar[key] = i_bar, u_bar

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        s = {key: self.i_bar[key] * self.u_bar[key] for key in self.i_bar}  # eq. 10
        return {  # eq. 11: s(lambda_i) + mean of column i of P (d1 entries) + mean of row i of Q (d2 entries)
            m: s[m, "lambda"].view(-1) + s[m, "P"].mean(dim=0) + s[m, "Q"].mean(dim=1) for m in self.modules
        }

    def allocate(self, budget: int) -> None:
        """Keep the ``budget`` triplets of highest score, over all modules together."""
        ranked = sorted(
            ((score, m, i) for m, scores in self.triplet_scores().items() for i, score in enumerate(scores.tolist())),
            reverse=True,
        )
        if budget < len(ranked):
            self.cut_gap = (ranked[budget - 1][0] - ranked[budget][0]) / (ranked[0][0] or 1.0)
        kept: dict[str, set[int]] = {m: set() for m in self.modules}
        for _, m, i in ranked[:budget]:
            kept[m].add(i)
        self.kept = {m: frozenset(v) for m, v in kept.items()}

    def step(self, t: int, tensors) -> None:
        if t < self.T - self.tfinal:
            self.observe(tensors)  # importance is frozen from the final mask on
        if self.allocates(t):
            self.allocate(self.budget(t))


class Comparison:
    """Runs the reference beside PEFT and collects every disagreement, step by step."""

    def __init__(self, model, reference: PaperAllocator):
        self.model, self.reference = model, reference
        self.tensors = adapter_tensors(model)
        self.config = model.peft_config["default"]
        self.disagreements: list[str] = []
        self.steps: list[int] = []
        self.allocation_steps: list[int] = []
        self.smallest_cut_gap = math.inf
        self._pattern_before = None

    def before_peft(self, t: int) -> None:
        self._pattern_before = self.config.rank_pattern
        self.reference.step(t, self.tensors)

    def after_peft(self, t: int) -> None:
        ref, pattern = self.reference, self.config.rank_pattern
        self.steps.append(t)

        def report(what: str) -> None:
            self.disagreements.append(f"step {t}: {what}")

        peft_budget = self.model.base_model.rankallocator.budget_schedule(t)[0]
        if peft_budget != ref.budget(t):
            report(f"budget: PEFT {peft_budget}, paper {ref.budget(t)}")
        peft_masked = pattern is not None and pattern is not self._pattern_before  # PEFT took a new mask
        if peft_masked != ref.allocates(t):
            report(f"a new mask: PEFT {peft_masked}, paper {ref.allocates(t)}")
        if ref.allocates(t):
            self.allocation_steps.append(t)
            self.smallest_cut_gap = min(self.smallest_cut_gap, ref.cut_gap)
            if ref.cut_gap <= 0:
                report("a tie at the cut: the equations do not decide which triplet to keep")
        if ref.kept is None or pattern is None:
            if (ref.kept is None) != (pattern is None):
                report(f"a rank pattern: PEFT {pattern is not None}, paper {ref.kept is not None}")
            return
        peft_kept = {key.split(".lora_E.")[0]: frozenset(i for i, on in enumerate(mask) if on)
                     for key, mask in pattern.items()}
        if peft_kept != ref.kept:
            differ = {m: (sorted(peft_kept.get(m, ())), sorted(kept)) for m, kept in ref.kept.items()
                      if peft_kept.get(m) != kept}
            report(f"kept triplets {sum(map(len, peft_kept.values()))}, paper {sum(map(len, ref.kept.values()))}; "
                   f"(PEFT, paper) where they differ: {differ}")
        if peft_masked or t > ref.T - ref.tfinal:  # right after a mask, lambda is zero exactly where masked
            for m, parts in self.tensors.items():
                zeros = frozenset(i for i, v in enumerate(parts["lambda"].view(-1).tolist()) if v == 0.0)
                if zeros != frozenset(range(ref.r)) - ref.kept[m]:
                    report(f"{m}: lambda is zero at {sorted(zeros)}, the paper keeps {sorted(ref.kept[m])}")


class BeforePeft(TrainerCallback):
    def __init__(self, comparison: Comparison):
        self.comparison = comparison

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.comparison.before_peft(state.global_step)


class AfterPeft(BeforePeft):
    def on_optimizer_step(self, args, state, control, **kwargs):
        self.comparison.after_peft(state.global_step)


def run_beside_the_paper(tiny_model: str, output_dir) -> Comparison:
    """Train the tiny BERT with AdaLoRA through our wiring, the reference beside it."""
    set_seed(0)
    task = TASKS["sst2"]
    tokenizer, model, _ = load_model(tiny_model, task, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    adapter_args = AdapterArguments(
        method="adalora", init_r=INIT_R, target_r=TARGET_R, tinit=TINIT, tfinal=TFINAL, delta_t=DELTA_T,
        beta1=BETA1, beta2=BETA2,
    )
    built = build_adapter(model, task, "adalora", adapter_args, total_step=T)
    modules = list(adapter_tensors(built.model))
    reference = PaperAllocator(modules, INIT_R, TARGET_R, TINIT, TFINAL, DELTA_T, T, BETA1, BETA2)
    comparison = Comparison(built.model, reference)

    data = tokenize(load_glue(task, demo=True, max_train_samples=BATCH * T), tokenizer, 64)
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=BATCH, max_steps=T, learning_rate=5e-3,
        report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
    )
    trainer = Trainer(
        model=built.model, args=args, train_dataset=data.train, data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[BeforePeft(comparison), *built.callbacks, AfterPeft(comparison)],
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread, many times so on a busy machine
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    return comparison


def test_peft_allocates_as_the_paper_at_every_step(tiny_model, tmp_path):
    comparison = run_beside_the_paper(tiny_model, tmp_path)
    assert not comparison.disagreements, "\n".join(comparison.disagreements)
    # The run covered every phase: warm-up, the cubic masks, the final mask, the final phase.
    assert comparison.steps == list(range(T))
    assert comparison.allocation_steps == [9, 12, 15, 18, 21, 24, 27, T - TFINAL]
    assert comparison.smallest_cut_gap > 1e-6  # every cut was clear of float32 rounding, not decided by it
    final = comparison.config.rank_pattern
    assert sum(sum(mask) for mask in final.values()) == TARGET_R * len(final) == comparison.reference.bT


def _sensitivity_only(self, n):
    return self.exp_avg_ipt[n]


def _singular_values_only(self, ipt_E, ipt_AB):
    return ipt_E.view(-1)


_PEFT_SCHEDULE = RankAllocator.budget_schedule


def _linear_schedule(self, step):
    budget, mask = _PEFT_SCHEDULE(self, step)
    c = self.peft_config
    if c.tinit < step <= c.total_step - c.tfinal:
        progress = (step - c.tinit) / (c.total_step - c.tfinal - c.tinit)
        budget = int(self.target_bgt + (self.init_bgt - self.target_bgt) * (1 - progress))
    return budget, mask


def _mask_every_step(self, step):
    budget, mask = _PEFT_SCHEDULE(self, step)
    c = self.peft_config
    return budget, mask or c.tinit < step <= c.total_step - c.tfinal


MUTANTS = {  # name: (RankAllocator attribute, replacement, the disagreement it must cause)
    "score_is_sensitivity_only": ("_element_score", _sensitivity_only, "kept triplets"),  # eq. 10 without U
    "triplet_score_is_lambda_only": ("_combine_ipt", _singular_values_only, "kept triplets"),  # eq. 11 without P, Q
    "linear_schedule": ("budget_schedule", _linear_schedule, "budget"),  # eq. 12 not cubic
    "masks_every_step": ("budget_schedule", _mask_every_step, "a new mask"),  # delta_t ignored
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_a_different_importance_or_schedule_is_caught(mutant, monkeypatch, tiny_model, tmp_path):
    attribute, replacement, expected = MUTANTS[mutant]
    monkeypatch.setattr(RankAllocator, attribute, replacement)
    disagreements = run_beside_the_paper(tiny_model, tmp_path).disagreements
    assert any(d.split(": ", 1)[1].startswith(expected) for d in disagreements), "\n".join(disagreements)
