"""PEFT's LoRA variants as methods (adarank/methods/variants): DoRA, PiSSA, rsLoRA and EVA.

Each is checked for the PEFT configuration its flags make, the parameters it trains against a count
from the adapted matrices' shapes, a whole run's files, and an adapter that reloads in plain PEFT,
onto the unmodified base, to the logits the trained model gave."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from adarank.arguments import AdapterArguments
from adarank.errors import UsageError
from adarank.memory_plan import architecture, model_skeleton, plan
from adarank.methods import AdapterRequest, get_method
from adarank.methods.variants.eva import EvaArguments
from adarank.modules import head_modules, locate, resolve_target_modules
from adarank.run.batches import training_batches
from adarank.tasks import TASKS
from adarank.tasks.glue.data import load_glue, tokenize
from adarank.tasks.glue.model import load_model
from conftest import QUICK, assert_adapter_gives_the_run_predictions, pad_batch, read_jsonl, reloaded_logits
from fixtures.cli import error_line, fails_cleanly, run_task, without_progress_bars
from fixtures.paths import SRC

VARIANTS = ("dora", "pissa", "rslora", "eva")
QUANTIZED = ("qdora", "qrslora")  # the same on a 4-bit NF4 base
# What each method's LoraConfig must say, beside r, alpha and the adapted matrices.
PEFT_OPTIONS = {
    "dora": {"use_dora": True, "use_rslora": False, "init_lora_weights": True},
    "pissa": {"use_dora": False, "use_rslora": False, "init_lora_weights": "pissa"},
    "rslora": {"use_dora": False, "use_rslora": True, "init_lora_weights": True},
    "eva": {"use_dora": False, "use_rslora": False, "init_lora_weights": "eva"},
}
TASK = TASKS["sst2"]


def shapes_of(model) -> dict[str, tuple[int, int]]:
    """(in, out) features of every matrix the run adapts, read from the model itself."""
    return {name: (model.get_submodule(name).in_features, model.get_submodule(name).out_features)
            for name in resolve_target_modules(model)}


def adapter_parameters(model) -> int:
    """Trainable parameters of the adapters (the task head apart), counted on the built model."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n)


def build(model, tokenized, method: str, method_arguments=None, **adapter_flags):
    """A method's plan and build on ``model``, as the pipeline does it, the training batches included."""
    chosen = get_method(method)
    request = AdapterRequest(TASK, AdapterArguments(method=method, **adapter_flags), total_step=8,
                             target_modules=resolve_target_modules(model), head_modules=head_modules(model),
                             method_arguments=method_arguments, task_type=TASK.peft_task_type(model),
                             explicit=frozenset(adapter_flags),  # as if given on the command line
                             train_batches=training_batches(tokenized.train, model,
                                                            DataCollatorWithPadding(tokenized.tokenizer), 8))
    return chosen, chosen.build(model, chosen.plan(request), request)


@pytest.fixture(scope="module")
def demo(tiny_model):
    """The tiny BERT's tokenizer and SST-2 demo data tokenized for it (64 train, 16 dev)."""
    tokenizer, _, _ = load_model(tiny_model, TASK)
    data = tokenize(load_glue(TASK, demo=True, max_train_samples=64, max_eval_samples=16), tokenizer, 64)
    return SimpleNamespace(tokenizer=tokenizer, train=data.train, dev=data.dev)


@pytest.mark.parametrize("method", VARIANTS)
def test_the_peft_config_is_the_one_the_flags_ask_for(tiny_model, demo, method):
    model = load_model(tiny_model, TASK)[1]
    targets = resolve_target_modules(model)
    _, built = build(model, demo, method, lora_r=4, lora_alpha=12.0)
    config = built.model.peft_config["default"]
    assert (config.r, config.lora_alpha) == (4, 12.0)
    assert {k: getattr(config, k) for k in PEFT_OPTIONS[method]} == PEFT_OPTIONS[method]
    assert {"classifier", "pooler"} <= set(config.modules_to_save)  # the task head, trained in full
    if method != "eva":  # EVA may leave a matrix without an adapter (and names the rest minimally)
        assert set(config.target_modules) == set(targets)
    scales = {layer.scaling["default"] for layer in built.model.modules() if isinstance(layer, LoraLayer)}
    assert scales == {12.0 / 2.0 if method == "rslora" else 12.0 / 4}  # rsLoRA: alpha / sqrt(r)


