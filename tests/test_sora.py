"""SoRA (--method sora): the gates' proximal step and the fold by hand, the budget rule, the
refusals, and whole runs: ranks.jsonl, live parameters, the saved adapter reloaded in plain PEFT,
and a resumed run that keeps its gates."""

import json
import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForSequenceClassification, TrainerControl, TrainerState

from adarank.arguments import AdapterArguments
from adarank.memory_plan import architecture, model_skeleton, plan as memory_plan
from adarank.methods import AdapterRequest, Ranks, budget_label, get_method
from adarank.methods.sora import STATE_FILE, Sora, SoraArguments, add_gates, fold_gates, proximal_step
from adarank.tasks import TASKS
from adarank.tasks.glue.model import load_model
from conftest import (QUICK, assert_adapter_gives_the_run_predictions, build_adapter, demo_dev_inputs, read_jsonl,
                      stop_and_resume)
from fixtures.cli import fails_cleanly, run_task
from fixtures.models import saved_bert
from fixtures.paths import ROOT
from test_scalars import scalars

# The tiny BERT's adapted matrices (in + out): query, key, value, attention output 16 + 16,
# intermediate 16 + 32, output 32 + 16; two layers.
WIDTHS = {"query": 32, "key": 32, "value": 32, "attention.output": 32, "intermediate": 48, "output": 48}


# --- the update and the fold, by hand --------------------------------------------------------

def test_the_proximal_step_is_the_papers_soft_thresholded_gradient_step():
    gate = torch.tensor([1.0, 0.5, -0.2, 0.01, 0.0, -1.0])
    grad = torch.tensor([0.5, -1.0, 0.3, 0.0, -0.02, -2.0])
    # eta 0.1, lambda 0.5: z = g - 0.1 grad = [0.95, 0.6, -0.23, 0.01, 0.002, -0.8], threshold 0.05.
    stepped = proximal_step(gate, grad, eta=0.1, lam=0.5)
    torch.testing.assert_close(stepped, torch.tensor([0.90, 0.55, -0.18, 0.0, 0.0, -0.75]))


def gated_tiny(tiny_model, **sora):
    task = TASKS["cola"]
    _, model, _ = load_model(tiny_model, task, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return build_adapter(model, task, Sora(), AdapterArguments(method="sora"),
                         method_arguments=SoraArguments(**sora))


def test_the_callback_steps_at_the_scheduled_step_size_after_the_optimizer(tiny_model):
    built = gated_tiny(tiny_model, sora_eta=4.0, sora_lambda=0.3)
    callback = built.callbacks[0]
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-2)  # lr_t, half the peak below
    args, state = SimpleNamespace(learning_rate=2e-2), TrainerState()
    callback.on_train_begin(args, state, TrainerControl(), optimizer=optimizer)
    assert all(g.requires_grad for g in callback.gates)
    (callback.gates[0] * torch.tensor([0.2, -0.4, 1.5])).sum().backward()  # the other gates: no gradient
    assert callback.gates[0].grad is None  # taken into the callback's buffer: no clipping, no DDP
    callback.on_optimizer_step(args, state, TrainerControl(), optimizer=optimizer)
    # eta_t = 4.0 * 1e-2 / 2e-2 = 2, threshold 2 * 0.3 = 0.6; z = 1 - 2 grad = [0.6, 1.8, -2.0].
    torch.testing.assert_close(callback.gates[0].detach(), torch.tensor([0.0, 1.2, -1.4]))
    torch.testing.assert_close(callback.gates[1].detach(), torch.tensor([0.4, 0.4, 0.4]))
    assert not callback.grads.any()  # cleared for the next step
    # Live parameters now: query of layer 0 keeps 2 of 3 dimensions, the other 11 matrices 3; plus 36 gates.
    assert float(callback.live_params()) == 2 * 32 + 3 * 2 * sum(WIDTHS.values()) - 3 * 32 + 36


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.dead = nn.Linear(2, 2), nn.Linear(2, 2)
        for layer in (self.lin, self.dead):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        return self.lin(x) + self.dead(x)


