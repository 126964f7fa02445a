"""AdaLoRA must be right, not just run: allocation timing, budget, regulariser, loss scale."""

import json

import pytest
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from adarank.arguments import AdapterArguments
from adarank.memory import parameter_counts
from adarank.methods.adalora.allocation import ALLOCATOR_STATE_FILE
from adarank.tasks.glue.data import load_glue, tokenize
from adarank.tasks.glue.model import load_model
from adarank.tasks import TASKS
from conftest import QUICK, build_adapter, read_jsonl, run_task


def test_allocation_runs_once_per_optimizer_step_and_reaches_the_target_budget(tiny_model, tmp_path):
    # 512 demo examples, batch 8, accumulation 2: 64 micro-batches, 32 optimizer steps.
    code = run_task(
        "sst2", "--demo", "--model_name_or_path", tiny_model, "--output_dir", str(tmp_path / "run"),
        "--method", "adalora", "--budget", "small", "--num_train_epochs", "1",
        "--gradient_accumulation_steps", "2", *QUICK,
    )
    assert code == 0
    records = read_jsonl(tmp_path / "run" / "ranks.jsonl")
    schedule = json.loads((tmp_path / "run" / "config.json").read_text())["adapter"]["schedule"]
    total, tinit, tfinal = schedule["total_step"], schedule["tinit"], schedule["tfinal"]
    assert total == 32
    modules = 2 * 6
    init_budget, target_budget = 3 * modules, 2 * modules

    assert records[0]["event"] == "initial" and records[0]["total_rank"] == init_budget
    # The schedule's phases travel with the ranks, for plots that know nothing of the method.
    assert records[0]["phases"] == {"warm-up (tinit)": [0, tinit], "final (tfinal)": [total - tfinal, total]}
    prunes = [r for r in records if r["event"] == "prune"]
    # One allocation per optimizer step (delta_t = 1 here) from tinit + 1 to total - tfinal;
    # a call per micro-batch, or a missed step, would change this list.
    assert [r["step"] for r in prunes] == [s + 1 for s in range(tinit + 1, total - tfinal + 1)]
    for record in prunes:  # the paper's cubic schedule (eq. 12)
        t = record["step"] - 1
        progress = 1 - (t - tinit) / (total - tfinal - tinit)
        assert record["budget"] == int((init_budget - target_budget) * progress**3 + target_budget)
        assert record["total_rank"] <= record["budget"]
    final = records[-1]
    assert final["event"] == "final" and final["step"] == total
    assert final["total_rank"] == target_budget
    assert sorted(final["ranks"]) == ["0", "1"] and len(final["ranks"]["0"]) == 6