def test_pissa_scales_its_update_by_one_unless_alpha_is_given(tiny_model, tmp_path):
    """The paper's W = W_res + B A has no scale: alpha = r by default; --lora_alpha wins."""
    for flags, alpha in (((), 2.0), (("--lora_alpha", "16"), 16.0)):
        run_dir = tmp_path / f"alpha-{alpha:g}"
        assert run_variant(tiny_model, run_dir, "pissa", *flags) == 0
        adapter = json.loads((run_dir / "config.json").read_text())["adapter"]
        assert (adapter["r"], adapter["lora_alpha"], adapter["update_scale"]) == (2, alpha, alpha / 2)


def test_the_variants_own_flags_reach_peft(tiny_model, demo):
    model = load_model(tiny_model, TASK)[1]
    _, built = build(model, demo, "eva", EvaArguments(eva_rho=1.0, eva_tau=0.95, eva_whiten=True))
    eva = built.model.peft_config["default"].eva_config
    assert (eva.rho, eva.tau, eva.whiten) == (1.0, 0.95, True)
    from adarank.methods.variants.pissa import PissaArguments

    _, built = build(load_model(tiny_model, TASK)[1], demo, "pissa", PissaArguments(pissa_niter=3))
    assert built.model.peft_config["default"].init_lora_weights == "pissa_niter_3"


@pytest.mark.parametrize("method", [*VARIANTS, *QUANTIZED])
def test_the_trained_parameters_are_those_the_shapes_give(tiny_model, demo, method):
    shapes = shapes_of(load_model(tiny_model, TASK)[1])
    model = load_model(tiny_model, TASK, load_in_4bit=get_method(method).quantized)[1]
    r = 2
    lora = sum(r * (i + o) for i, o in shapes.values())
    dora = method in ("dora", "qdora")
    expected = lora + sum(o for _, o in shapes.values()) if dora else lora  # DoRA: a magnitude per output feature
    chosen, built = build(model, demo, method, method_arguments=EvaArguments(eva_rho=1.0) if method == "eva" else None)
    assert chosen.parameters_at_rank(r, list(shapes.values())) == expected
    assert adapter_parameters(built.model) == expected  # EVA with rho = 1 keeps r everywhere
    # The memory planner asks the method the same question, from the model's config alone.
    assert plan(architecture(model_skeleton(tiny_model, 2)), method, "small").train_adapter_params == expected


def test_eva_redistributes_the_budget_and_trains_what_its_ranks_give(tiny_model, demo):
    model = load_model(tiny_model, TASK)[1]
    shapes = shapes_of(model)
    _, built = build(model, demo, "eva", EvaArguments(eva_rho=2.0))
    layers = {name: built.model.base_model.model.get_submodule(name) for name in shapes}
    ranks = {name: layer.r["default"] if isinstance(layer, LoraLayer) else 0 for name, layer in layers.items()}
    assert sum(ranks.values()) == 2 * len(shapes) == built.plan.total_rank  # the budget, r x matrices
    assert max(ranks.values()) <= 4 and built.plan.rank_range == (min(ranks.values()), max(ranks.values()))
    assert adapter_parameters(built.model) == sum(ranks[n] * (i + o) for n, (i, o) in shapes.items())


