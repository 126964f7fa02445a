"""QLoRA and QLoRA + AdaLoRA on a 4-bit NF4 base (bitsandbytes' CPU backend), memory accounting,
and the memory planner (adarank.memory_plan) against real models."""

import csv
import io
import json

import pytest
import torch
from torch import nn

import memory_calculation
from adarank.errors import UsageError
from adarank.memory import base_model_bytes, parameter_counts, quantized_bits_per_parameter, stored_numel
from adarank.memory_plan import architecture, model_skeleton, plan, plan_model, planned_methods
from adarank.quantization import is_linear_4bit
from adarank.tasks import TASKS
from adarank.tasks.glue.data import load_glue, tokenize
from adarank.tasks.glue.model import load_model
from conftest import (QUICK, assert_adapter_gives_the_run_predictions, build_adapter, pad_batch, reloaded_logits,
                      run_task)
from fixtures.cli import error_line, fails_cleanly, main_fails_cleanly
from fixtures.paths import ROOT, SRC

CONFIGS = ROOT / "analysis" / "configs"
MB = 2**20


@pytest.fixture(scope="module")
def embedded_4bit():
    return load_model(None, TASKS["sst2"], load_in_4bit=True)[1]


def test_the_base_is_nf4_with_the_head_left_in_full_precision(embedded_4bit):
    kinds = {name: type(m).__name__ for name, m in embedded_4bit.named_modules()}
    assert kinds["bert.encoder.layer.0.attention.self.query"] == "Linear4bit"
    assert kinds["bert.pooler.dense"] == "Linear" and kinds["classifier"] == "Linear"
    state = embedded_4bit.bert.encoder.layer[0].attention.self.query.weight.quant_state
    assert state.quant_type == "nf4" and state.nested and state.blocksize == 64


def test_quantised_weights_cost_at_most_4_2_bits_with_their_constants(embedded_4bit):
    bits = quantized_bits_per_parameter(embedded_4bit)
    assert 4.127 <= bits <= 4.2


def test_measured_bytes_agree_with_the_footprint_and_the_analytic_plan(embedded_4bit):
    measured = base_model_bytes(embedded_4bit)
    parts = measured["component_bytes"]
    # get_memory_footprint counts parameters and buffers; the quantisation constants are neither.
    assert measured["total_bytes"] - parts["quantization_constants"] == embedded_4bit.get_memory_footprint()
    planned = {p.method: p.base_bytes for p in plan_model(None, "small", "float32")}
    assert planned["qlora"] == pytest.approx(measured["total_bytes"], rel=0.01)
    fp32 = load_model(None, TASKS["sst2"])[1]
    assert planned["lora"] == pytest.approx(fp32.get_memory_footprint(), rel=1e-6)


def test_the_plan_quantises_what_the_4bit_loader_quantises(embedded_4bit):
    arch = architecture(model_skeleton(None, 2))
    loaded = [m for m in embedded_4bit.modules() if is_linear_4bit(m)]
    assert arch.quantized_params == sum(stored_numel(m.weight) for m in loaded)
    assert base_model_bytes(embedded_4bit)["component_bytes"]["linear_weights"] == 0  # the head is apart
    assert arch.parameters["head"] == sum(p.numel() for n, p in embedded_4bit.named_parameters()
                                          if n.startswith(("bert.pooler.", "classifier.")))


@pytest.mark.parametrize("config", ["bert-base-uncased.json", "deberta-v3-base.json"])
def test_the_plan_reads_shapes_from_a_config_alone(config):
    arch = architecture(model_skeleton(str(CONFIGS / config), 2))
    assert len(arch.adapted) == 12 * 6
    plans = {p.method: p for p in (plan(arch, method, "large") for method in planned_methods())}
    assert list(plans) == ["lora", "adalora", "qlora", "qadalora", "increlora", "sora", "dora", "qdora", "pissa",
                           "rslora", "qrslora", "eva"]
    # LoRA r=8 on all six matrices of BERT-base: 8 * (4 * (768 + 768) + 2 * (768 + 3072)) * 12 layers
    assert plans["lora"].saved_adapter_params == 8 * (4 * 1536 + 2 * 3840) * 12
    assert plans["qlora"].saved_adapter_params == plans["lora"].saved_adapter_params
    # The fp32 plan is the real model's footprint, built from the same config with random weights.
    from transformers import AutoConfig, AutoModelForSequenceClassification

    document = json.loads((CONFIGS / config).read_text())
    real = AutoModelForSequenceClassification.from_config(
        AutoConfig.for_model(document.pop("model_type"), num_labels=2, **document))
    assert plans["lora"].base_bytes == pytest.approx(real.get_memory_footprint(), rel=1e-9)
    linear = sum(m.weight.numel() for n, m in real.named_modules()
                 if isinstance(m, nn.Linear) and "pooler" not in n and "classifier" not in n)
    assert plans["qlora"].unquantized_percent == pytest.approx(100 * (1 - linear / real.num_parameters()))
    assert plans["qlora"].base_bytes < plans["lora"].base_bytes


