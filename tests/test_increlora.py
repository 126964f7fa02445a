"""IncreLoRA (--method increlora): the allocation against a computation by hand, the layers and their
surgery, the saved adapter, a run from the command line, resuming, and bad input."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from adarank.arguments import AdapterArguments
from adarank.errors import UsageError
from adarank.methods import AdapterRequest, Ranks, lora_parameters
from adarank.methods.increlora import IncreLora, IncreLoraArguments
from adarank.tasks import TASKS
from adarank.tasks.glue.data import load_glue, tokenize
from adarank.tasks.glue.model import load_model
from conftest import QUICK, assert_adapter_gives_the_run_predictions, build_adapter, read_jsonl, reloaded_logits, \
    stop_and_resume
from fixtures.cli import fails_cleanly, run_task
from fixtures.paths import ROOT

TASK = TASKS["cola"]


def build(tiny_model, total_step, top_h=None, restart_warmup=0, advance_learning=True, **adapter):
    torch.manual_seed(0)
    tokenizer, model, _ = load_model(tiny_model, TASK, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    built = build_adapter(model, TASK, "increlora", AdapterArguments(method="increlora", **adapter),
                          total_step=total_step, method_arguments=IncreLoraArguments(
                              top_h=top_h, restart_warmup=restart_warmup, advance_learning=advance_learning))
    data = tokenize(load_glue(TASK, demo=True, max_train_samples=8), tokenizer, 64).train
    batch = tokenizer.pad([{k: r[k] for k in ("input_ids", "attention_mask")} for r in data], return_tensors="pt")
    batch["labels"] = torch.tensor(data["labels"])
    built.model.train()
    return built, batch


class Loop:
    """The Trainer's order of calls around one optimizer step, by hand."""

    def __init__(self, built, total_step, optimizer=None):
        self.model, self.growth = built.model, built.callbacks[0]
        self.args, self.state = SimpleNamespace(seed=0), SimpleNamespace(global_step=0, max_steps=total_step)
        self.optimizer = optimizer or torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
        self.growth.on_train_begin(self.args, self.state, None)

    def step(self, batch, after_step=None, after_callback=None):
        self.model(**batch).loss.backward()
        self.growth.on_pre_optimizer_step(self.args, self.state, None)
        self.optimizer.step()
        if after_step:
            after_step(self.state.global_step + 1)
        self.growth.on_optimizer_step(self.args, self.state, None, optimizer=self.optimizer)
        if after_callback:
            after_callback(self.state.global_step + 1)
        self.optimizer.zero_grad()
        self.state.global_step += 1


# --- the allocation, against the paper's equations computed here with numpy --------------------