def test_the_fold_drops_zero_gates_into_a_plain_lora_adapter_that_reloads(tmp_path):
    model = get_peft_model(Toy(), LoraConfig(r=3, lora_alpha=6, target_modules=["lin", "dead"]))
    layers = add_gates(model, ["lin", "dead"])
    lin, dead = layers["lin"], layers["dead"]
    with torch.no_grad():
        lin.lora_A["default"].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
        lin.lora_B["default"].weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 3.0]]))
        lin.sora_gate["default"].copy_(torch.tensor([0.5, 0.0, -2.0]))
        dead.lora_B["default"].weight.fill_(1.0)
        dead.sora_gate["default"].zero_()
    x = torch.tensor([[1.0, 1.0]])
    # A x = [3, 7, 11]; g * A x = [1.5, 0, -22]; B (...) = [-42.5, -66]; times alpha / r = 2.
    expected = torch.tensor([[-85.0, -132.0]])
    torch.testing.assert_close(model(x), expected)
    assert fold_gates(model, layers) == {"lin": 2, "dead": 0}
    torch.testing.assert_close(lin.lora_A["default"].weight, torch.tensor([[1.0, 2.0], [5.0, 6.0]]))
    torch.testing.assert_close(lin.lora_B["default"].weight, torch.tensor([[0.5, -4.0], [0.0, -6.0]]))
    assert not dead.lora_A["default"].weight.any() and dead.r["default"] == 1  # PEFT has no rank 0
    config = model.peft_config["default"]
    assert config.rank_pattern == {"lin": 2, "dead": 1} and config.alpha_pattern == {"lin": 4.0, "dead": 2.0}
    torch.testing.assert_close(model(x), expected)
    model.save_pretrained(str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(Toy(), str(tmp_path / "adapter"))
    torch.testing.assert_close(reloaded(x), expected)


def test_a_gated_bert_folds_and_reloads_with_the_same_logits(tiny_model, tmp_path):
    built = gated_tiny(tiny_model)
    callback, model = built.callbacks[0], built.model
    torch.manual_seed(0)
    with torch.no_grad():
        for layer, gate in zip(callback.layers.values(), callback.gates):
            layer.lora_B["default"].weight.normal_()
            kept = torch.rand(3) < 0.5  # about half the dimensions off, the first always on
            kept[0] = True
            gate.copy_(torch.randn(3) * kept)
        callback.gates[0].zero_()  # one module off altogether
    tokenizer, _, _ = load_model(tiny_model, TASKS["cola"])
    inputs = demo_dev_inputs(tokenizer, TASKS["cola"], 16)
    model.eval()
    with torch.no_grad():
        trained = model(**inputs).logits
        callback.on_train_end(SimpleNamespace(), TrainerState(global_step=5), TrainerControl())
        torch.testing.assert_close(model(**inputs).logits, trained, rtol=0, atol=1e-6)
    model.save_pretrained(str(tmp_path / "adapter"))
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    with torch.no_grad():
        reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()(**inputs).logits
    torch.testing.assert_close(reloaded, trained, rtol=0, atol=1e-6)
    figures = built.summary()
    assert figures["final_total_rank"] == sum(callback.final.values()) < 36
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    stored = sum(t.numel() for k, t in saved.items() if ".lora_" in k)
    placeholders = sum(layer.in_features + layer.out_features for name, layer in callback.layers.items()
                       if callback.final[name] == 0)
    assert placeholders == 32 and figures["final_adapter_params"] == stored - placeholders


# --- the plan: budgets, counts, refusals -----------------------------------------------------

@pytest.mark.parametrize("budget, start, compared", [("small", 3, 2), ("large", 12, 8)])
def test_the_budget_starts_at_one_and_a_half_times_the_lora_rank(budget, start, compared):
    request = AdapterRequest(TASKS["cola"], AdapterArguments(method="sora", budget=budget), total_step=100)
    plan = Sora().plan(request)
    assert (plan.max_rank, plan.budget_rank, budget_label(plan.budget_rank)) == (start, compared, budget)
    assert plan.ranks == Ranks(start, start) == Sora().budget_ranks(compared)
    shapes = [(16, 16), (16, 32)]
    # Training: A, B and the gate, r (in + out + 1); saved: A and B diag(g), at most r (in + out).
    assert Sora().parameters_at_rank(3, shapes) == 3 * 33 + 3 * 49
    counts = Sora().adapter_parameters(Ranks(3, 3), shapes)
    assert (counts.start, counts.end) == (3 * 33 + 3 * 49, 3 * 32 + 3 * 48)
    planned = memory_plan(architecture(model_skeleton(None, 2)), "sora", budget)
    assert planned.train_adapter_params == Sora().parameters_at_rank(start, architecture(model_skeleton(None, 2)).adapted)


def test_the_schedule_raises_lambda_in_equal_phases():
    request = AdapterRequest(TASKS["cola"], AdapterArguments(method="sora"), total_step=10, method_arguments=SoraArguments(
        sora_lambda=0.1, sora_max_lambda=0.4, sora_schedule="linear", sora_phases=4))
    plan = Sora().plan(request)
    # Phases [0, 2), [2, 5), [5, 8), [8, 10) (rounded quarters) at 0.1, 0.2, 0.3, 0.4.
    assert [round(plan.lambda_at(s), 6) for s in range(10)] == [0.1, 0.1, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.4, 0.4]
    exp = Sora().plan(AdapterRequest(TASKS["cola"], AdapterArguments(method="sora"), total_step=10,
                                     method_arguments=SoraArguments(sora_lambda=0.1, sora_max_lambda=0.8,
                                                                    sora_schedule="exp", sora_phases=4)))
    assert exp.lambdas() == pytest.approx([0.1, 0.2, 0.4, 0.8])


@pytest.mark.parametrize("flags, message", [
    (("--sora_max_rank", "0"), "--sora_max_rank 0 must be at least 1"),
    (("--sora_lambda", "-0.5"), "--sora_lambda -0.5 must be >= 0"),
    (("--sora_lambda", "nan"), "--sora_lambda nan must be a finite number"),
    (("--diagnostics",), "--diagnostics reads LoRA and AdaLoRA layers, not sora's"),
    (("--sora_eta", "0"), "--sora_eta 0.0 must be positive"),
    (("--sora_schedule", "cubic"), "--sora_schedule 'cubic': choose one of none, linear, exp"),
    (("--sora_schedule", "linear"), "--sora_schedule linear needs --sora_max_lambda"),
    (("--sora_max_lambda", "1"), "--sora_max_lambda is read only with --sora_schedule linear or exp"),
    (("--sora_phases", "1000"), "--sora_phases is read only with --sora_schedule linear or exp"),
    (("--sora_schedule", "exp", "--sora_max_lambda", "1e-4"), "--sora_max_lambda 0.0001 is below --sora_lambda 0.0003"),
    (("--sora_schedule", "linear", "--sora_max_lambda", "1", "--sora_phases", "9"),
     "--sora_phases 9 does not fit this run of 8 optimizer steps: use 2 to 8"),
    (("--sora_schedule", "linear", "--sora_max_lambda", "1", "--sora_phases", "1"),
     "--sora_phases 1 must be at least 2: a schedule raises lambda from one phase to the next"),
])
def test_impossible_values_are_refused_in_one_line(tiny_model, tmp_path, capsys, flags, message):
    line = fails_cleanly(capsys, "cola", "--demo", "--method", "sora", "--model_name_or_path", tiny_model,
                         "--max_steps", "8", "--output_dir", str(tmp_path / "r"), *QUICK, *flags, one_line=True)
    assert message in line


def test_a_schedule_on_a_run_of_one_step_asks_for_more_steps_or_none(tiny_model, tmp_path, capsys):
    """The phases' range was 2 to 1, which no value fits."""
    line = fails_cleanly(capsys, "cola", "--demo", "--method", "sora", "--model_name_or_path", tiny_model,
                         "--max_steps", "1", "--output_dir", str(tmp_path / "r"), *QUICK, "--sora_schedule", "linear",
                         "--sora_max_lambda", "1e-2", one_line=True)
    assert line.endswith("--sora_schedule linear raises lambda in phases of at least one optimizer step, and this run "
                         "has 1: train for 2 steps or more (--max_steps, --num_train_epochs), or drop --sora_schedule, "
                         "--sora_max_lambda and --sora_phases for one lambda throughout")
    # the fix it names runs: the default schedule holds one lambda throughout
    assert run_task("cola", "--demo", "--method", "sora", "--model_name_or_path", tiny_model, "--max_steps", "1",
                    "--output_dir", str(tmp_path / "one"), *QUICK) == 0


def test_the_method_is_registered_with_its_flags():
    assert get_method("sora").arguments is SoraArguments


# --- whole runs -------------------------------------------------------------------------------

# On a tiny BERT a gate moves by about 1e-3 x eta per step from its gradient: with a peak step size of
# 20 at learning rate 5e-2, lambda 0.007 (a threshold of 0.14 per step at the peak) switches most of the
# 36 dimensions of the seeded BERT below off from step 11 on, at several steps, and keeps a few.
SPARSIFYING = ("--learning_rate", "5e-2", "--sora_eta", "20", "--sora_lambda", "0.007", "--seed", "42")


@pytest.fixture(scope="module")
def seeded_bert(tmp_path_factory) -> str:
    """The tiny BERT with weights of its own seed, so that where the gates switch off does not depend on
    which tests ran before (the session's tiny_model draws from the shared random state)."""
    return saved_bert(tmp_path_factory.mktemp("sora-bert"), seed=0)


def flat_ranks(record: dict) -> list[int]:
    return [rank for kinds in record["ranks"].values() for rank in kinds.values()]


def test_the_demo_script_sparsifies_logs_and_saves_a_plain_lora_adapter(seeded_bert, tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(ROOT / "src" / "glue-cola.py"), "--demo", "--method", "sora", "--budget", "small",
         "--max_steps", "16", "--model_name_or_path", seeded_bert, "--output_dir", str(run_dir), *QUICK, *SPARSIFYING,
         "--report_to", "tensorboard"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("config.json", "metrics.json", "history.jsonl", "ranks.jsonl", "predictions.tsv",
                 "adapter/adapter_model.safetensors"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["method"], config["budget"], config["adapter"]["max_rank"]) == ("sora", "small", 3)
    records = read_jsonl(run_dir / "ranks.jsonl")
    events = [r["event"] for r in records]
    assert events[0] == "initial" and events[-1] == "final" and "sparsify" in events
    assert set(events[1:-1]) == {"sparsify"} and records[0]["total_rank"] == 36 > records[-1]["total_rank"] > 0
    steps = [r["step"] for r in records[1:-1]]
    assert steps == sorted(set(steps))  # at most one record a logging step, and only on a change
    assert all(a["ranks"] != b["ranks"] for a, b in zip(records[:-2], records[1:-1]))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    final = flat_ranks(records[-1])
    assert metrics["final_total_rank"] == sum(final)
    start = 3 * 2 * sum(WIDTHS.values()) + 36  # every dimension live, and the 36 gates
    # Held and trained throughout, as every method counts it: A and B at r_max, and the gates.
    assert metrics["average_adapter_params"] == start
    assert metrics["final_live_adapter_params"] < metrics["average_live_adapter_params"] < start
    # TensorBoard's live parameters at each logging step (the gates included): here every step, so their
    # mean is the live average; its trainable parameters are the held ones, as for every method.
    curves = scalars(run_dir)
    assert {value for _, value in curves["train/num_train_param"]} == {start}
    live = [value for _, value in curves["train/num_live_param"]]
    assert len(live) == 16 and live[0] == start
    assert live[-1] == metrics["final_live_adapter_params"] == metrics["final_adapter_params"] + 36
    assert metrics["average_live_adapter_params"] == pytest.approx(sum(live) / 16)
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["rank_pattern"].values()) == sorted(max(1, r) for r in final)
    assert adapter["r"] == 3 and all(adapter["alpha_pattern"][n] == pytest.approx(16 * r / 3)
                                     for n, r in adapter["rank_pattern"].items())
    tokenizer, _, _ = load_model(seeded_bert, TASKS["cola"])
    base = AutoModelForSequenceClassification.from_pretrained(seeded_bert, num_labels=2)
    assert_adapter_gives_the_run_predictions(run_dir, tokenizer, base, TASKS["cola"])


def run_sora(*argv) -> int:
    return run_task("cola", "--method", "sora", *argv)


def test_a_resumed_run_keeps_its_gates(seeded_bert, tmp_path):
    common = ("--demo", "--model_name_or_path", seeded_bert, "--max_steps", "16", "--per_device_train_batch_size", "8",
              "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "12", "--save_total_limit", "2",
              *SPARSIFYING)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_sora(*common, "--output_dir", str(straight)) == 0
    saved = torch.load(straight / "checkpoints" / "checkpoint-12" / STATE_FILE, weights_only=True)
    assert saved["steps"] == 12 and any((g == 0).any() for g in saved["gates"].values())  # some already off
    stop_and_resume(run_sora, common, resumed, step=12)
    assert read_jsonl(resumed / "ranks.jsonl") == read_jsonl(straight / "ranks.jsonl")
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, resumed))
    assert b["resumed_from_step"] == 12 and b["gate_steps"] == a["gate_steps"] == 16
    assert b["average_adapter_params"] == a["average_adapter_params"] > a["average_live_adapter_params"]
    assert b["average_live_adapter_params"] == pytest.approx(a["average_live_adapter_params"])
    weights = [load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (straight, resumed)]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=0, atol=1e-6)


