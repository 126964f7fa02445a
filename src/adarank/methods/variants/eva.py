"""EVA (Paischer et al., 2024, "One Initialization to Rule them All: Fine-tuning via Explained Variance
Adaptation").

Before training, the inputs of every adapted layer on the training data are decomposed by an
incremental SVD, batch after batch, until the top singular vectors stop turning (cosine similarity
above tau between two batches); A starts as those vectors, B at zero, so the model computes what it
did before training. The rank budget, r per adapted matrix, is then redistributed: every matrix may
take up to rho r directions, and the budget's r x (number of matrices) directions go where they
explain the most variance of the layers' inputs; a matrix may get none, and loses its adapter. With
rho = 1 every matrix keeps r. Defaults are PEFT's (``EvaConfig``: rho 2, tau 0.99, no whitening;
alpha is rescaled with each new rank, so that every matrix keeps the update scale alpha / r).

``parameters_at_rank`` answers the budget's count, r in every matrix; the trained count depends on
where the directions went (config.json and metrics.json count the built model), and ranks.jsonl
holds the distribution: an ``initial`` record from EVA and a ``final`` one when training ends.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
from peft import EvaConfig, LoraConfig, PeftModel, TaskType, get_peft_model, initialize_lora_eva_weights
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import TrainerCallback

from adarank.errors import UsageError
from adarank.methods.base import AdapterRequest, BuiltAdapter, OneProcess
from adarank.methods.lora import LoraPlan
from adarank.methods.variants.common import LoraVariant, VariantPlan, extended
from adarank.run.ranks import RankLog

log = logging.getLogger("adarank")

# PEFT's EVA cycles over the training batches until every layer's top components stop turning, with no
# limit of its own. Measured: GLUE (RTE, CoLA: 256 examples, batch 32) and summarization (16 records of
# 48-token summaries, batch 1, SmolLM2) converge within 1.5 passes; 2 records of 8-token summaries take a
# tiny Llama 36 passes and leave SmolLM2's layers turning after 71. Past 50 passes more of the same few
# batches is not what is missing.
CONVERGENCE_PASSES = 50


@dataclass
class EvaArguments:
    eva_rho: float = field(default=2.0, metadata={
        "help": "eva: a matrix may take up to rho x r directions of the redistributed budget (at least 1; "
                "1 keeps r in every matrix). Default 2, PEFT's."})
    eva_tau: float = field(default=0.99, metadata={
        "help": "eva: the incremental SVD stops once its singular vectors' cosine similarity between two batches "
                "exceeds this (0 to 1). Default 0.99, PEFT's."})
    eva_whiten: bool = field(default=False, metadata={
        "help": "eva: scale A's directions by the inverse square root of their singular values (PEFT's whiten)."})


@dataclass(frozen=True)
class EvaPlan(VariantPlan):
    rho: float = 2.0
    tau: float = 0.99
    whiten: bool = False
    total_rank: int | None = None  # after EVA: the directions given out (the budget's, r x matrices)
    rank_range: tuple[int, int] | None = None  # after EVA: the least and the most any adapted matrix got

    def peft_options(self) -> dict:
        return {"init_lora_weights": "eva", "eva_config": EvaConfig(rho=self.rho, tau=self.tau, whiten=self.whiten)}


class Eva(OneProcess, LoraVariant):
    """LoRA initialised from the SVD of each layer's inputs, its ranks redistributed by explained variance."""

    name = "eva"
    title = "EVA"
    one_process = "each process would run its own initialisation, whose ranks must agree to the bit"
    arguments = EvaArguments

    def variant_plan(self, lora: LoraPlan, request: AdapterRequest) -> EvaPlan:
        a: EvaArguments = self.own_arguments(request)
        if a.eva_rho < 1:
            raise UsageError(f"--eva_rho {a.eva_rho} must be at least 1 (1: every matrix keeps its rank r)")
        if not 0 <= a.eva_tau < 1:
            raise UsageError(f"--eva_tau {a.eva_tau} must be at least 0 and below 1 (the cosine similarity at which "
                             "EVA's components count as converged; 1 may never be reached; PEFT's 0.99)")
        return extended(lora, EvaPlan, rho=a.eva_rho, tau=a.eva_tau, whiten=a.eva_whiten)

    def build(self, model: nn.Module, plan: EvaPlan, request: AdapterRequest) -> BuiltAdapter:
        if request.task_type == TaskType.SEQ_2_SEQ_LM:
            raise UsageError("--method eva cannot initialise an encoder-decoder model: its layers read two sequences "
                             "of different lengths, which EVA's token masks do not tell apart; use --method lora")
        _check_components(model, plan, request.target_modules)
        if request.resume_from:
            peft_model = _from_checkpoint(model, request.resume_from)
        else:
            if torch.cuda.is_available():  # its forward passes and SVDs on the device training uses
                model.to("cuda")
            # The adapters wait on the meta device for EVA's values (PEFT's advice: less memory while it runs).
            labelled = _check_batches(plan, request.train_batches)
            peft_model = get_peft_model(model, self.peft_config(plan, request), low_cpu_mem_usage=True)
            _initialise(peft_model, request.train_batches, plan, labelled)
        ranks = adapted_ranks(peft_model, request.target_modules)
        total, low, high = sum(ranks.values()), min(ranks.values()), max(ranks.values())
        log.info("EVA: %d directions over %d matrices (ranks %d to %d).", total, len(ranks), low, high)
        callback = EvaRanks(ranks, plan.r * len(ranks), request.rank_log)
        plan = replace(plan, total_rank=total, rank_range=(low, high))
        return BuiltAdapter(peft_model, callbacks=[callback], plan=plan)