def test_the_allocation_follows_the_importance_and_the_budget_rule(tiny_model):
    steps, top_h, beta1, beta2 = 12, 6, 0.8, 0.95  # unequal betas: swapping them changes every score
    built, batch = build(tiny_model, steps, top_h=top_h, budget="small", tinit=2, delta_t=2, tfinal=3,
                         beta1=beta1, beta2=beta2)
    loop, adapter = Loop(built, steps), built.model.active_adapter
    layers = loop.growth.layers
    names = list(layers)
    size = {n: layers[n].in_features + layers[n].out_features + 1 for n in names}
    target = 2 * sum(layers[n].in_features + layers[n].out_features for n in names)  # LoRA r=2, per step
    rank = {n: 1 for n in names}
    avg, unc = {}, {}
    reference = {"param_steps": 0, "events": [], "scores": {}}

    def by_hand(step):
        reference["param_steps"] += sum(rank[n] * size[n] for n in names)
        for n in names:
            layer = layers[n]
            tensors = (layer.lora_A[adapter].weight, layer.lora_B[adapter].weight, layer.lora_E[adapter])
            ipt = [np.abs(t.detach().double().numpy() * t.grad.double().numpy()) for t in tensors]
            old_a = avg.get(n, [np.zeros_like(i) for i in ipt])
            old_u = unc.get(n, [np.zeros_like(i) for i in ipt])
            avg[n] = [beta1 * a + (1 - beta1) * i for a, i in zip(old_a, ipt)]
            unc[n] = [beta2 * u + (1 - beta2) * np.abs(i - a) for u, i, a in zip(old_u, ipt, avg[n])]
        if step not in (2, 4, 6, 8):  # tinit 2, every 2, up to 12 - tfinal 3
            return
        r = rank  # active ranks: the mean runs over these triplets only
        score = {n: ((avg[n][0][:r[n]] * unc[n][0][:r[n]]).sum() + (avg[n][1][:, :r[n]] * unc[n][1][:, :r[n]]).sum()
                     + (avg[n][2][:r[n]] * unc[n][2][:r[n]]).sum()) / (r[n] * size[n]) for n in names}
        order = sorted(names, key=lambda n: score[n], reverse=True)
        assert score[order[top_h - 1]] > score[order[top_h]] * (1 + 1e-4)  # no near tie decides the test
        projected = reference["param_steps"] + (steps - step) * sum(rank[n] * size[n] for n in names)
        chosen = []
        for n in order[:top_h]:
            gain = size[n] * (steps - step)
            if abs(projected + gain - steps * target) >= abs(projected - steps * target):
                break
            chosen.append(n)
            projected += gain
        for n in chosen:  # one more triplet (the reserved one becomes active; a new one is reserved)
            rank[n] += 1
            for store in (avg, unc):
                q, p, e = store[n]
                store[n] = [np.pad(q, ((0, 1), (0, 0))), np.pad(p, ((0, 0), (0, 1))), np.pad(e, (0, 1))]
        reference["scores"][step] = score
        if chosen:
            reference["events"].append({"step": step, "modules": chosen})

    def the_callback_agrees(step):  # right after its own allocation of this step
        if step in reference["scores"]:
            np.testing.assert_allclose([loop.growth.scores[n] for n in names],
                                       [reference["scores"][step][n] for n in names], rtol=1e-4)
        assert loop.growth.events == reference["events"], f"after step {step}"
        assert loop.growth.ranks == rank, f"after step {step}"

    for _ in range(steps):
        loop.step(batch, after_step=by_hand, after_callback=the_callback_agrees)
    counts = [len(e["modules"]) for e in reference["events"]]
    assert counts[0] == top_h and any(0 < c < top_h for c in counts)  # full events, then the rule stops
    last = reference["events"][-1]["step"]
    average = loop.growth.param_steps / steps
    assert abs(average - target) * steps <= max(size.values()) * (steps - last) / 2
    assert loop.growth.summary()["average_adapter_params"] == pytest.approx(reference["param_steps"] / steps)


# --- the layers: growth, advance learning, restart warm-up, folding ---------------------------

def test_growth_keeps_the_function_and_the_optimizer_state(tiny_model):
    built, batch = build(tiny_model, 20, budget="small", tinit=10, delta_t=1, tfinal=2)  # no growth yet
    loop = Loop(built, 20)
    for _ in range(3):
        loop.step(batch)
    growth, name = loop.growth, next(iter(loop.growth.layers))
    q = growth.layers[name].lora_A["default"].weight
    moments = loop.optimizer.state[q]["exp_avg"].clone()
    built.model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        before = built.model(**inputs).logits
    growth.add_rank(name, 3, loop.optimizer)
    with torch.no_grad():
        after = built.model(**inputs).logits
    assert torch.equal(after, before)  # the new rank's lambda and the reserved one's are 0
    assert q.shape[0] == 3 and growth.ranks[name] == 2  # two active, one reserved
    state = loop.optimizer.state[q]["exp_avg"]
    assert torch.equal(state[:2], moments) and not state[2:].any()
    built.model.train()
    loop.step(batch)  # the optimizer carries on with the grown shapes


