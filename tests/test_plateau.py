"""The plateau rank-growth method of src/custom, through adarank's extension points."""

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from adarank.errors import UsageError

from adarank.arguments import AdapterArguments
from adarank.tasks.glue.data import load_glue, tokenize
from adarank.methods import AdapterRequest
from adarank.tasks.glue.model import load_model
from adarank.tasks import TASKS
from conftest import QUICK, build_adapter, demo_dev_inputs, predicted_labels, read_jsonl, stop_and_resume
from fixtures.cli import fails_cleanly, run_task
from fixtures.paths import ROOT
from custom.plateau import PlateauArguments, PlateauLora, register
from custom.plateau.growth import whitened_rows

register()  # --method plateau, as the entry scripts in src/custom make it known


def run_plateau(task, *argv) -> int:
    return run_task(task, *argv, method="plateau")


def build(tiny_model, **plateau):
    task = TASKS["sst2"]
    tokenizer, model, _ = load_model(tiny_model, task, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    built = build_adapter(model, task, PlateauLora(), AdapterArguments(budget="large"),
                          method_arguments=PlateauArguments(**plateau))
    data = tokenize(load_glue(task, demo=True, max_train_samples=8), tokenizer, 64).train
    batch = tokenizer.pad([{k: r[k] for k in ("input_ids", "attention_mask")} for r in data], return_tensors="pt")
    batch["labels"] = torch.tensor(data["labels"])
    return built, batch


def train_a_little(model, batch, steps=3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


@pytest.mark.parametrize("init", ["lora", "gradient", "whitened"])
def test_growth_preserves_the_function_and_the_adam_moments(tiny_model, init):
    built, batch = build(tiny_model, growth_init=init)
    model, growth = built.model, built.callbacks[0]
    model.train()
    optimizer = train_a_little(model, batch)
    if init != "lora":
        growth.capture.start()
        model(**batch).loss.backward()
        growth.capture.stop()
        optimizer.zero_grad()
    name = next(iter(growth.layers))
    layer = growth.layers[name]
    a, b = growth._lora_params(layer)
    moments = optimizer.state[a]["exp_avg"].clone()
    old_rows = a.detach().clone()
    model.eval()
    with torch.no_grad():
        before = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    for module in list(growth.layers):
        growth.resize(module, 6, optimizer)
    with torch.no_grad():
        after = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert a.shape == (6, layer.in_features) and b.shape == (layer.out_features, 6)
    assert layer.scaling["default"] == pytest.approx(16 / 2)  # alpha / r0, unchanged
    state = optimizer.state[a]["exp_avg"]
    assert torch.equal(state[:2], moments) and not state[2:].any()
    if init == "gradient":  # new directions lie outside the span of the old rows
        assert (a.detach()[2:] @ old_rows.T).abs().max() < 1e-4
    if init == "whitened":  # new features are uncorrelated with the old, with a default row's energy
        second_moment = growth.capture.second_moment(name).float()
        new_rows = a.detach()[2:]
        cross = new_rows @ second_moment @ old_rows.T
        energy = torch.diag(new_rows @ second_moment @ new_rows.T)
        old_energy = torch.diag(old_rows @ second_moment @ old_rows.T)
        assert cross.abs().max() < 1e-3 * (energy.max() * old_energy.max()).sqrt()
        torch.testing.assert_close(energy, torch.full_like(energy, float(torch.trace(second_moment)) / (3 * a.shape[1])),
                                   rtol=1e-3, atol=0)
    model.train()
    train_a_little(model, batch, steps=1)  # the optimizer carries on with the grown shapes
    assert model.peft_config["default"].rank_pattern[name] == 6


def anisotropic_inputs(width: int, seed: int = 0):
    """(sum of x x^T, count, C) of inputs whose second moment spans two orders of magnitude."""
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(width, width, generator=generator, dtype=torch.float64))
    scales = torch.logspace(0, -1, width, dtype=torch.float64)  # energies from 1 to 1e-2
    x = torch.randn(400, width, generator=generator, dtype=torch.float64) @ (rotation * scales).T
    return x.T @ x, 400, x.T @ x / 400


def test_whitened_rows_lower_the_loss_most_per_unit_of_feature_energy(tiny_model):
    from scipy.linalg import eigh, null_space

    built, _ = build(tiny_model, growth_init="whitened")
    growth = built.callbacks[0]
    name = next(iter(growth.layers))
    a = growth._lora_params(growth.layers[name])[0]
    old = a.detach().double()
    total, count, second_moment = anisotropic_inputs(a.shape[1])
    out = growth.layers[name].out_features
    gradient = torch.randn(out, a.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rows = whitened_rows(a, gradient, total / count, 3).double()
    moments = rows @ second_moment @ torch.cat([old, rows]).T
    target = float(torch.trace(second_moment)) / (3 * a.shape[1])  # a PEFT default row's E[(a.x)^2]
    torch.testing.assert_close(moments[:, 2:], target * torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-6 * target)
    assert moments[:, :2].abs().max() < 1e-6 * target  # uncorrelated with the old features
    # The first row maximises |G a|^2 / E[(a.x)^2] among rows uncorrelated with the old ones:
    # the top generalised eigenvalue, computed here independently.
    free = torch.from_numpy(null_space((old @ second_moment).numpy()))
    best = eigh((free.T @ gradient.T @ gradient @ free).numpy(), (free.T @ second_moment @ free).numpy(),
                eigvals_only=True)[-1]
    gain = (gradient @ rows[0]).pow(2).sum() / (rows[0] @ second_moment @ rows[0])
    assert float(gain) == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("init", ["gradient", "whitened"])
def test_a_rank_one_gradient_still_gives_independent_rows(tiny_model, init):
    built, _ = build(tiny_model, growth_init=init)
    growth = built.callbacks[0]
    name = next(iter(growth.layers))
    a = growth._lora_params(growth.layers[name])[0]
    total, count, second_moment = anisotropic_inputs(a.shape[1])
    direction = torch.randn(a.shape[1], dtype=torch.float64)
    growth.capture.inputs[name] = [total, count]
    growth.capture.gradients[name] = torch.outer(torch.randn(growth.layers[name].out_features, dtype=torch.float64),
                                                 direction)
    rows = growth._new_rows(name, a, 4).double()
    assert torch.isfinite(rows).all()
    metric = second_moment if init == "whitened" else torch.eye(a.shape[1], dtype=torch.float64)
    everything = torch.cat([a.detach().double(), rows])
    gram = everything @ metric @ everything.T
    scale = torch.diag(gram).sqrt()
    cosines = gram / torch.outer(scale, scale)  # old and new rows: no two share a direction
    torch.testing.assert_close(cosines[2:, :], torch.eye(6, dtype=torch.float64)[2:, :], rtol=0, atol=1e-6)


def test_importance_growth_spends_the_event_budget(tiny_model):
    built, batch = build(tiny_model, grow_where="importance", growth_budget=3, delta_r=2)
    growth = built.callbacks[0]
    growth.importance = {name: float(i) for i, name in enumerate(growth.layers)}
    growth.grow(step=5, optimizer=None, loss=1.0)
    ranks = list(growth.ranks.values())
    assert sum(ranks) == 12 * 2 + 3 and ranks[-1] == 4 and ranks[-2] == 3  # the two most important


def test_two_dev_splits_make_one_evaluation_judged_on_their_mean(tiny_model):
    """MNLI's matched and mismatched losses reach on_evaluate one split at a time. Flat losses (1.0
    and 1.1) are one plateau evaluation per step: growth after the patience of 2, at step 300. Judged
    split by split, 1.1 after 1.0 counted as no improvement and growth came at step 200."""
    task = TASKS["mnli"]
    _, model, _ = load_model(tiny_model, task)
    built = build_adapter(model, task, PlateauLora(), AdapterArguments(budget="large"),
                          method_arguments=PlateauArguments(plateau_patience=2, plateau_min_delta=0.0))
    growth = built.callbacks[0]
    assert growth.splits == 2
    for step in (100, 200, 300):
        state = SimpleNamespace(global_step=step, max_steps=1000)
        growth.on_evaluate(None, state, None, metrics={"eval_matched_loss": 1.0, "eval_matched_accuracy": 0.5})
        assert [e["step"] for e in growth.events] == ([300] if step > 300 else [])  # not before both reported
        growth.on_evaluate(None, state, None, metrics={"eval_mismatched_loss": 1.1})
    assert [e["step"] for e in growth.events] == [300] and growth.events[0]["dev_loss"] == pytest.approx(1.05)


def test_a_run_grows_on_plateaus_logs_it_and_reloads(tiny_model, tmp_path):
    run_dir = tmp_path / "p"
    # min_delta 1e9: no evaluation after the first counts as an improvement, so every
    # evaluation (patience 1) after the first grows ranks 2 -> 4 -> 6, but not the one at the
    # last step: no step would train what it added.
    assert run_plateau("sst2", "--demo", "--model_name_or_path", tiny_model, "--max_steps", "16",
                       "--eval_every", "4", "--plateau_patience", "1", "--plateau_min_delta", "1e9",
                       "--output_dir", str(run_dir), *QUICK) == 0
    records = read_jsonl(run_dir / "ranks.jsonl")
    assert [(r["step"], r["event"], r["total_rank"]) for r in records] == [
        (0, "initial", 24), (8, "grow", 48), (12, "grow", 72), (16, "final", 72)]
    evaluated = [h["step"] for h in read_jsonl(run_dir / "history.jsonl") if "eval_loss" in h]
    assert evaluated == [4, 8, 12, 16]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["adapter_params"] == metrics["final_adapter_params"]  # counted after training
    per_rank = metrics["final_adapter_params"] // 6
    assert metrics["average_adapter_params"] == pytest.approx(per_rank * (2 * 8 + 4 * 4 + 6 * 4) / 16)
    assert json.loads((run_dir / "config.json").read_text())["budget"] == "large"  # compared with LoRA r=8
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert set(config["rank_pattern"].values()) == {6} and set(config["alpha_pattern"].values()) == {48.0}

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    task = TASKS["sst2"]
    tokenizer, _, _ = load_model(tiny_model, task)
    inputs = demo_dev_inputs(tokenizer, task, 16)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    with torch.no_grad():
        predicted = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()(**inputs).logits.argmax(-1)
    assert predicted.tolist() == [int(p) for p in predicted_labels(run_dir, 16)]


def test_a_resumed_run_continues_the_same_schedule(tiny_model, tmp_path):
    common = ("sst2", "--demo", "--model_name_or_path", tiny_model, "--max_steps", "16", "--eval_every", "4",
              "--plateau_patience", "1", "--plateau_min_delta", "1e9", "--per_device_train_batch_size", "8",
              "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "10", "--save_total_limit", "2",
              "--growth_init", "whitened", "--gradient_window", "2", "--seed", "5")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_plateau(*common, "--output_dir", str(straight)) == 0
    stop_and_resume(run_plateau, common, resumed, step=10)  # the checkpoint after the growth at step 8
    assert [r["total_rank"] for r in read_jsonl(resumed / "ranks.jsonl")] == [24, 48, 72, 72]
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert b["average_adapter_params"] == a["average_adapter_params"]
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-3)


@pytest.mark.parametrize("flags, message", [
    (("--r0", "10"), "--r0 10 must be between 1 and --r_max 8"),
    (("--delta_r", "0"), "--delta_r 0 must be at least 1"),
    (("--plateau_patience", "0"), "--plateau_patience 0 must be at least 1"),
    # Growth out of reach: the run trained fixed LoRA r0 without a word.
    (("--plateau_patience", "7", "--eval_every", "1"), "ranks can first grow after step 8 ((--plateau_patience 7 + "
     "1) x --eval_every 1), and this run has 8 optimizer steps, so it trains fixed LoRA r0: lower --plateau_patience"),
    (("--eval_every", "4"), "ranks can first grow after step 12"),
    (("--eval_every", "500"), "--eval_every 500 does not fit this run of 8 optimizer steps"),
    (("--grow_where", "importance", "--growth_budget", "0"), "--growth_budget 0 must be at least 1"),
    (("--importance_beta", "5", "--grow_where", "importance", "--eval_every", "1"),
     "--importance_beta 5.0 must lie strictly between 0 and 1"),
    (("--r_max", "20"), "--r_max 20 is more than the 16 singular directions of the smallest adapted matrix"),
    (("--plateau_min_delta", "-1"), "--plateau_min_delta -1 must be >= 0"),
    # A flag the chosen growth would not read is refused, not ignored.
    (("--gradient_window", "0"), "--gradient_window is read only with --growth_init gradient or whitened"),
    (("--growth_budget", "3"), "--growth_budget is read only with --grow_where importance"),
    (("--importance_beta", "0.5"), "--importance_beta is read only with --grow_where importance"),
    # Flags of other methods are refused, not ignored: the shared ones plateau does not read, and on this
    # script (which adds plateau's own flags) plateau's with another method.
    (("--init_r", "4", "--target_r", "8"),
     "--init_r and --target_r are not plateau's (its ranks: --r0 and --r_max, or --budget): drop them"),
    (("--method", "adalora", "--r0", "4"), "--r0 is plateau's, not AdaLoRA's: drop it, or use --method plateau"),
])
def test_impossible_schedules_are_refused(tiny_model, tmp_path, capsys, flags, message):
    line = fails_cleanly(capsys, "cola", "--demo", "--model_name_or_path", tiny_model, "--max_steps", "8",
                         "--output_dir", str(tmp_path / "x"), *flags, method="plateau")
    assert message in line
    assert not (tmp_path / "x").exists()


def planned(total_step, steps_per_epoch, **plateau):
    request = AdapterRequest(TASKS["cola"], AdapterArguments(budget="large"), total_step=total_step,
                             steps_per_epoch=steps_per_epoch,
                             method_arguments=PlateauArguments(**plateau))
    return PlateauLora().plan(request)


@pytest.mark.parametrize("total_step, steps_per_epoch, eval_every, gradient_window", [
    (64, 16, 4, 4),  # the demo: 512 examples, batch 32, 4 epochs
    (804, 268, 67, 10),  # CoLA, 3 epochs
    (8, 2, 1, 1),  # at least every step
    (10, 268, 10, 10),  # --max_steps shorter than an epoch: at most once per run
    (40, None, 10, 10),  # epoch length unknown: a quarter of the run
])
def test_eval_every_and_gradient_window_default_to_the_run(total_step, steps_per_epoch, eval_every, gradient_window):
    plan = planned(total_step, steps_per_epoch)
    assert (plan.eval_every, plan.gradient_window) == (eval_every, gradient_window)
    if steps_per_epoch:
        assert eval_every == min(math.ceil(steps_per_epoch / 4), total_step)


def test_growth_out_of_reach_of_the_default_schedule_is_said(caplog):
    """A short trial run under the defaults is not refused, but the log says it cannot grow."""
    with caplog.at_level("WARNING", logger="adarank"):
        planned(2, 2)  # evaluations every step, patience 2: the first growth would come after step 3
    assert "ranks can first grow after step 3 ((--plateau_patience 2 + 1) x --eval_every 1), and this run has 2 " \
           "optimizer steps, so it trains fixed LoRA r0; lower" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="adarank"):
        planned(64, 16)
    assert "can first grow" not in caplog.text