@pytest.mark.parametrize("method", [*VARIANTS, *QUANTIZED])
def test_a_trained_adapter_reloads_onto_the_unmodified_base_to_the_same_logits(tiny_model, demo, tmp_path, method):
    four_bit = get_method(method).quantized
    model = load_model(tiny_model, TASK, load_in_4bit=four_bit)[1]
    _, built = build(model, demo, method)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=1,
                             learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True)
    Trainer(model=built.model, args=args, train_dataset=demo.train, callbacks=built.callbacks,
            data_collator=DataCollatorWithPadding(demo.tokenizer)).train()
    inputs = pad_batch(demo.tokenizer, demo.dev["validation"])
    built.model.eval()
    with torch.no_grad():
        logits = built.model(**inputs).logits
    built.model.save_pretrained(str(tmp_path / "adapter"))
    fresh = load_model(tiny_model, TASK, load_in_4bit=four_bit)[1]  # PiSSA's residual is not in it
    torch.testing.assert_close(reloaded_logits(fresh, tmp_path / "adapter", inputs), logits, rtol=1e-4, atol=1e-5)
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    if method == "pissa":  # plain LoRA of rank 2r: [B, -B0] [A; A0], at the same scale (alpha r -> 2r)
        assert (saved["r"], saved["lora_alpha"], saved["init_lora_weights"]) == (4, 4.0, True)
        weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
        assert any("classifier" in k for k in weights)  # the head trained in full is kept
        stored = sum(t.numel() for k, t in weights.items() if ".lora_" in k)
        planned = plan(architecture(model_skeleton(tiny_model, 2)), method, "small")
        assert (planned.saved_adapter_params, planned.train_adapter_params) == (stored, stored // 2)


def test_pissa_starts_where_the_base_model_is(tiny_model, demo):
    model = load_model(tiny_model, TASK)[1].eval()
    inputs = pad_batch(demo.tokenizer, demo.dev["validation"])
    with torch.no_grad():
        before = model.bert(**inputs).last_hidden_state
        query = model.bert.encoder.layer[0].attention.self.query.weight.clone()
    _, built = build(model, demo, "pissa")
    layer = built.model.base_model.model.bert.encoder.layer[0].attention.self.query
    with torch.no_grad():
        after = built.model.base_model.model.bert(**inputs).last_hidden_state
        principal = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.base_layer.weight + principal, query, rtol=1e-5, atol=1e-6)
    # The adapter holds the top singular directions: its update has the weight's top r singular values.
    torch.testing.assert_close(torch.linalg.svdvals(principal)[:2], torch.linalg.svdvals(query)[:2])


# --- whole runs through a task script's entry point ---------------------------------------------

def run_variant(tiny_model, run_dir: Path, method: str, *flags: str) -> int:
    return run_task("cola", "--demo", "--model_name_or_path", tiny_model, "--method", method, "--budget", "small",
                    "--max_steps", "4", "--no_bf16", "--output_dir", str(run_dir), *QUICK, *flags)


@pytest.mark.parametrize("method", [*VARIANTS, "qdora"])
def test_a_run_writes_the_run_directory_and_its_adapter_reloads_in_plain_peft(tiny_model, tmp_path, method):
    run_dir = tmp_path / method
    assert run_variant(tiny_model, run_dir, method, *(["--eva_rho", "1.5"] if method == "eva" else [])) == 0
    for name in ("config.json", "metrics.json", "history.jsonl", "predictions.tsv", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert config["method"] == method and config["budget"] == "small" and config["adapter"]["r"] == 2
    shapes = shapes_of(load_model(tiny_model, TASKS["cola"])[1])
    if method == "eva":
        records = read_jsonl(run_dir / "ranks.jsonl")
        assert [r["event"] for r in records] == ["initial", "final"] and records[1]["step"] == 4
        assert records[0]["budget"] == records[0]["total_rank"] == 2 * len(shapes) == config["adapter"]["total_rank"]
        assert config["adapter"]["rho"] == 1.5
        rank = {name: records[0]["ranks"][layer][kind] for name in shapes for layer, kind in [locate(name)]}
        # redistributed within rho (whether this tiny random model's spectra move any rank depends on its draw)
        assert max(rank.values()) <= 3 and config["adapter"]["rank_range"] == [min(rank.values()), max(rank.values())]
        assert metrics["adapter_params"] == sum(rank[name] * (i + o) for name, (i, o) in shapes.items())
    else:
        assert metrics["adapter_params"] == get_method(method).parameters_at_rank(2, list(shapes.values()))
    tokenizer, base, _ = load_model(tiny_model, TASKS["cola"], load_in_4bit=get_method(method).quantized)
    assert_adapter_gives_the_run_predictions(run_dir, tokenizer, base, TASKS["cola"], 16)


@pytest.mark.parametrize("method", ["pissa", "eva"])
def test_a_resumed_run_ends_with_the_adapter_of_an_uninterrupted_one(tiny_model, tmp_path, method):
    run_dir, steps = tmp_path / method, ("--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "2")
    assert run_variant(tiny_model, run_dir, method, *steps) == 0
    uninterrupted = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    (run_dir / "metrics.json").unlink()  # as if stopped after the checkpoint of step 2
    assert run_variant(tiny_model, run_dir, method, *steps, "--resume_from_checkpoint",
                       str(run_dir / "checkpoints" / "checkpoint-2")) == 0
    resumed = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    if method == "eva":  # the ranks come back from the checkpoint, logged once
        assert [r["event"] for r in read_jsonl(run_dir / "ranks.jsonl")] == ["initial", "final"]
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=1e-5, atol=1e-6)


# --- refusals --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, flags, message", [
    ("eva", ("--eva_rho", "0.5"), "--eva_rho 0.5 must be at least 1"),
    ("eva", ("--eva_tau", "1.5"), "--eva_tau 1.5 must be at least 0 and below 1"),
    ("eva", ("--eva_tau", "1"), "--eva_tau 1.0 must be at least 0 and below 1"),
    ("eva", ("--eva_rho", "inf"), "--eva_rho inf must be a finite number"),
    ("pissa", ("--pissa_niter", "-2"), "--pissa_niter -2 must be 0 or more"),
    ("dora", ("--lora_dropout", "1.5"), "--lora_dropout 1.5 must be in [0, 1)"),
    ("rslora", ("--lora_r", "0"), "--lora_r 0 must be at least 1"),
    ("lora", ("--eva_rho", "2"), "--eva_rho"),  # a method's own flag belongs to it alone
])
def test_bad_values_are_refused_in_one_line_before_the_model_loads(tiny_model, tmp_path, capsys, method, flags,
                                                                   message):
    line = fails_cleanly(capsys, "cola", "--demo", "--model_name_or_path", tiny_model, "--method", method, *flags,
                         "--output_dir", str(tmp_path / "x"), one_line=True)
    assert message in line
    assert not (tmp_path / "x").exists()


