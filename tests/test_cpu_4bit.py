"""4-bit layers on both of bitsandbytes' CPU paths: its packed AVX512-BF16 kernel and the plain one.

bitsandbytes decides per layer at construction, from the CPU (``has_avx512bf16``).
Each test runs once per path: on the path this CPU takes, for real, and on the
other by setting that flag the way bitsandbytes sets it (monkeypatching the
function it calls). Packing itself is plain torch code, so the packed path's
state changes (pack for evaluation, exact plain weights back for training and
saving) are exercised on any CPU; only the packed kernel's arithmetic needs the
real instruction set, and the one check of its values says so where it is skipped.
"""

import json

import bitsandbytes.functional
import bitsandbytes.nn.modules
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from adarank.quantization import is_linear_4bit, is_packed, packable
from adarank.tasks import TASKS
from adarank.tasks.glue.model import load_model
from conftest import demo_dev_inputs, predicted_labels, run_task, stop_and_resume

CPU_HAS_PACKED_KERNEL = bool(bitsandbytes.functional.has_avx512bf16())


@pytest.fixture(params=["packed", "plain"])
def cpu_path(request, monkeypatch):
    """Which path bitsandbytes takes on this CPU, forced where the CPU would take the other."""
    packed = request.param == "packed"
    if packed != CPU_HAS_PACKED_KERNEL:  # forced: the flag bitsandbytes reads at construction
        monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: packed)
    return request.param


def four_bit_layers(model) -> dict:
    return {name: m for name, m in model.named_modules() if is_linear_4bit(m)}


def test_each_layer_takes_the_packed_kernel_only_where_its_shape_and_dtype_allow(mixed_width_model, cpu_path):
    task = TASKS["sst2"]
    layers = four_bit_layers(load_model(mixed_width_model, task, load_in_4bit=True, compute_dtype="bfloat16")[1])
    shapes_ok = {name for name, m in layers.items() if packable(m)}
    assert shapes_ok and shapes_ok != set(layers)  # the model mixes both kinds
    chosen = {name for name, m in layers.items() if m.support_avx512bf16_for_cpu}
    assert chosen == (shapes_ok if cpu_path == "packed" else set())
    # float32 compute (the CPU default): the bf16 kernel would lower the precision asked for.
    fp32 = four_bit_layers(load_model(mixed_width_model, task, load_in_4bit=True, compute_dtype="float32")[1])
    assert not any(m.support_avx512bf16_for_cpu for m in fp32.values())


def test_evaluation_packs_and_training_and_saving_get_the_exact_plain_weights_back(mixed_width_model, cpu_path):
    task = TASKS["sst2"]
    tokenizer, model, _ = load_model(mixed_width_model, task, load_in_4bit=True, compute_dtype="bfloat16")
    inputs = demo_dev_inputs(tokenizer, task, 8)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    trained_logits = model(**inputs).logits.detach()
    model.eval()
    with torch.no_grad():
        plain_eval = model(**inputs).logits if cpu_path == "plain" else None
        packed_eval = model(**inputs).logits
    packed = {name for name, m in four_bit_layers(model).items() if is_packed(m)}
    assert packed == {name for name, m in four_bit_layers(model).items() if m.support_avx512bf16_for_cpu}
    assert bool(packed) == (cpu_path == "packed")

    model.train()  # a training step after an evaluation runs on the weights it had before it
    torch.testing.assert_close(model(**inputs).logits.detach(), trained_logits, rtol=0, atol=0)
    assert not any(is_packed(m) for m in four_bit_layers(model).values())
    model.eval()
    with torch.no_grad():
        model(**inputs)
    after = model.state_dict()  # saving a packed model stores the weights it was loaded with
    assert after.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(after[key], value), key
    if cpu_path == "plain":
        torch.testing.assert_close(packed_eval, plain_eval, rtol=0, atol=0)
    elif CPU_HAS_PACKED_KERNEL:  # the real kernel: the same function up to bf16 rounding
        fresh = load_model(mixed_width_model, task, load_in_4bit=True, compute_dtype="bfloat16")[1].train()
        with torch.no_grad():
            torch.testing.assert_close(packed_eval, fresh(**inputs).logits, rtol=0.05, atol=0.05)
    else:
        pytest.skip("packed kernel forced on a CPU without AVX512-BF16: its arithmetic needs the real kernel; "
                    "the pack/unpack exactness above was checked")