def test_growth_is_not_judged_out_of_reach_where_the_trainer_evaluates_too(tiny_model, tmp_path):
    """On a plain GLUE script (--eval_strategy epoch) the Trainer's evaluations reach the growth callback as
    well, so a patience the method's own evaluations cannot reach may still be reached."""
    assert run_task("cola", "--demo", "--model_name_or_path", tiny_model, "--method", "plateau", "--max_steps", "8",
                    "--eval_every", "1", "--plateau_patience", "7", "--output_dir", str(tmp_path / "run"), *QUICK) == 0


def test_explicit_eval_every_and_gradient_window_are_kept_and_checked():
    plan = planned(804, 268, eval_every=40, gradient_window=3, growth_init="whitened")
    assert (plan.eval_every, plan.gradient_window) == (40, 3)
    assert planned(804, 268, eval_every=5).gradient_window == 5  # min(10, eval_every)
    with pytest.raises(UsageError, match="--eval_every 900 does not fit this run of 804 optimizer steps.*out for 67"):
        planned(804, 268, eval_every=900)
    with pytest.raises(UsageError, match="--gradient_window 12 must be from 1 to --eval_every 4"):
        planned(64, 16, gradient_window=12, growth_init="gradient")


def test_the_default_growth_budget_is_planned_before_training(tiny_model, tmp_path):
    run_dir = tmp_path / "imp"
    assert run_plateau("sst2", "--demo", "--model_name_or_path", tiny_model, "--max_steps", "8", "--eval_every", "2",
                       "--grow_where", "importance", "--output_dir", str(run_dir), *QUICK) == 0
    plan = json.loads((run_dir / "config.json").read_text())["adapter"]
    # 12 adapted matrices x delta_r 2 / 3; the explicit --eval_every is kept, the window follows it.
    assert (plan["growth_budget"], plan["eval_every"], plan["gradient_window"]) == (8, 2, 2)
    built, _ = build(tiny_model, grow_where="importance")
    growth = built.callbacks[0]
    growth.grow(step=2, optimizer=None, loss=1.0)
    assert sum(growth.ranks.values()) == 12 * 2 + growth.plan.growth_budget == 32