def test_the_planning_command_prints_the_library_plan(capsys):
    memory_calculation.main(["--plan", "--budget", "large", "--csv"])
    rows = {row["method"]: row for row in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    for p in plan_model(None, "large"):
        assert rows[p.method]["adapter params (training)"] == f"{p.train_adapter_params:,}"
        assert rows[p.method]["training MB (no activations)"] == f"{p.training_bytes / MB:.2f}"


def test_the_readme_plan_of_a_hub_model_works_offline_from_its_stored_shapes(capsys, monkeypatch):
    """README's `memory_calculation.py --model_name_or_path microsoft/deberta-v3-base` refused offline;
    analysis/configs/ holds that model's shapes, so the plan is made from them, saying so."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: offline whatever the network
    memory_calculation.main(["--model_name_or_path", "microsoft/deberta-v3-base", "--budget", "large", "--csv"])
    out, err = capsys.readouterr()
    assert err.strip() == ("note: the hub gives no config for microsoft/deberta-v3-base here: planned from "
                           "analysis/configs/deberta-v3-base.json, its stored shapes")
    rows = {row["method"]: row for row in csv.DictReader(io.StringIO(out))}
    stored = {p.method: p for p in plan_model(str(CONFIGS / "deberta-v3-base.json"), "large")}
    assert rows["lora"]["adapter params (training)"] == f"{stored['lora'].train_adapter_params:,}"


@pytest.mark.parametrize("argv, message", [
    (["--plan", "--budget", "huge"], "unknown budget 'huge': choose one of small, large"),
    (["--plan", "--dtype", "float8"], "unknown dtype 'float8' for the unquantised tensors"),
    (["--model_name_or_path", "no/such-model-here"], "cannot read a model config from 'no/such-model-here'"),
    (["--model_name_or_path", "GPT2"], "GPT2ForSequenceClassification has none of the six adaptable matrices"),
])
def test_the_planning_command_refuses_in_one_line(argv, message, tmp_path, capsys):
    gpt2 = tmp_path / "gpt2.json"  # Conv1D layers: nothing this project adapts
    gpt2.write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2, "vocab_size": 50,
                                "pad_token_id": 0}))
    line = main_fails_cleanly(capsys, memory_calculation.main, [str(gpt2) if a == "GPT2" else a for a in argv],
                              one_line=True)
    assert message in line


def test_qadalora_trains_prunes_and_reloads_onto_a_fresh_4bit_base(tiny_model, tmp_path):
    run_dir = tmp_path / "q"
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--method", "qadalora",
                    "--max_steps", "12", "--output_dir", str(run_dir), *QUICK) == 0
    memory = json.loads((run_dir / "memory.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    final = [json.loads(line) for line in (run_dir / "ranks.jsonl").read_text().splitlines()][-1]
    assert final["total_rank"] == 2 * 12
    assert memory["base"]["component_bytes"]["quantized_linear_weights"] > 0
    adapter = memory["adapter"]
    # The saved adapter holds the pruned ranks, and its file is the tensors plus a header.
    assert adapter["adapter_file_bytes"] == adapter["adapter_tensor_bytes"] + adapter["adapter_header_bytes"]
    assert adapter["saved_adapter_params"] < metrics["adapter_params"]
    assert metrics["base_mb"] == pytest.approx(memory["base"]["total_bytes"] / 2**20)

    task = TASKS["sst2"]
    tokenizer, base, _ = load_model(tiny_model, task, load_in_4bit=True)
    assert_adapter_gives_the_run_predictions(run_dir, tokenizer, base, task, 16)


@pytest.mark.parametrize("method", ["lora", "adalora", "qadalora"])
def test_a_saved_adapter_reloads_to_the_same_logits(tiny_model, tmp_path, method):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from adarank.arguments import AdapterArguments
    from adarank.methods import get_method

    task, chosen = TASKS["sst2"], get_method(method)
    tokenizer, model, _ = load_model(tiny_model, task, load_in_4bit=chosen.quantized)
    data = tokenize(load_glue(task, demo=True, max_train_samples=64, max_eval_samples=16), tokenizer, 64)
    built = build_adapter(model, task, chosen, AdapterArguments(method=method), total_step=8)
    # The memory planner counts the parameters this method really trains.
    planned = plan(architecture(model_skeleton(tiny_model, 2)), method, "small")
    trained = parameter_counts(built.model, 0)
    assert (trained.adapter_params, trained.trainable_params) == (
        planned.train_adapter_params, planned.trainable_params)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=1,
                             learning_rate=1e-2, report_to="none", save_strategy="no")
    Trainer(model=built.model, args=args, train_dataset=data.train, data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=built.callbacks).train()
    inputs = pad_batch(tokenizer, data.dev["validation"])
    built.model.eval()
    with torch.no_grad():
        logits = built.model(**inputs).logits
    built.model.save_pretrained(str(tmp_path / "adapter"))
    fresh = load_model(tiny_model, task, load_in_4bit=chosen.quantized)[1]
    torch.testing.assert_close(reloaded_logits(fresh, tmp_path / "adapter", inputs), logits, rtol=1e-5, atol=1e-6)
    if method != "lora":  # the pruned ranks came back with it
        assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["rank_pattern"]


def test_qlora_through_the_src_qlora_script(tiny_model, tmp_path):
    import subprocess
    import sys

    script = SRC / "src_qlora" / "glue-cola.py"
    done = subprocess.run([sys.executable, str(script), "--demo", "--model_name_or_path", tiny_model,
                           "--max_steps", "3", "--output_dir", str(tmp_path / "c"), *QUICK],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["method"] == "qlora"
    assert json.loads((tmp_path / "c" / "memory.json").read_text())["quantized_bits_per_parameter"] > 4


@pytest.mark.parametrize("method", ["lora", "pissa"])
def test_the_src_qlora_scripts_refuse_a_full_precision_method(tiny_model, tmp_path, method):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(SRC / "src_qlora" / "glue-cola.py"), "--demo", "--method", method,
                           "--model_name_or_path", tiny_model, "--max_steps", "2", "--output_dir", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=600)
    line = error_line(done.returncode, done.stderr, one_line=True)
    assert line.startswith(f"error: --method {method} trains a full-precision base, and this script quantises")
    assert "qlora, qadalora" in line and line.endswith(f"or run {method} with src/glue-cola.py")
    assert not (tmp_path / "c").exists()


def test_the_src_qlora_scripts_name_what_they_cannot_take(tiny_model, tmp_path, capsys):
    """--method none was told it "trains a full-precision base"; bitsandbytes' loading flags of other QLoRA
    scripts were taken for typos of --bnb_4bit_compute_dtype."""
    from adarank.four_bit_entry import main_four_bit

    argv = ["--demo", "--model_name_or_path", tiny_model, "--output_dir", str(tmp_path / "q")]
    with pytest.raises(SystemExit) as stop:
        main_four_bit("cnndailymail", "src/nlu-cnndailymail.py", [*argv, "--method", "none"])
    assert error_line(stop.value.code, capsys.readouterr().err, one_line=True).startswith(
        "error: --method none trains no adapter, so there is no base to quantise for: choose one of qlora")
    for flag, value, why in (("--bnb_4bit_quant_type", "fp4", "the 4-bit methods quantise to NF4"),
                             ("--bnb_4bit_use_double_quant", "false", "quantisation constants too"),
                             ("--load_in_4bit", "true", "a 4-bit base is a method's: give --method qlora")):
        with pytest.raises(SystemExit) as stop:
            main_four_bit("cola", "src/glue-cola.py", [*argv, flag, value])
        line = error_line(stop.value.code, capsys.readouterr().err, one_line=True)
        assert f"unknown flag {flag} (" in line and why in line and "did you mean" not in line
    assert not (tmp_path / "q").exists()


def test_merging_into_a_4bit_base_is_refused(tiny_model, tmp_path, capsys):
    assert "--merge_adapter cannot merge into a 4-bit base" in fails_cleanly(
        capsys, "cola", "--demo", "--model_name_or_path", tiny_model, "--method", "qlora", "--merge_adapter",
        "--output_dir", str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_an_unknown_compute_dtype_is_refused(tiny_model, tmp_path, capsys):
    assert "--bnb_4bit_compute_dtype 'float8' is not one of float32, bfloat16, float16" in fails_cleanly(
        capsys, "cola", "--demo", "--model_name_or_path", tiny_model, "--method", "qlora",
        "--bnb_4bit_compute_dtype", "float8", "--output_dir", str(tmp_path / "f"))


def test_a_checkpoint_saved_in_4_bits_is_refused_by_every_method(tiny_model, tiny_llama, tmp_path, capsys):
    """It loads as saved whatever a run asks: LoRA trained its 4-bit base under the label lora, PiSSA and
    QLoRA ended in tracebacks (a quantised head cannot require gradients)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from adarank.loading import four_bit_loading

    saved = {}
    for name, source, kind in (("bert", tiny_model, AutoModelForSequenceClassification),
                               ("llama", tiny_llama, AutoModelForCausalLM)):
        kind.from_pretrained(source, **four_bit_loading(None, keep=[])).save_pretrained(tmp_path / name)
        AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path / name)
        saved[name] = str(tmp_path / name)
    capsys.readouterr()  # the loading and saving progress bars
    message = f"model {saved['bert']!r} is saved quantized (bitsandbytes in its config.json's quantization_config): " \
              "give its full-precision original; the 4-bit methods quantize it themselves"
    for method in ("lora", "pissa", "qlora"):
        assert message in fails_cleanly(capsys, "cola", "--demo", "--model_name_or_path", saved["bert"], "--method",
                                        method, "--output_dir", str(tmp_path / method), one_line=True), method
        assert not (tmp_path / method).exists()
    assert f"model {saved['llama']!r} is saved quantized" in fails_cleanly(
        capsys, "cnndailymail", "--demo", "--model_name_or_path", saved["llama"], "--method", "lora", "--output_dir",
        str(tmp_path / "summaries"))


