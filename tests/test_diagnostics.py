"""--diagnostics: update norms, |E|, the orthogonal regulariser and importance quantiles, checked
against PEFT's own delta weights and loss."""

import json

import pytest
import torch
from torch.nn import functional

from adarank.tasks.glue.data import load_glue, tokenize
from adarank.run.diagnostics import orthogonal_regulariser, update_norms
from adarank.tasks.glue.model import load_model
from adarank.modules import locate
from adarank.tasks import TASKS
from conftest import QUICK, build_adapter, read_jsonl, run_task
from fixtures.cli import main_fails_cleanly


def trained(tiny_model, method: str, steps: int = 3):
    task = TASKS["sst2"]
    tokenizer, model, _ = load_model(tiny_model, task, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    peft_model = build_adapter(model, task, method).model
    data = tokenize(load_glue(task, demo=True, max_train_samples=8), tokenizer, 64).train
    batch = tokenizer.pad([{k: r[k] for k in ("input_ids", "attention_mask")} for r in data], return_tensors="pt")
    batch["labels"] = torch.tensor(data["labels"])
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        peft_model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return peft_model, batch


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_update_norms_are_the_norms_of_peft_delta_weights(tiny_model, method):
    model, _ = trained(tiny_model, method)
    expected: dict[str, float] = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            kind = locate(name)[1]
            expected[kind] = expected.get(kind, 0.0) + float(module.get_delta_weight("default").pow(2).sum())
    measured = update_norms(model, "default")["update_norm"]
    assert measured.keys() == expected.keys() and len(measured) == 6
    for kind, value in expected.items():
        assert measured[kind] == pytest.approx(value**0.5, rel=1e-4)
        assert measured[kind] > 0


def test_the_orthogonal_regulariser_is_what_peft_adds_to_the_loss(tiny_model):
    model, batch = trained(tiny_model, "adalora")
    model.peft_config["default"].orth_reg_weight = 1.0
    with torch.no_grad():
        output = model(**batch)
        plain = functional.cross_entropy(output.logits, batch["labels"])
    assert float(output.loss - plain) == pytest.approx(orthogonal_regulariser(model, "default"), rel=1e-4)
    assert orthogonal_regulariser(trained(tiny_model, "lora", steps=0)[0], "default") == 0.0


def test_a_run_writes_diagnostics_from_a_zero_update_to_the_importance_quantiles(tiny_model, tmp_path):
    run_dir = tmp_path / "diag"
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--method", "adalora", "--diagnostics",
                    "--max_steps", "20", "--tinit", "4", "--tfinal", "6", "--delta_t", "2",
                    "--output_dir", str(run_dir), *QUICK) == 0
    records = read_jsonl(run_dir / "diagnostics.jsonl")
    norms = [r for r in records if "update_norm" in r]
    assert [r["step"] for r in norms] == list(range(0, 21))  # at the start, then every logging step (1)
    # AdaLoRA's singular values start at zero, so its first update is exactly zero.
    assert all(v == 0 for v in norms[0]["update_norm"].values()) and norms[-1]["update_norm"]["query"] > 0
    config = json.loads((run_dir / "config.json").read_text())["adapter"]
    assert norms[0]["orth_reg_weighted"] == pytest.approx(config["orth_reg_weight"] * norms[0]["orth_reg"])
    scores = [r for r in records if "importance" in r]
    assert [r["step"] for r in scores] == [5, 14]  # after step tinit, and the last update before T - tfinal
    for quantiles in scores[0]["importance"].values():
        assert len(quantiles) == 7 and quantiles == sorted(quantiles)

    import plot_training
    from run_reader import load_run

    figure = plot_training.diagnostics_figure([load_run(run_dir)])
    (line,) = figure.axes[0].get_lines()
    totals = [sum(v**2 for v in r["update_norm"].values()) ** 0.5 for r in norms]
    assert list(line.get_ydata()) == pytest.approx(totals)
    assert plot_training.main([str(run_dir), "--diagnostics"]) == run_dir / "diagnostics.png"

    import diagnostics_table

    (row,) = diagnostics_table.main([str(run_dir), "--steps", "0", "10"])
    assert row["norm dW @0"] == "0" and float(row["norm dW @20"]) == pytest.approx(totals[-1], rel=1e-2)
    assert float(row["gamma R / loss @10"]) == pytest.approx(
        norms[10]["orth_reg_weighted"] / [h for h in read_jsonl(run_dir / "history.jsonl") if h.get("step") == 10
                                         and "loss" in h][0]["loss"], abs=0.01)
    final = read_jsonl(run_dir / "ranks.jsonl")[-1]["ranks"]
    assert row["final rank by kind"].startswith(f"query {final['0']['query'] + final['1']['query']},")


def test_diagnostics_of_a_run_without_them_is_one_line(tiny_model, tmp_path, capsys):
    import plot_training

    run_dir = tmp_path / "plain"
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--method", "lora", "--max_steps", "2",
                    "--output_dir", str(run_dir), *QUICK) == 0
    assert "train with --diagnostics" in main_fails_cleanly(capsys, plot_training.main, [str(run_dir), "--diagnostics"])


def test_the_lora_like_adalora_start_is_a_named_departure_with_a_zero_first_update(tiny_model, tmp_path):
    run_dir = tmp_path / "lora-init"
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--method", "adalora", "--diagnostics",
                    "--adalora_init", "lora", "--max_steps", "4", "--output_dir", str(run_dir), *QUICK) == 0
    assert json.loads((run_dir / "config.json").read_text())["adapter"]["init"] == "lora"
    norms = [r["update_norm"] for r in read_jsonl(run_dir / "diagnostics.jsonl") if "update_norm" in r]
    assert all(v == 0 for v in norms[0].values())  # B = 0: the function is the base model's
    assert sum(norms[-1].values()) > 0  # and B learns (the first step has lr 0: warm-up)