def test_the_plateau_scripts_take_the_own_flags_of_another_method_they_are_given(tiny_model, tmp_path):
    """src/custom/*.py --method sora --sora_lambda ...: SoRA's flags were unknown there (only plateau's joined)."""
    run_dir = tmp_path / "sora"
    assert run_plateau("cola", "--demo", "--model_name_or_path", tiny_model, "--max_steps", "2", "--method", "sora",
                       "--sora_lambda", "0.001", "--output_dir", str(run_dir), *QUICK) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == "sora" and config["adapter"]["sora_lambda"] == 0.001
    # the scripts' own defaults are plateau's: SoRA took budget large and a Trainer that never evaluated
    assert config["budget"] == "small" and config["arguments"]["training"]["eval_strategy"] != "no"


def test_the_plain_demo_script_grows(tiny_model, tmp_path):
    """src/custom/glue-cola.py --demo with no plateau flags evaluates 4 times an epoch and grows."""
    run_dir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, str(ROOT / "src" / "custom" / "glue-cola.py"), "--demo", "--model_name_or_path", tiny_model,
         "--output_dir", str(run_dir)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((run_dir / "config.json").read_text())
    steps_per_epoch = math.ceil(config["train_examples"] / 32)
    assert config["total_step"] == 4 * steps_per_epoch  # the demo's 4 epochs
    assert config["adapter"]["eval_every"] == math.ceil(steps_per_epoch / 4)
    evaluated = [h["step"] for h in read_jsonl(run_dir / "history.jsonl") if "eval_loss" in h]
    assert evaluated == list(range(config["adapter"]["eval_every"], config["total_step"] + 1,
                                   config["adapter"]["eval_every"]))
    grown = [r for r in read_jsonl(run_dir / "ranks.jsonl") if r["event"] == "grow"]
    assert grown and grown[0]["total_rank"] > 12 * 2