def _check_components(model: nn.Module, plan: EvaPlan, targets: list[str]) -> None:
    """EVA keeps round(r x rho) components of each layer's inputs: no more than its input width."""
    components = round(plan.r * plan.rho)
    narrowest = min((model.get_submodule(name).in_features for name in targets), default=components)
    if components > narrowest:
        # The largest rho at this rank (where it is at least 1, as rho must be), and the largest rank at this rho.
        fits = next((r for r in range(min(plan.r - 1, narrowest), 0, -1) if round(r * plan.rho) <= narrowest), None)
        fixes = ([f"lower --eva_rho to {narrowest / plan.r:.3g} or less"] if narrowest >= plan.r else []) + \
            ([f"lower --lora_r to {fits} or less"] if fits else [])
        raise UsageError(f"--eva_rho {plan.rho:g} asks for {components} input components per matrix at rank "
                         f"{plan.r}, but the narrowest adapted matrix reads {narrowest} features: "
                         f"{', or '.join(fixes) or 'adapt wider matrices (--target_modules)'}")


def _check_batches(plan: EvaPlan, batches: Callable[[], Iterator[dict]] | None) -> bool:
    """PEFT's EVA skips a batch holding fewer tokens than its components and cycles over the data until
    every layer has converged: where no training batch is large enough, it would never stop. True: the
    batches count their labelled tokens alone (a causal LM's: a summarization run's summaries)."""
    if batches is None:
        raise RuntimeError("EVA initialises from the training data, but the request holds no train_batches")
    components, largest, labelled = round(plan.r * plan.rho), 0, False
    for batch in EvaBatches(batches):
        largest, labelled = max(largest, _counted_tokens(batch)), labelled or "labels" in batch
        if largest >= components:
            return labelled
    tokens, raise_ = ("labelled (summary) tokens", "--max_target_length or --per_device_train_batch_size") \
        if labelled else ("tokens", "--per_device_train_batch_size")
    raise UsageError(f"--method eva keeps {components} input components per matrix (--lora_r {plan.r} x --eva_rho "
                     f"{plan.rho:g}), but the largest training batch holds {largest} {tokens} and EVA decomposes a "
                     f"batch only where it holds at least that many: raise {raise_}, or lower --eva_rho or --lora_r "
                     f"so that r x rho is at most {largest}")


def _counted_tokens(batch: dict) -> int:
    """The tokens of a batch whose inputs EVA decomposes: those attended to, less the ones a per-token
    label masks out (PEFT's use_label_mask, label -100)."""
    mask = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(batch["input_ids"]).bool()
    if "labels" in batch:
        mask = mask & (batch["labels"] != -100)  # not in place: .bool() of a bool mask is the batch's own tensor
    return int(mask.sum())