def test_eva_refuses_more_components_than_a_matrix_reads_in_one_line(tiny_model, tmp_path, capsys):
    code = run_variant(tiny_model, tmp_path / "e", "eva", "--eva_rho", "9")  # 18 components, 16 features
    line = error_line(code, without_progress_bars(capsys.readouterr().err), one_line=True)
    assert "--eva_rho 9 asks for 18 input components per matrix at rank 2, but the narrowest adapted matrix " \
           "reads 16 features: lower --eva_rho to 8 or less" in line


def test_eva_refuses_components_no_training_batch_holds_and_leaves_no_directory(mixed_width_model, tmp_path, capsys):
    """PEFT's EVA decomposes only a batch holding at least r x rho tokens and cycles over the data until it
    has: with no such batch it never stopped. 60 components fit the 64-feature matrices, not a batch of one
    short sentence."""
    code = run_task("cola", "--demo", "--model_name_or_path", mixed_width_model, "--method", "eva", "--lora_r", "30",
                    "--eva_rho", "2", "--max_steps", "2", "--no_bf16", "--output_dir", str(tmp_path / "e"), *QUICK,
                    "--per_device_train_batch_size", "1")
    line = error_line(code, without_progress_bars(capsys.readouterr().err), one_line=True)
    assert "--method eva keeps 60 input components per matrix (--lora_r 30 x --eva_rho 2), but the largest " \
           "training batch holds" in line and "raise --per_device_train_batch_size" in line
    assert not (tmp_path / "e").exists()  # the directory the run made, and nothing written in it, went again


