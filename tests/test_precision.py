"""bf16 autocast on the CPU: asked for with --bf16, refused with --no_bf16, recorded in config.json;
weights, gradients and AdaLoRA's importance scores stay in fp32."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from adarank import arguments
from adarank import precision as precisions
from adarank.tasks import TASKS
from conftest import QUICK, run_task
from fixtures.cli import fails_cleanly


def config(run_dir):
    return json.loads((run_dir / "config.json").read_text())


def test_adalora_trains_under_bf16_autocast_with_fp32_weights_and_importance(tiny_model, tmp_path):
    """Both machine kinds: with bf16 units this is the fast path; without, autocast is emulated (slow on
    a full model, still correct on a tiny one)."""
    run = tmp_path / "bf16"
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--method", "adalora", "--bf16",
                    "--max_steps", "12", "--output_dir", str(run), "--max_eval_samples", "32", *QUICK,
                    "--save_strategy", "steps", "--save_steps", "5", "--save_total_limit", "3") == 0
    precision = config(run)["precision"]
    # The frozen base weights are held in bf16: 2 layers x 6 adapted matrices, the pooler, and the
    # original head PEFT keeps beside the trained copy.
    emulated = "" if torch.cuda.is_available() or precisions.cpu_has_bf16_units() else \
        f", on a CPU without bf16 units: emulated ({precisions.BF16_EMULATED})"
    assert precision == {"bf16_autocast": True, "chosen_by": "--bf16" + emulated}
    assert config(run)["frozen_linear_weights_bf16"] == 14
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_loss"])  # not NaN
    for name, tensor in load_file(run / "adapter" / "adapter_model.safetensors").items():
        assert tensor.dtype == torch.float32, name
    allocator = torch.load(run / "checkpoints" / "checkpoint-5" / "adalora_allocator.pt", weights_only=False)
    for scores in (allocator["exp_avg_ipt"], allocator["exp_avg_unc"]):
        assert scores and all(t.dtype == torch.float32 for t in scores.values())
    final = [json.loads(line) for line in (run / "ranks.jsonl").read_text().splitlines()][-1]
    assert final["event"] == "final" and final["total_rank"] == final["target_budget"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU defaults; on a GPU its own bf16 support decides")
@pytest.mark.parametrize("units", [True, False], ids=["cpu-with-bf16-units", "cpu-without"])
def test_the_default_precision_follows_the_cpu_and_its_reason_is_recorded(tiny_model, tmp_path, monkeypatch, units):
    """Both machine kinds, whichever this one is: bf16 autocast by default where the CPU has bf16
    units (GLUE, where it is measured), fp32 elsewhere; --no_bf16 always wins."""
    monkeypatch.setattr(precisions, "cpu_kind", lambda: "avx512_bf16" if units else "other")
    run = tmp_path / "default"
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--max_steps", "2",
                    "--output_dir", str(run), "--max_eval_samples", "16", *QUICK) == 0
    precision = config(run)["precision"]
    assert precision["bf16_autocast"] == units
    assert config(run)["arguments"]["training"]["bf16"] == precision["bf16_autocast"]
    if units:  # the kind and the measurement on that kind
        assert precision["chosen_by"].startswith("default: this CPU has bf16 units (avx512_bf16: bf16 ")
        assert precision["chosen_by"].endswith("measured on an AVX512-BF16 CPU without AMX)")
    else:
        assert precision["chosen_by"].startswith("default: fp32 (this CPU has no bf16 units: bf16 would be emulated; ")
        assert precision["chosen_by"].endswith("measured on an AVX2 CPU without bf16 units)")
    off = tmp_path / "off"
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--max_steps", "2", "--no_bf16",
                    "--output_dir", str(off), "--max_eval_samples", "16", *QUICK) == 0
    assert config(off)["precision"] == {"bf16_autocast": False, "chosen_by": "--no_bf16"}
    assert config(off)["frozen_linear_weights_bf16"] == 0
    assert not config(off)["arguments"]["training"]["bf16"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU defaults; on a GPU its own bf16 support decides")
def test_summarization_stays_fp32_by_default_until_bf16_is_measured_for_it(monkeypatch):
    monkeypatch.setattr(precisions, "cpu_kind", lambda: "amx")
    summaries, glue = TASKS["cnndailymail"], TASKS["cola"]
    assert arguments.run_defaults(glue, demo=True)["bf16"] and not arguments.run_defaults(summaries, demo=True)["bf16"]
    training = SimpleNamespace(bf16=False)
    assert precisions.precision_note(training, set(), summaries)["chosen_by"] == (
        "default: fp32 (bf16 autocast on the CPU is not yet measured against fp32 for summarization; "
        "--bf16 asks for it)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU kinds; on a GPU its own bf16 support decides")
@pytest.mark.parametrize("kind", ["amx", "avx512_bf16", "other"])
def test_bf16_asked_for_on_a_cpu_without_bf16_units_is_named_emulated(monkeypatch, caplog, kind):
    """--bf16 on an AVX2-only CPU trained 24x slower than its fp32 default without a word: the run warns
    once and config.json says so; on CPUs with bf16 units --bf16 is recorded as it is."""
    monkeypatch.setattr(precisions, "cpu_kind", lambda: kind)
    with caplog.at_level("WARNING", logger="adarank"):
        note = precisions.precision_note(SimpleNamespace(bf16=True), {"bf16"}, TASKS["sst2"])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if kind == "other":
        assert note["chosen_by"] == f"--bf16, on a CPU without bf16 units: emulated ({precisions.BF16_EMULATED})"
        assert warnings == [f"--bf16 on a CPU without bf16 units: bf16 is emulated here ({precisions.BF16_EMULATED}); "
                            "without --bf16 this CPU trains in fp32"]
    else:
        assert note["chosen_by"] == "--bf16" and warnings == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU defaults; on a GPU its own bf16 support decides")
def test_fp16_asked_for_on_a_cpu_whose_default_is_bf16_replaces_the_default(tiny_model, tmp_path, monkeypatch):
    """--fp16 where bf16 is the default ended in "At most one of fp16 and bf16 can be True": the
    default yields to the precision the user named, and config.json says who chose."""
    monkeypatch.setattr(precisions, "cpu_kind", lambda: "amx")
    run = tmp_path / "fp16"
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--max_steps", "2", "--fp16",
                    "--output_dir", str(run), "--max_eval_samples", "16", *QUICK) == 0
    assert config(run)["precision"] == {"bf16_autocast": False, "fp16_autocast": True,
                                        "chosen_by": "--fp16 (fp16 autocast instead of the bf16 default)"}
    monkeypatch.setattr(precisions, "cpu_kind", lambda: "other")  # fp32 by default: it said "the bf16 default"
    plain = tmp_path / "fp16-plain"
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--max_steps", "2", "--fp16",
                    "--output_dir", str(plain), "--max_eval_samples", "16", *QUICK) == 0
    assert config(plain)["precision"]["chosen_by"] == "--fp16 (fp16 autocast instead of the fp32 default)"
    monkeypatch.setattr(precisions, "cpu_kind", lambda: "amx")
    kept = tmp_path / "fp16-false"  # --fp16 false asks for nothing: the default stays
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--max_steps", "2", "--fp16", "false",
                    "--output_dir", str(kept), "--max_eval_samples", "16", *QUICK) == 0
    assert config(kept)["precision"]["bf16_autocast"] and "fp16_autocast" not in config(kept)["precision"]


def test_bf16_and_no_bf16_together_are_refused_in_one_line(tiny_model, tmp_path, capsys):
    line = fails_cleanly(capsys, "sst2", "--demo", "--model_name_or_path", tiny_model, "--bf16", "--no_bf16",
                         "--output_dir", str(tmp_path / "run"))
    assert line == "error: --bf16 and --no_bf16 contradict each other: give one"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_frozen_weights_held_in_bf16_change_no_value_under_autocast(tiny_model, method):
    """Autocast rounds a fp32 weight to bf16 at every use; holding it in bf16 rounds it once, the same way:
    the logits and the adapters' gradients are bit for bit those of the fp32-held model."""
    from conftest import build_adapter, pad_batch
    from adarank.methods.fused import fuse_adapter_forward
    from adarank.precision import hold_frozen_weights
    from adarank.tasks.glue.data import load_glue, tokenize
    from adarank.tasks.glue.model import load_model

    task = TASKS["sst2"]
    models = []
    for _ in range(2):  # built twice from the same seed (a deep copy would share AdaLoRA's patched forward)
        torch.manual_seed(0)
        tokenizer, model, _ = load_model(tiny_model, task)
        models.append(build_adapter(model, task, method).model)
        fuse_adapter_forward(models[-1])
    held = models[1]
    assert hold_frozen_weights(held, torch.bfloat16) == 14
    assert all(p.dtype == torch.float32 for n, p in held.named_parameters() if p.requires_grad)
    batch = pad_batch(tokenizer, tokenize(load_glue(task, demo=True, max_train_samples=8), tokenizer, 64).train)
    results = []
    for model in models:
        model.train()
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(**batch).logits
        logits.float().square().sum().backward()
        results.append((logits, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=0, atol=0, msg=name)