def test_evaluating_during_training_changes_nothing_and_a_resumed_run_matches(mixed_width_model, cpu_path, tmp_path):
    common = ("sst2", "--demo", "--model_name_or_path", mixed_width_model, "--method", "qadalora",
              "--bnb_4bit_compute_dtype", "bfloat16", "--max_steps", "12", "--per_device_train_batch_size", "8",
              "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "4", "--save_total_limit", "3",
              "--max_eval_samples", "16", "--seed", "5")
    evaluated, quiet, resumed = tmp_path / "evaluated", tmp_path / "quiet", tmp_path / "resumed"
    every4 = ("--eval_strategy", "steps", "--eval_steps", "4")
    assert run_task(*common, *every4, "--output_dir", str(evaluated)) == 0
    assert run_task(*common, "--eval_strategy", "no", "--output_dir", str(quiet)) == 0
    config = json.loads((evaluated / "config.json").read_text())["four_bit_cpu_kernels"]
    assert (config["packed_kernel_layers"] > 0) == (cpu_path == "packed")
    assert config["contiguous_gradient_layers"] == config["packed_kernel_layers"] + config["plain_kernel_layers"]

    weights = load_file(evaluated / "adapter" / "adapter_model.safetensors")
    for key, value in load_file(quiet / "adapter" / "adapter_model.safetensors").items():
        assert torch.equal(weights[key], value), key

    stop_and_resume(run_task, (*common, *every4), resumed, step=8)  # a checkpoint taken after an evaluation
    for key, value in load_file(resumed / "adapter" / "adapter_model.safetensors").items():
        torch.testing.assert_close(value, weights[key], rtol=1e-6, atol=1e-6)

    task = TASKS["sst2"]
    tokenizer, base, _ = load_model(mixed_width_model, task, load_in_4bit=True, compute_dtype="bfloat16")
    reloaded = PeftModel.from_pretrained(base, str(evaluated / "adapter")).eval()
    with torch.no_grad():
        predicted = reloaded(**demo_dev_inputs(tokenizer, task, 16)).logits.argmax(-1).tolist()
    assert [str(p) for p in predicted] == predicted_labels(evaluated, 16)


