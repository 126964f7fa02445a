"""adarank/dropout.py: the cheaper dropout mask is nn.Dropout's distribution (keep probability 1 - p,
independent elements, kept values scaled by 1 / (1 - p)), follows the seed, and trains."""

import math

import pytest
import torch
from torch import nn

from adarank.dropout import (ATTENTION, FastDropout, fast_dropout_attention, keep_mask, use_fast_attention_dropout,
                             use_fast_dropout)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_each_element_is_kept_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    n = 4_000_000
    mask = keep_mask(torch.Size([n]), p)
    assert mask.dtype == torch.bool
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(mask.float().mean().item() - (1 - p)) < 5 * sigma
    # Both halves of a 64-bit draw (even and odd positions) alike, and neighbours independent.
    for half in (mask[0::2], mask[1::2]):
        assert abs(half.float().mean().item() - (1 - p)) < 5 * sigma * math.sqrt(2)
    both = (mask[:-1] & mask[1:]).float().mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / n)


def test_every_bit_of_the_31_bit_values_is_fair():
    """A mask built from a biased bit would keep a wrong share for some p; each of the 31 bits of
    both halves is one half of the time."""
    torch.manual_seed(1)
    words = torch.empty(500_000, dtype=torch.int64).random_()
    halves = words.view(torch.int32).bitwise_and(2**31 - 1)
    for bit in range(31):
        share = halves.bitwise_right_shift(bit).bitwise_and(1).float().mean().item()
        assert abs(share - 0.5) < 5 * math.sqrt(0.25 / halves.numel()), bit


def test_forward_and_backward_are_x_times_mask_over_keep_probability():
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    layer = FastDropout(0.25).train()
    torch.manual_seed(3)
    y = layer(x)
    torch.manual_seed(3)
    mask = keep_mask(x.shape, 0.25)
    torch.testing.assert_close(y, x * mask * (1 / 0.75), rtol=0, atol=0)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, mask * (1 / 0.75), rtol=0, atol=0)


def test_the_same_seed_gives_the_same_mask_and_eval_mode_changes_nothing():
    x = torch.randn(1000)
    layer = FastDropout(0.1).train()
    torch.manual_seed(4)
    first = layer(x)
    torch.manual_seed(4)
    assert torch.equal(layer(x), first)
    assert torch.equal(layer.eval()(x), x)


def test_a_model_s_dropouts_are_replaced_and_it_still_trains(tiny_model):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    plain = sum(type(m) is nn.Dropout for m in model.modules())
    assert plain > 0 and use_fast_dropout(model) == plain
    assert not any(type(m) is nn.Dropout for m in model.modules())
    model.train()
    batch = {"input_ids": torch.randint(5, 100, (4, 9)), "labels": torch.tensor([0, 1, 0, 1])}
    loss = model(**batch).loss
    loss.backward()
    assert math.isfinite(loss.item()) and model.classifier.weight.grad.abs().sum() > 0