def test_merging_before_the_fold_adds_the_update_the_forward_adds(tiny_model):
    built, batch = build(tiny_model, 20, budget="small", tinit=10, delta_t=1, tfinal=2)
    loop = Loop(built, 20)
    for _ in range(3):
        loop.step(batch)
    built.model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        for layer in loop.growth.layers.values():  # lambda away from its start, so a merge without it differs
            layer.lora_E["default"].add_(torch.linspace(0.5, 1.5, layer.lora_E["default"].numel()))
        before = built.model(**inputs).logits
        for layer in loop.growth.layers.values():
            layer.merge()
        merged = built.model(**inputs).logits
    assert torch.allclose(merged, before, atol=1e-5)


@pytest.mark.parametrize("orth_reg_weight", [0.0, 0.1])
def test_the_reserved_rank_learns_only_from_the_regulariser(tiny_model, orth_reg_weight):
    built, batch = build(tiny_model, 20, budget="small", orth_reg_weight=orth_reg_weight, tinit=10, delta_t=1,
                         tfinal=2)  # no growth in these steps
    loop = Loop(built, 20)
    layer = next(iter(loop.growth.layers.values()))
    q, p, e = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.lora_E["default"]
    start = q.detach()[-1].clone(), p.detach()[:, -1].clone()
    for _ in range(3):
        loop.step(batch)
    assert e[-1].item() == 0.0 and e[0].item() != 0.0
    moved = not torch.equal(q.detach()[-1], start[0]) and not torch.equal(p.detach()[:, -1], start[1])
    assert moved == (orth_reg_weight > 0)  # lambda = 0: the loss gives p and q no gradient


