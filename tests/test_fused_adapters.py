"""The fused adapter forward (adarank/methods/fused.py) computes PEFT's function: the same outputs
and gradients to float32 precision, for LoRA and AdaLoRA, with dropout and under bf16 autocast; and
PEFT's own forward wherever the layer is not in the plain case."""

import copy

import pytest
import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model

from peft.tuners.adalora.layer import SVDLinear
from peft.tuners.lora.layer import Linear as LoraLinear

from adarank.methods import fused
from adarank.methods.fused import fuse_adapter_forward
from fixtures.models import tiny_bert as tiny_bert_of

TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


def tiny_bert():
    return tiny_bert_of(100, hidden_size=32, positions=64, dropout=False, seed=0)


def adapted(method: str, dropout: float = 0.0):
    if method == "lora":
        config = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=16, lora_dropout=dropout, target_modules=TARGETS)
    else:
        config = AdaLoraConfig(task_type="SEQ_CLS", init_r=4, target_r=2, lora_alpha=16, lora_dropout=dropout,
                               target_modules=TARGETS, total_step=10, tinit=1, tfinal=1)
    model = get_peft_model(tiny_bert(), config)
    with torch.no_grad():  # B (LoRA) and E (AdaLoRA) start at zero: give the update a value to compare
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.1)
    return model


def outputs_and_gradients(model, batch, seed=0):
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout masks in both models
    logits = model(**batch).logits
    logits.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and "lora_" in n}
    return logits.detach(), grads


BATCH = {"input_ids": torch.randint(1, 100, (3, 11)), "attention_mask": torch.ones(3, 11, dtype=torch.long)}


def counting_peft_forward(monkeypatch) -> list:
    """Count the calls of PEFT's own forward of both layer classes."""
    calls = []
    for cls in (LoraLinear, SVDLinear):
        original = cls.forward
        monkeypatch.setattr(cls, "forward", lambda self, *a, _f=original, **k: calls.append(1) or _f(self, *a, **k))
    return calls


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_the_fused_forward_gives_peft_outputs_and_gradients(method, monkeypatch):
    theirs = adapted(method)
    ours = copy.deepcopy(theirs)
    assert fuse_adapter_forward(ours) == 2 * len(TARGETS)
    calls = counting_peft_forward(monkeypatch)
    a = outputs_and_gradients(theirs, BATCH)
    assert len(calls) == 2 * len(TARGETS)
    b = outputs_and_gradients(ours, BATCH)
    assert len(calls) == 2 * len(TARGETS)  # the fused path ran: PEFT's forward was not called again
    torch.testing.assert_close(b[0], a[0], rtol=1e-5, atol=1e-6)
    assert a[1].keys() == b[1].keys() and len(a[1]) == (2 if method == "lora" else 3) * 2 * len(TARGETS)
    for name in a[1]:
        torch.testing.assert_close(b[1][name], a[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_dropout_training_and_bf16_autocast_also_match():
    theirs = adapted("lora", dropout=0.2)
    ours = copy.deepcopy(theirs)
    fuse_adapter_forward(ours)
    theirs.train(), ours.train()
    a, b = outputs_and_gradients(theirs, BATCH, seed=5), outputs_and_gradients(ours, BATCH, seed=5)
    torch.testing.assert_close(b[0], a[0], rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = outputs_and_gradients(theirs, BATCH, seed=5), outputs_and_gradients(ours, BATCH, seed=5)
    assert b[0].dtype == a[0].dtype
    torch.testing.assert_close(b[0].float(), a[0].float(), rtol=0.05, atol=0.05)  # bf16 rounding, other order
    assert all(g.dtype == torch.float32 for g in b[1].values())


def test_disabled_or_merged_adapters_take_peft_forward(monkeypatch):
    theirs = adapted("lora")
    ours = copy.deepcopy(theirs)
    fuse_adapter_forward(ours)
    base = tiny_bert()
    base.eval(), theirs.eval(), ours.eval()
    calls = counting_peft_forward(monkeypatch)
    with torch.no_grad(), ours.disable_adapter():
        plain = ours(**BATCH).logits
    assert len(calls) == 2 * len(TARGETS)
    torch.testing.assert_close(plain, base(**BATCH).logits)  # adapters off: the base model
    ours.merge_adapter()
    with torch.no_grad():
        merged = ours(**BATCH).logits
        torch.testing.assert_close(merged, theirs(**BATCH).logits, rtol=1e-5, atol=1e-5)


class CastCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the casts of bf16 activations (tensors with the tokens' leading dimension) to fp32."""

    def __init__(self, tokens: int):
        super().__init__()
        self.tokens, self.upcasts = tokens, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        source = args[0] if args else None
        if func is torch.ops.aten._to_copy.default and source.dtype == torch.bfloat16 \
                and (kwargs or {}).get("dtype") == torch.float32 and source.shape[0] == self.tokens:
            self.upcasts += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_under_autocast_a_bf16_input_reaches_the_low_rank_product_without_a_round_trip_to_fp32(method, monkeypatch):
    """PEFT casts the adapter input to the adapter's dtype (fp32), and autocast casts it back for the
    matmul: the fused forward skips the pair (the product is the same, an exact round trip)."""
    layer = next(m for m in fuse_and_get_layers(adapted(method)))
    x = torch.randn(7, layer.in_features, dtype=torch.bfloat16, requires_grad=True)
    counter = CastCounter(tokens=7)
    with counter, torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()
    assert counter.upcasts == 0
    # With PEFT's cast (the round trip) the fused forward gives the very same values.
    monkeypatch.setattr(fused, "adapter_input", lambda layer, flat, dtype: layer._cast_input_dtype(flat, dtype))
    counter = CastCounter(tokens=7)
    with counter, torch.autocast("cpu", dtype=torch.bfloat16):
        reference = layer(x)
    assert counter.upcasts == 1
    torch.testing.assert_close(out, reference, rtol=0, atol=0)


def fuse_and_get_layers(model):
    fuse_adapter_forward(model)
    return [m for m in model.modules() if type(m) in (LoraLinear, SVDLinear)]