@pytest.mark.parametrize("kind", ["other", "amx"])
def test_a_compute_dtype_this_cpu_emulates_is_said_and_the_chosen_one_recorded(tiny_model, tmp_path, caplog,
                                                                                monkeypatch, kind):
    """bf16 and fp16 4-bit matmuls on a CPU without bf16 units ran many times slower without a word; and
    config.json held the flag as typed (unset beside float32 for one computation), so the results table
    took them for two settings."""
    import adarank.precision as precisions
    from adarank.arguments import parse_arguments

    monkeypatch.setattr(precisions, "cpu_kind", lambda: kind)
    for given, chosen in (((), "float32"), (("--bnb_4bit_compute_dtype", "bfloat16"), "bfloat16")):
        caplog.clear()
        args = parse_arguments(TASKS["cola"], ["--demo", "--model_name_or_path", tiny_model, "--method", "qlora",
                                               *given])
        assert args.model.bnb_4bit_compute_dtype == chosen
        emulated = "--bnb_4bit_compute_dtype bfloat16 on a CPU without bf16 units: its matmuls are emulated"
        assert (emulated in caplog.text) == (kind == "other" and chosen == "bfloat16")
    assert parse_arguments(TASKS["cola"], ["--demo", "--method", "lora"]).model.bnb_4bit_compute_dtype is None


def test_a_model_without_quantisable_layers_is_refused():
    from adarank.loading import require_quantized_layers

    with pytest.raises(UsageError, match="no Linear layers that bitsandbytes can quantise"):
        require_quantized_layers(nn.Sequential(nn.Embedding(10, 4)), "toy")


def test_merge_adapter_writes_a_merged_full_precision_model(tiny_model, tmp_path):
    run_dir = tmp_path / "merge"
    assert run_task("rte", "--demo", "--model_name_or_path", tiny_model, "--method", "lora", "--merge_adapter",
                    "--max_steps", "3", "--output_dir", str(run_dir), *QUICK) == 0
    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(run_dir / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