def test_eva_counts_the_tokens_it_decomposes_as_peft_masks_them():
    from adarank.methods.variants.eva import _counted_tokens

    ids = torch.ones(2, 4, dtype=torch.long)
    assert _counted_tokens({"input_ids": ids}) == 8
    assert _counted_tokens({"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])}) == 4
    labels = torch.tensor([[-100, 5, 6, -100], [7, -100, -100, -100]])  # a causal LM's prompt is masked out
    assert _counted_tokens({"input_ids": ids, "attention_mask": torch.ones(2, 4), "labels": labels}) == 3
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert _counted_tokens({"input_ids": ids, "attention_mask": mask, "labels": labels}) == 3
    assert mask.all()  # the batch's own mask is left as it was


def test_eva_names_a_lower_rank_where_no_rho_fits():
    from torch import nn

    from adarank.methods.variants.eva import EvaPlan, _check_components

    model = nn.Sequential(nn.Linear(16, 32))  # reads 16 features
    with pytest.raises(UsageError) as refused:  # at rank 20, even rho = 1 asks for more than 16
        _check_components(model, EvaPlan(r=20, lora_alpha=16.0, lora_dropout=0.0, rho=2.0), ["0"])
    assert str(refused.value).endswith("reads 16 features: lower --lora_r to 8 or less")
    with pytest.raises(UsageError) as refused:  # at rank 12: rho 1.33 or rank 8
        _check_components(model, EvaPlan(r=12, lora_alpha=16.0, lora_dropout=0.0, rho=2.0), ["0"])
    assert str(refused.value).endswith("lower --eva_rho to 1.33 or less, or lower --lora_r to 8 or less")


def test_a_method_that_trains_in_one_process_refuses_torchrun_in_one_line(tiny_model, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(SRC / "glue-cola.py"), "--demo", "--model_name_or_path", tiny_model, "--method",
                           "increlora", "--output_dir", str(tmp_path / "x")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode != 0
    refusals = [line for line in done.stderr.splitlines() if line.startswith("error: increlora trains in one process")]
    # Each process refuses in one line; the first to exit makes torchrun stop the other, which may not
    # have reached its refusal yet, so one or two lines.
    assert 1 <= len(refusals) <= 2 and all("run it without torchrun" in line for line in refusals)
    assert "adarank/" not in done.stderr  # no traceback through the library (torchrun reports the exits itself)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("method", ["eva", "plateau"])
def test_eva_and_plateau_train_in_one_process(monkeypatch, method):
    from adarank.methods import base
    from custom.plateau import register

    register()  # --method plateau, as its entry scripts make it known
    monkeypatch.setattr(base, "processes", lambda: 2)
    with pytest.raises(UsageError, match=f"^{method} trains in one process only"):
        get_method(method).check_run(SimpleNamespace(), SimpleNamespace())


def test_pissa_refuses_a_rank_above_the_smallest_matrix_in_one_line(tiny_model, tmp_path, capsys):
    code = run_variant(tiny_model, tmp_path / "p", "pissa", "--lora_r", "17")  # the tiny BERT's matrices are 16 wide
    line = error_line(code, without_progress_bars(capsys.readouterr().err), one_line=True)
    assert "--lora_r 17 is more than the 16 singular directions" in line


def test_eva_refuses_an_encoder_decoder_model_in_one_line(tiny_bart, tmp_path, capsys):
    code = run_task("cnndailymail", "--demo", "--model_name_or_path", tiny_bart, "--method", "eva", "--max_steps", "2",
                    "--output_dir", str(tmp_path / "e"), *QUICK)
    line = error_line(code, capsys.readouterr().err)  # after the data's tokenizing bars: the model tells
    assert "--method eva cannot initialise an encoder-decoder model" in line


# --- EVA on a causal LM's summaries: only their tokens count ------------------------------------

def summarize_with_eva(tiny_llama, run_dir: Path, *flags: str) -> int:
    """EVA on two records of articles and summaries (a third held out), one a batch."""
    from adarank.tasks.summarization.data import demo_split

    data = run_dir.parent / "three.jsonl"
    data.write_text("".join(json.dumps({"article": r["text"], "highlights": r["summary"]}) + "\n"
                            for r in demo_split(3, seed=3)))
    return run_task("cnndailymail", "--data_file", str(data), "--model_name_or_path", tiny_llama, "--method", "eva",
                    "--max_eval_samples", "1", "--max_steps", "1", "--per_device_train_batch_size", "1",
                    "--max_seq_length", "32", "--num_beams", "1", "--eval_strategy", "no", "--save_strategy", "no",
                    "--output_dir", str(run_dir), *flags)


def test_eva_bounds_its_passes_over_few_summaries_in_one_line(tiny_llama, tmp_path, capsys, monkeypatch):
    """PEFT cycles over the batches until the components converge, with no limit: SmolLM2's layers still
    turned after 71 passes over 2 batches of 8-token summaries, and the run never ended. The tiny Llama
    converges in the fourth pass over these; a bound of 2 passes is the bound the test sees."""
    from adarank.methods.variants import eva

    monkeypatch.setattr(eva, "CONVERGENCE_PASSES", 2, raising=False)
    code = summarize_with_eva(tiny_llama, tmp_path / "e", "--max_target_length", "8")
    line = error_line(code, without_progress_bars(capsys.readouterr().err))
    assert line == "error: EVA's components did not converge in 2 passes over the 2 training batches: give more " \
                   "training data, longer summaries (--max_target_length), or lower --eva_tau below 0.99"
    assert not (tmp_path / "e").exists()


def test_eva_counts_a_summarization_runs_summary_tokens_and_names_their_length(tiny_llama, tmp_path, capsys):
    code = summarize_with_eva(tiny_llama, tmp_path / "e", "--max_target_length", "2")  # 4 components, 2 tokens
    line = error_line(code, without_progress_bars(capsys.readouterr().err))
    assert "but the largest training batch holds 2 labelled (summary) tokens" in line
    assert "raise --max_target_length or --per_device_train_batch_size, or lower --eva_rho or --lora_r" in line