def build_adalora(tiny_model, orth_reg_weight: float):
    task = TASKS["sst2"]
    tokenizer, model, _ = load_model(tiny_model, task, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    args = AdapterArguments(method="adalora", orth_reg_weight=orth_reg_weight)
    return tokenizer, build_adapter(model, task, "adalora", args).model


def demo_batch(tokenizer, size=8):
    data = tokenize(load_glue(TASKS["sst2"], demo=True, max_train_samples=size), tokenizer, 64)
    return data.train, DataCollatorWithPadding(tokenizer)([data.train[i] for i in range(size)])


def built_adalora(tiny_model, total_step: int):
    task = TASKS["sst2"]
    tokenizer, model, _ = load_model(tiny_model, task, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return tokenizer, build_adapter(model, task, "adalora", AdapterArguments(method="adalora"), total_step=total_step)


def test_the_live_average_leaves_out_the_masked_triplets_once_the_mask_prunes(tiny_model, tmp_path):
    """average_live_adapter_params: at each optimizer step the triplets the allocator's mask leaves on,
    their row of P and column of Q, plus every E entry; what the run holds until the first masking."""
    tokenizer, built = built_adalora(tiny_model, total_step=20)
    (allocation,) = built.callbacks
    held = parameter_counts(built.model, 0).adapter_params  # P, E and Q at init_r
    shapes = {name: p.shape for name, p in built.model.base_model.model.named_parameters()}
    counted = []

    class EachStep(TrainerCallback):  # after the allocation of the step
        def on_step_end(self, args, state, control, **kwargs):
            ranks = allocation.effective_ranks()
            counted.append(sum(r * (shapes[n.replace("lora_E", "lora_A")][1] + shapes[n.replace("lora_E", "lora_B")][0])
                               + shapes[n][0] for n, r in ranks.items()))

    train, _ = demo_batch(tokenizer, size=32)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=20,
                             learning_rate=1e-2, report_to="none", save_strategy="no")
    Trainer(model=built.model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=[allocation, EachStep()]).train()
    masked = next(step for step, live in enumerate(counted) if live < held)
    assert len(counted) == 20 and masked > 0 and set(counted[:masked]) == {held}
    assert all(live < held for live in counted[masked:])
    figures = allocation.summary()
    assert figures["average_live_adapter_params"] == pytest.approx(sum(counted) / 20)
    assert figures["final_live_adapter_params"] == counted[-1]


def test_a_checkpoint_without_the_live_count_leaves_the_live_average_unknown(tiny_model, tmp_path):
    """A run resumed from a checkpoint written before the live count existed cannot know the steps
    before it: its live average is null (unknown), not the average of the steps after the resume."""
    _, built = built_adalora(tiny_model, total_step=20)
    (allocation,) = built.callbacks
    torch.save({"ipt": {}, "exp_avg_ipt": {}, "exp_avg_unc": {}, "rank_pattern": None},
               tmp_path / ALLOCATOR_STATE_FILE)
    allocation.restore(tmp_path)
    assert allocation.summary()["average_live_adapter_params"] is None


def test_the_orthogonal_regulariser_is_in_the_trainers_training_loss(tiny_model, tmp_path):
    weight = 0.5
    tokenizer, model = build_adalora(tiny_model, weight)
    _, batch = demo_batch(tokenizer)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        cross_entropy = torch.nn.functional.cross_entropy(logits, batch["labels"]).item()
        # R(P, Q) = ||P^T P - I||_F + ||Q Q^T - I||_F, averaged over matrices (paper eq. 4)
        norms = [
            torch.linalg.norm((p @ p.T if "lora_A" in n else p.T @ p) - torch.eye(min(p.shape)))
            for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n
        ]
        regulariser = torch.stack(norms).mean().item()
    assert regulariser > 0.1
    assert loss == pytest.approx(cross_entropy + weight * regulariser, rel=1e-5)


def test_gradient_accumulation_does_not_scale_the_loss(tiny_model, tmp_path):
    tokenizer, model = build_adalora(tiny_model, 0.0)
    train, batch = demo_batch(tokenizer)
    model.eval()
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(
            model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"]).item()
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2,
        max_steps=1, learning_rate=0.0, logging_steps=1, report_to="none", save_strategy="no",
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    logged = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    # Two equal micro-batches of 4 cover the 8 examples once: the logged loss is their mean.
    assert logged == pytest.approx(expected, rel=1e-4)


def test_the_vectorised_allocator_updates_importance_and_masks_exactly_as_peft_does(tiny_model):
    """The project runs PEFT's allocator with its two per-step loops batched (vectorise_allocator):
    over several steps of real gradients, the importance averages equal PEFT's own update to the
    bit, and the final phase's masking zeroes the same singular values."""
    from peft.tuners.adalora.layer import RankAllocator

    torch.manual_seed(0)
    tokenizer, model = build_adalora(tiny_model, orth_reg_weight=0.1)
    _, batch = demo_batch(tokenizer)
    allocator, inner = model.base_model.rankallocator, model.base_model.model
    assert allocator.update_ipt.__name__ == "update_ipt" and not hasattr(allocator.update_ipt, "__self__")
    ours, theirs = ({}, {}, {}), ({}, {}, {})

    def swap(state):  # make ``state`` the allocator's dictionaries
        allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = state

    for step in range(4):
        model.zero_grad()
        model(**batch).loss.backward()
        swap(theirs)
        RankAllocator.update_ipt(allocator, inner)  # PEFT's own
        theirs = (allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc)
        swap(ours)
        allocator.update_ipt(inner)
        ours = (allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc)
        assert len(ours[0]) == 3 * 12  # A, E and B of 12 matrices
        for mine, peft in zip(ours, theirs):
            assert mine.keys() == peft.keys()
            for name in mine:
                assert torch.equal(mine[name], peft[name]), (step, name)
        with torch.no_grad():  # the adapters move, as an optimizer step would move them
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad

    pattern = allocator.mask_to_budget(inner, budget=allocator.target_bgt)
    singular_values = {n: p for n, p in inner.named_parameters() if "lora_E" in n}
    masked = {}
    for masking in (lambda: RankAllocator.mask_using_rank_pattern(allocator, inner, pattern),
                    lambda: allocator.mask_using_rank_pattern(inner, pattern)):  # PEFT's, then ours
        with torch.no_grad():
            for p in singular_values.values():
                p.fill_(1.0)
        masking()
        masked[len(masked)] = {n: p.clone() for n, p in singular_values.items()}
    for name in singular_values:
        assert torch.equal(masked[0][name], masked[1][name]), name
    assert sum(int((p == 0).sum()) for p in masked[1].values()) == allocator.init_bgt - allocator.target_bgt


def test_the_vectorised_regulariser_gives_peft_loss_and_gradients(tiny_model):
    tokenizer, model = build_adalora(tiny_model, orth_reg_weight=0.3)
    _, batch = demo_batch(tokenizer)
    adalora = model.base_model
    model.eval()
    results = []
    for forward in (lambda: type(adalora).forward(adalora, **batch), lambda: adalora(**batch)):  # PEFT's, ours
        model.zero_grad()
        loss = forward().loss
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n}))
    (peft_loss, peft_grads), (loss, grads) = results
    assert loss == pytest.approx(peft_loss, rel=1e-6)
    for name, grad in peft_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert any(grad.abs().sum() > 0 for name, grad in grads.items() if "lora_A" in name)