def test_no_line_about_the_optional_kernels_package(tiny_model, tmp_path):
    import subprocess
    import sys

    from fixtures.paths import SRC

    script = SRC / "src_qlora" / "glue_sst2.py"
    done = subprocess.run([sys.executable, str(script), "--demo", "--model_name_or_path", tiny_model,
                           "--max_steps", "2", "--per_device_train_batch_size", "8", "--save_strategy", "no",
                           "--output_dir", str(tmp_path / "k")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kernels" not in done.stdout + done.stderr


def test_only_the_kernels_notice_is_filtered(caplog):
    import logging

    import adarank  # noqa: F401  (installs the filter)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "No module")
        logger.warning("some other bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes warning"]


def test_the_backward_of_4bit_layers_runs_one_matrix_product_not_a_copy_of_the_weight_per_sequence(tiny_model):
    """bitsandbytes' backward multiplies the output gradient by the dequantised weight. In training
    (attention dropout on), the key layer's gradient comes back from attention transposed within
    each sequence; without the project's hook torch.matmul would then expand the weight to one copy
    per sequence (a batched product over [batch, out, in]). With it: plain matrix products, and the
    gradients of a model without it."""
    from torch.profiler import ProfilerActivity, profile

    task = TASKS["sst2"]
    _, hooked, _ = load_model(tiny_model, task, load_in_4bit=True, compute_dtype="float32")
    _, plain, _ = load_model(tiny_model, task, load_in_4bit=True, compute_dtype="float32")
    for layer in four_bit_layers(plain).values():
        layer._forward_hooks.clear()  # bitsandbytes' layers as they come, without the project's hook
    batch = 4
    input_ids = torch.randint(5, plain.config.vocab_size, (batch, 16), generator=torch.Generator().manual_seed(0))

    def input_gradient(model):
        model.train()
        torch.manual_seed(0)  # the same dropout masks for both models
        embeddings = model.get_input_embeddings()(input_ids).detach().requires_grad_()
        model(inputs_embeds=embeddings, attention_mask=torch.ones_like(input_ids)).logits.sum().backward()
        return embeddings.grad

    def weight_sized_batches(model) -> int:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            input_gradient(model)
        shapes = {tuple(m.weight.quant_state.shape) for m in four_bit_layers(model).values()}
        return sum(event.count for event in prof.key_averages(group_by_input_shape=True)
                   if event.key == "aten::bmm" and len(event.input_shapes) == 2
                   and len(event.input_shapes[1]) == 3 and event.input_shapes[1][0] == batch
                   and tuple(event.input_shapes[1][1:]) in shapes | {s[::-1] for s in shapes})

    assert weight_sized_batches(plain) > 0  # the case the hook is for does occur here
    assert weight_sized_batches(hooked) == 0
    assert torch.allclose(input_gradient(hooked), input_gradient(plain), atol=1e-6, rtol=1e-5)


FUSED_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


def adapted_4bit_pair(model_path: str, method: str, compute_dtype: str):
    """Two identical 4-bit models with LoRA or AdaLoRA adapters (dropout 0.1) whose every parameter is nonzero."""
    from peft import AdaLoraConfig, LoraConfig, get_peft_model

    common = {"task_type": "SEQ_CLS", "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": FUSED_TARGETS}
    config = (LoraConfig(r=4, **common) if method == "lora"
              else AdaLoraConfig(init_r=4, target_r=2, total_step=10, tinit=1, tfinal=1, **common))
    models = []
    for _ in range(2):
        tokenizer, base, _ = load_model(model_path, TASKS["sst2"], load_in_4bit=True, compute_dtype=compute_dtype)
        model = get_peft_model(base, config)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # B (LoRA) and E (AdaLoRA) start at zero: give the update a value
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
        models.append(model)
    return tokenizer, models


def logits_and_gradients(model, inputs, training: bool, autocast: bool):
    model.train(training)
    model.zero_grad()
    torch.manual_seed(0)  # the same dropout masks in both models
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.set_grad_enabled(training):
        logits = model(**inputs).logits
    if training:
        logits.float().square().sum().backward()
    return logits.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, autocast: bool, name: str = "logits") -> None:
    """fp32: to float32 precision; bf16 autocast: the whole tensor within 5% (relative norm of the
    difference). Under autocast each is 0.6-1.7% from the fp32 function on this model, in other
    directions (the pair differs by up to 2.8%); a missing or doubled term is far outside 5%."""
    if not autocast:
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5, msg=name)
        return
    assert theirs.norm() > 0, name
    assert ((ours - theirs).norm() / theirs.norm()).item() < 0.05, name


@pytest.mark.parametrize("compute_dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_the_fused_forward_gives_peft_4bit_outputs_and_gradients(mixed_width_model, cpu_path, method, compute_dtype,
                                                                 monkeypatch):
    """QLoRA's and QLoRA + AdaLoRA's layers (PEFT's 4-bit classes) take the fused adapter forward and
    compute PEFT's function: in training (with the adapters' dropout) and in evaluation (where the
    packed kernel runs where the compute dtype is bf16), fp32 and under bf16 autocast."""
    from adarank.methods.fused import fuse_adapter_forward

    tokenizer, (theirs, ours) = adapted_4bit_pair(mixed_width_model, method, compute_dtype)
    peft_class = type(next(m for m in theirs.modules() if hasattr(m, "lora_A") and is_linear_4bit(m.base_layer)))
    assert fuse_adapter_forward(ours) == 2 * len(FUSED_TARGETS)
    calls, original = [], peft_class.forward
    monkeypatch.setattr(peft_class, "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    inputs = demo_dev_inputs(tokenizer, TASKS["sst2"], 8)
    for autocast in (False, True):
        for training in (True, False):
            a, grads_a = logits_and_gradients(theirs, inputs, training, autocast)
            b, grads_b = logits_and_gradients(ours, inputs, training, autocast)
            assert_same(b, a, autocast)
            assert grads_a.keys() == grads_b.keys() and (len(grads_a) > 0) == training
            for name in grads_a:
                assert_same(grads_b[name], grads_a[name], autocast, name)
    assert len(calls) == 4 * 2 * len(FUSED_TARGETS)  # PEFT's forward ran for its own model only
