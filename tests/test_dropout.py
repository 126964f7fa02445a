"""adarank/dropout.py: the cheaper dropout mask is nn.Dropout's distribution (keep probability 1 - p,
independent elements, kept values scaled by 1 / (1 - p)), follows the seed, and trains."""

import math

import pytest
import torch
from torch import nn

from adarank.dropout import FastDropout, keep_mask, use_fast_dropout


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


def test_runs_take_pytorch_s_dropout_unless_asked(tiny_model, tmp_path):
    """--fast_dropout is opt-in: without it a run's random numbers are those of earlier versions."""
    import json

    from conftest import QUICK, run_task

    counts = {}
    for name, flags in (("plain", ()), ("fast", ("--fast_dropout",))):
        out = tmp_path / name
        assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--method", "lora", "--max_steps", "2",
                        "--max_eval_samples", "8", "--output_dir", str(out), *QUICK, *flags) == 0
        counts[name] = json.loads((out / "config.json").read_text())["fast_dropout_layers"]
    assert counts["plain"] == 0 and counts["fast"] > 0