def attention_inputs(seed: int, dtype=torch.float32):
    """Query, key and value of 3 sequences x 4 heads x 7 tokens, and transformers' sdpa padding mask
    (True where a token is attended: the second and third sequences end in padding)."""
    torch.manual_seed(seed)
    q, k, v = (torch.randn(3, 4, 7, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    attended = torch.ones(3, 1, 7, 7, dtype=torch.bool)
    attended[1, ..., 5:] = False
    attended[2, ..., 2:] = False
    return q, k, v, attended


class AttentionModule(nn.Module):
    is_causal = False


def test_attention_drops_probabilities_with_the_cheap_mask_and_keeps_sdpa_s_computation():
    """softmax(q k^T / sqrt(d) + padding) * mask / (1 - p) @ v, with the mask keep_mask draws, forward
    and backward; in evaluation it is transformers' sdpa, bit for bit."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v, attended = attention_inputs(5)
    module = AttentionModule().train()
    torch.manual_seed(6)
    out, _ = fast_dropout_attention(module, q, k, v, attended, dropout=0.25)
    torch.manual_seed(6)
    keep = keep_mask(torch.Size([3, 4, 7, 7]), 0.25)
    assert 0 < keep.sum() < keep.numel()
    scores = q @ k.transpose(2, 3) / math.sqrt(8) + torch.where(attended, 0.0, float("-inf"))
    expected = ((torch.softmax(scores, dim=-1) * keep / 0.75) @ v).transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    for got, want in zip(grads, torch.autograd.grad(expected.square().sum(), (q, k, v))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    module.eval()
    assert torch.equal(fast_dropout_attention(module, q, k, v, attended, dropout=0.0)[0],
                       sdpa_attention_forward(module, q, k, v, attended, dropout=0.0)[0])


@pytest.mark.parametrize("dtype, autocast", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, True)])
def test_with_every_probability_kept_attention_is_pytorch_s_kernel_bit_for_bit(monkeypatch, dtype, autocast):
    """With the mask all True, the attention is PyTorch's own composite kernel without dropout, times
    1 / (1 - p) (a power of two here, so exactly), in fp32 and under bf16 autocast (fp32 inside the
    kernel, bf16 out), a sequence with nothing to attend included (zeros, not NaN)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from adarank import dropout

    q, k, v, attended = attention_inputs(7, dtype)
    attended[2] = False
    monkeypatch.setattr(dropout, "keep_mask", lambda shape, p: torch.ones(shape, dtype=torch.bool))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, _ = fast_dropout_attention(AttentionModule().train(), q, k, v, attended, dropout=0.5)
        with sdpa_kernel(SDPBackend.MATH):
            plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attended, dropout_p=0.0)
    assert out.dtype == plain.dtype == (torch.bfloat16 if autocast else dtype)
    assert torch.equal(out, 2 * plain.transpose(1, 2)) and not out.isnan().any()


def test_a_model_s_attention_switches_evaluates_the_same_and_trains(tiny_model, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).eval()
    batch = {"input_ids": torch.randint(5, 100, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.long),
             "labels": torch.tensor([0, 1, 0, 1])}
    batch["attention_mask"][1, 6:] = 0
    before = model(**batch).logits
    assert use_fast_attention_dropout(model) == model.config.num_hidden_layers
    assert model.config._attn_implementation == ATTENTION
    assert torch.equal(model(**batch).logits, before)
    model.train()
    from adarank import dropout

    shapes = []
    drawn = dropout.keep_mask
    monkeypatch.setattr(dropout, "keep_mask", lambda shape, p: shapes.append(tuple(shape)) or drawn(shape, p))
    torch.manual_seed(8)
    first = model(**batch).loss
    heads = model.config.num_attention_heads
    assert shapes.count((4, heads, 9, 9)) == model.config.num_hidden_layers  # each layer's probabilities
    torch.manual_seed(8)
    assert torch.equal(model(**batch).loss, first)  # the seed decides the masks
    first.backward()
    assert math.isfinite(first.item()) and model.classifier.weight.grad.abs().sum() > 0


def test_attention_without_dropout_is_left_alone(tiny_model):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2,
                                                               attention_probs_dropout_prob=0.0)
    assert use_fast_attention_dropout(model) == 0 and model.config._attn_implementation == "sdpa"


def test_runs_take_pytorch_s_dropout_unless_asked(tiny_model, tmp_path):
    """--fast_dropout is opt-in: without it a run's random numbers are those of earlier versions."""
    import json

    from conftest import QUICK, run_task

    counts = {}
    for name, flags in (("plain", ()), ("fast", ("--fast_dropout",))):
        out = tmp_path / name
        assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--method", "lora", "--max_steps", "2",
                        "--max_eval_samples", "8", "--output_dir", str(out), *QUICK, *flags) == 0
        config = json.loads((out / "config.json").read_text())
        counts[name] = (config["fast_dropout_layers"], config["fast_attention_dropout_layers"])
    assert counts["plain"] == (0, 0) and counts["fast"][0] > 0 and counts["fast"][1] == 2  # tiny_model: 2 layers