def _initialise(model: PeftModel, batches: Callable[[], Iterator[dict]], plan: EvaPlan, labelled: bool) -> None:
    """PEFT's EVA, its passes over the data bounded (``CONVERGENCE_PASSES``); ``labelled``: the batches
    count their labelled tokens alone (``_check_batches``)."""
    started, components = time.perf_counter(), round(plan.r * plan.rho)
    printed = io.StringIO()  # PEFT prints a line for every layer of every batch too small to decompose
    data = EvaBatches(batches)
    forward = BoundedForward(CONVERGENCE_PASSES * len(data) + 1)  # and the pass PEFT compares layer inputs with
    # Every process reads the whole training set in the same order, so there is nothing to gather.
    try:
        with contextlib.redirect_stdout(printed):
            initialize_lora_eva_weights(model, dataloader=data, forward_fn=forward, show_progress_bar=False,
                                        gather_distributed_inputs=False)
    except NotConverged:
        more = "longer summaries (--max_target_length)" if labelled else \
            "larger batches (--per_device_train_batch_size)"
        over = f"the {len(data)} training batches" if len(data) > 1 else "the one training batch"
        raise UsageError(f"EVA's components did not converge in {CONVERGENCE_PASSES} passes over {over}: give "
                         f"more training data, {more}, or lower --eva_tau below {plan.tau:g}") from None
    finally:  # what else PEFT printed is shown, also where it failed
        lines = printed.getvalue().splitlines()
        others = [line for line in lines if not line.startswith("skipping SVD")]
        if others:
            print("\n".join(others))
    if skipped := len(lines) - len(others):
        log.info("EVA: %d layer inputs passed over, from batches of fewer than %d tokens.", skipped, components)
    log.info("EVA: initialised from the training data in %.1f s (%d batches).", time.perf_counter() - started,
             forward.calls - 1)


class NotConverged(Exception):
    """EVA's incremental SVD went on past ``CONVERGENCE_PASSES`` passes over the training batches."""


class BoundedForward:
    """PEFT's forward pass over a batch, counted: PEFT cycles over the batches until every layer's
    components have converged and sets no limit itself, so a layer whose top directions keep turning
    (few tokens: a summarization run's short summaries) held the run forever."""

    def __init__(self, limit: int):
        self.limit, self.calls = limit, 0

    def __call__(self, model: nn.Module, inputs: dict):
        self.calls += 1
        if self.calls > self.limit:
            raise NotConverged
        return model(**inputs)


def _from_checkpoint(model: nn.Module, checkpoint: str) -> PeftModel:
    """The adapters with the ranks EVA gave them, from a checkpoint's adapter_config.json (its
    rank and alpha patterns, and the matrices kept); the Trainer then loads the weights."""
    config = LoraConfig.from_pretrained(checkpoint)
    config.inference_mode = False
    config.init_lora_weights = True  # the values come from the checkpoint
    return get_peft_model(model, config)


class EvaBatches:
    """The run's training batches as PEFT's EVA reads them: with a length, iterable again and again
    (it cycles over them until the SVD converges), as plain dicts, and with labels only where they
    are per token (a causal LM's), since EVA masks tokens with them; a classifier's are dropped."""

    def __init__(self, batches: Callable[[], Iterator[dict]]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[dict]:
        for batch in self.batches():
            batch = dict(batch)
            if "labels" in batch and batch["labels"].shape != batch["input_ids"].shape:
                del batch["labels"]
            yield batch


def adapted_ranks(model: PeftModel, target_modules: list[str]) -> dict[str, int]:
    """The rank of every matrix the run targets (0 where EVA gave it no direction and PEFT removed its adapter)."""
    adapter, inner = model.active_adapter, model.base_model.model
    ranks = {}
    for name in target_modules:
        module = inner.get_submodule(name)
        ranks[name] = module.r[adapter] if isinstance(module, LoraLayer) and adapter in module.r else 0
    return ranks


class EvaRanks(TrainerCallback):
    """EVA's ranks in ranks.jsonl: ``initial`` before the first step, ``final`` when training ends."""

    def __init__(self, ranks: dict[str, int], budget: int, rank_log: RankLog | None):
        self.ranks, self.budget, self.rank_log = ranks, budget, rank_log

    def _write(self, step: int, event: str) -> None:
        if self.rank_log is not None:
            self.rank_log.write(step, event, self.budget, self.ranks)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self._write(0, "initial")

    def on_train_end(self, args, state, control, **kwargs):
        self._write(state.global_step, "final")