def test_a_new_rank_warms_up_again(tiny_model):
    warmup, lr = 4, 0.1
    built, batch = build(tiny_model, 20, budget="small", restart_warmup=warmup, tinit=1, delta_t=1, tfinal=17)
    model = built.model
    loop = Loop(built, 20, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr))
    loop.step(batch)  # the first ranks are added after this step
    name = loop.growth.events[0]["modules"][0]
    e = loop.growth.layers[name].lora_E["default"]
    for k in range(1, warmup + 2):
        model(**batch).loss.backward()
        expected = (e[1] - min(k / warmup, 1.0) * lr * e.grad[1]).item()
        model.zero_grad()
        loop.step(batch)  # the same batch, no dropout: the same gradient
        assert e[1].item() == pytest.approx(expected, rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("advance_learning", [True, False])
def test_the_saved_adapter_is_plain_lora_and_reloads_with_the_same_logits(tiny_model, tmp_path, advance_learning):
    built, batch = build(tiny_model, 12, budget="small", tinit=2, delta_t=2, tfinal=3,
                         advance_learning=advance_learning)
    loop = Loop(built, 12)
    for _ in range(12):
        loop.step(batch)
    model, growth = built.model, loop.growth
    assert growth.events
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        trained = model(**inputs).logits
    growth.finish()
    assert all(type(layer) is LoraLinear and not hasattr(layer, "lora_E") for layer in growth.layers.values())
    model.save_pretrained(str(tmp_path / "adapter"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["rank_pattern"] == growth.ranks
    assert {n: a / config["rank_pattern"][n] for n, a in config["alpha_pattern"].items()} == \
        {n: 16 / 2 for n in growth.ranks}  # scale alpha / budget rank, whatever the rank
    _, base, _ = load_model(tiny_model, TASK, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.testing.assert_close(reloaded_logits(base, tmp_path / "adapter", inputs), trained, rtol=0, atol=1e-6)
    saved = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    shapes = {n: (l.in_features, l.out_features) for n, l in growth.layers.items()}
    assert saved == sum(lora_parameters(growth.ranks[n], [shapes[n]]) for n in shapes)


def test_parameter_counts_answer_for_the_model(tiny_model):
    built, _ = build(tiny_model, 100, budget="large")
    shapes = [(l.in_features, l.out_features) for l in built.callbacks[0].layers.values()]
    trainable = sum(p.numel() for n, p in built.model.named_parameters() if "lora_" in n and p.requires_grad)
    method = IncreLora()
    assert method.budget_ranks(8) == Ranks(1, 15)  # the even-rate estimate: (1 + 15) / 2 = 8 on average
    assert method.adapter_parameters(Ranks(1, 15), shapes).start == trainable  # rank 1 and the reserved one
    assert method.adapter_parameters(Ranks(1, 15), shapes).end == lora_parameters(15, shapes)
    # The most held while training: the end's 15 triplets and the reserved one, each P, lambda and Q
    # (not the saved LoRA count, which folds lambda into B and drops the reserved triplet).
    assert method.adapter_parameters(Ranks(1, 15), shapes).most == method.parameters_at_rank(16, shapes)
    assert built.callbacks[0].adapter_params() == method.parameters_at_rank(1, shapes)


# --- the plan --------------------------------------------------------------------------------

def planned(total_step, budget="small", **flags):
    own = {k: flags.pop(k) for k in ("top_h", "restart_warmup", "advance_learning") if k in flags}
    request = AdapterRequest(TASK, AdapterArguments(method="increlora", budget=budget, **flags), total_step=total_step,
                             method_arguments=IncreLoraArguments(**own))
    return IncreLora().plan(request)


def test_the_defaults_of_a_full_length_run():
    plan = planned(6700)  # CoLA: 25 epochs of 268 steps
    s = plan.schedule
    assert (s.tinit, s.delta_t, s.tfinal) == (800, 10, 3500)  # the task's AdaLoRA schedule (Table 8)
    assert (plan.init_r, plan.orth_reg_weight, plan.beta1, plan.beta2) == (1, 0.1, 0.85, 0.85)
    assert (plan.restart_warmup, plan.scale, plan.budget_rank, plan.advance_learning) == (10, 8.0, 2, True)
    assert plan.growth_steps == tuple(range(800, 3201, 10))
    assert plan.ranks == Ranks(1, 3) and plan.top_h is None  # resolved on the model


def test_a_restart_warmup_that_ends_with_the_run_is_accepted():
    """After the first growth at step 1 of 8, a warm-up of 7 steps reaches the full rate at the last step."""
    def planned(restart_warmup):
        return IncreLora().plan(AdapterRequest(TASK, AdapterArguments(budget="small", tinit=1, tfinal=1, delta_t=1),
                                               total_step=8,
                                               method_arguments=IncreLoraArguments(restart_warmup=restart_warmup)))

    assert planned(7).restart_warmup == 7
    with pytest.raises(UsageError, match="--restart_warmup 8 is longer than the 7 steps after the first growth step"):
        planned(8)


@pytest.mark.parametrize("flags, message", [
    (("--init_r", "2"), "--init_r 2 leaves no rank to grow under --budget small"),
    (("--lora_r", "4"), "--lora_r is not IncreLoRA's"),
    (("--beta2", "1"), "--beta2 1.0 must lie strictly between 0 and 1"),
    (("--top_h", "0"), "--top_h 0 must be at least 1"),
    (("--tinit", "0", "--delta_t", "10", "--tfinal", "1"), "IncreLoRA's schedule has no step to grow in"),
    (("--tinit", "6", "--delta_t", "1", "--tfinal", "1"), "--budget small (LoRA r=2 on average) is out of reach"),
    (("--tinit", "7", "--tfinal", "1"), "IncreLoRA grows ranks on AdaLoRA's schedule"),
    (("--top_h", "99"), "--top_h 99 is more than the 12 adapted matrices"),
    (("--top_h", "1", "--tinit", "4", "--tfinal", "2"), "--top_h 1 cannot reach the budget"),
    # Ranks added at step 1 or later trained at k / 100 of the learning rate to the run's end, silently.
    (("--restart_warmup", "100", "--tinit", "1", "--tfinal", "1", "--delta_t", "1"),
     "--restart_warmup 100 is longer than the 7 steps after the first growth step (1 of 8): no added rank would "
     "reach the full learning rate; use 7 or less"),
])
def test_impossible_settings_are_refused_in_one_line(tiny_model, tmp_path, capsys, flags, message):
    line = fails_cleanly(capsys, "cola", "--demo", "--method", "increlora", "--model_name_or_path", tiny_model,
                         "--max_steps", "8", "--output_dir", str(tmp_path / "x"), *flags)
    assert message in line


# --- runs ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_run(tiny_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("increlora") / "run"
    done = subprocess.run(
        [sys.executable, str(ROOT / "src" / "glue-cola.py"), "--method", "increlora", "--budget", "small",
         "--max_steps", "16", "--demo", "--model_name_or_path", tiny_model, "--output_dir", str(run_dir), *QUICK],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_a_demo_run_writes_its_run_directory(demo_run):
    for name in ("config.json", "metrics.json", "history.jsonl", "ranks.jsonl", "adapter/adapter_config.json"):
        assert (demo_run / name).is_file(), name
    plan = json.loads((demo_run / "config.json").read_text())["adapter"]
    metrics = json.loads((demo_run / "metrics.json").read_text())
    records = read_jsonl(demo_run / "ranks.jsonl")
    events = [r["event"] for r in records]
    assert events[0] == "initial" and events[-1] == "final" and set(events[1:-1]) == {"grow"}
    assert all(r["budget"] == r["total_rank"] for r in records)
    assert [r["total_rank"] for r in records] == sorted(r["total_rank"] for r in records)
    assert records[-1]["total_rank"] == metrics["final_total_rank"] and metrics["growth_events"] == len(records) - 2
    expected = plan["expected"]
    assert metrics["budget_adapter_params"] == expected["lora_adapter_params"] == 2 * 448  # LoRA r=2, 12 matrices
    last = records[-2]["step"]
    assert abs(metrics["average_adapter_params"] - expected["lora_adapter_params"]) * 16 <= 49 * (16 - last) / 2
    assert {"expected_average_adapter_params", "expected_final_adapter_params", "expected_final_total_rank"} <= \
        set(expected)
    rank_pattern = json.loads((demo_run / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
    assert sum(rank_pattern.values()) == metrics["final_total_rank"]


def test_the_run_adapter_predicts_what_the_run_predicted(demo_run, tiny_model):
    tokenizer, base, _ = load_model(tiny_model, TASK)
    assert_adapter_gives_the_run_predictions(demo_run, tokenizer, base, TASK)


def test_a_resumed_run_allocates_as_an_uninterrupted_one(tiny_model, tmp_path):
    common = ("cola", "--demo", "--method", "increlora", "--model_name_or_path", tiny_model, "--max_steps", "12",
              "--per_device_train_batch_size", "8", "--logging_steps", "1", "--save_strategy", "steps",
              "--save_steps", "4", "--save_total_limit", "3", "--restart_warmup", "3", "--seed", "3")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_task(*common, "--output_dir", str(straight)) == 0
    stop_and_resume(run_task, common, resumed, step=4)  # after the growth at step 4, a new rank still warming up
    assert read_jsonl(resumed / "ranks.jsonl") == read_jsonl(straight / "ranks.jsonl")
    assert len(read_jsonl(straight / "ranks.jsonl")) > 4  # growth before and after the checkpoint
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, resumed))
    assert b["average_adapter_params"] == a["average_adapter_params"]
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-6)


def test_a_checkpoint_of_another_method_is_refused(tiny_model, tmp_path, capsys):
    other = tmp_path / "lora"
    assert run_task("cola", "--demo", "--method", "lora", "--model_name_or_path", tiny_model, "--max_steps", "2",
                    "--save_strategy", "steps", "--save_steps", "2", "--output_dir", str(other)) == 0
    # Without its run's config.json (a checkpoint copied elsewhere), the method's own state tells.
    (other / "config.json").unlink()
    line = fails_cleanly(capsys, "cola", "--demo", "--method", "increlora", "--model_name_or_path", tiny_model,
                         "--max_steps", "4", "--output_dir", str(tmp_path / "x"),
                         "--resume_from_checkpoint", str(other / "checkpoints" / "checkpoint-2"))
    assert "has no increlora_state.pt" in line