def test_resuming_from_a_checkpoint_without_gates_is_refused(seeded_bert, tmp_path, capsys):
    common = ("--demo", "--model_name_or_path", seeded_bert, "--max_steps", "4", "--per_device_train_batch_size", "8",
              "--save_strategy", "steps", "--save_steps", "2")
    run_dir = tmp_path / "lora"
    assert run_task("cola", "--method", "lora", *common, "--output_dir", str(run_dir)) == 0
    (run_dir / "metrics.json").unlink()  # as if stopped after the checkpoint
    (run_dir / "config.json").unlink()  # its run unnamed: the method's own state tells
    line = fails_cleanly(capsys, "cola", "--method", "sora", *common, "--output_dir", str(run_dir),
                         "--resume_from_checkpoint", str(run_dir / "checkpoints" / "checkpoint-4"))
    assert f"has no {STATE_FILE}: resume a SoRA run from one of its own checkpoints" in line


def test_a_lambda_that_zeroes_every_gate_is_said(tiny_model, tmp_path, caplog):
    """With --sora_lambda 1e6 the first step's threshold exceeds every gate: the run ends as the base
    model with a trained head. It still finishes (a legitimate, if extreme, setting), and says so."""
    with caplog.at_level(logging.WARNING, logger="adarank"):
        assert run_task("cola", "--demo", "--method", "sora", "--model_name_or_path", tiny_model, "--max_steps", "2",
                        "--sora_lambda", "1e6", "--output_dir", str(tmp_path / "r"), *QUICK) == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["final_total_rank"] == 0
    assert any("every SoRA gate ended at zero" in record.getMessage() for record in caplog.records)
