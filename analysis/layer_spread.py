"""Does a finished run's output still depend on its input? Layer by layer, how much the first
token's hidden state (BERT's [CLS], which the classifier reads) varies across dev sentences, and
which adapters' outputs dominate the layers they add to.

    python analysis/layer_spread.py RUN [RUN ...] --data_dir ../shared/data/glue_data [--examples 256]

For each run, over the first --examples dev sentences passed through the run's own trained model:
- the logits' spread: their standard deviation across sentences, averaged over classes (0: the
  model gives every sentence the same answer);
- for the embeddings and each layer, the first token's relative spread: the norm of its standard
  deviation across sentences over its mean norm;
- the adapters with the largest share at the first token: |the adapter's update to the layer's
  output| / |the frozen layer's output|, averaged over sentences.
A run stuck at the majority class whose spread falls to near zero at some layer has lost its input
there (the layers after it cannot bring it back); one whose spread stays has not, and its head or
its training is where to look.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from adarank.errors import UsageError  # noqa: E402
from trained import model_tool_parser, trained_model  # noqa: E402  (adarank before peft: its filter drops bitsandbytes' notice)
from cli import at_least, fail_cleanly  # noqa: E402
from run_reader import AnalysisError  # noqa: E402

SHOWN = 4  # adapters listed per run


def relative_spread(first_token: torch.Tensor) -> float:
    """|std over sentences| / mean |h|, for [sentences, width] hidden states (0 where nothing varies,
    even a state that is zero throughout)."""
    spread = first_token.double().std(dim=0).norm()
    return 0.0 if spread == 0 else float(spread / first_token.double().norm(dim=1).mean())


def adapter_shares(model, batch: dict, names: list[str]) -> dict[str, float]:
    """Module name -> mean over sentences of |adapter's update| / |frozen layer's output| at the
    first token, for PEFT's adapted layers (the update: the adapted layer's output less its
    ``base_layer``'s)."""
    outputs, hooks = {}, []
    for name in names:
        layer = model.base_model.model.get_submodule(name)
        hooks.append(layer.base_layer.register_forward_hook(  # a copy: AdaLoRA adds its update in place
            lambda m, i, o, name=name: outputs.__setitem__((name, "base"), o[:, 0].clone())))
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, name=name: outputs.__setitem__((name, "full"), o[:, 0])))
    with torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    return {name: float(((outputs[name, "full"] - outputs[name, "base"]).double().norm(dim=1)
                         / outputs[name, "base"].double().norm(dim=1)).mean()) for name in names}


def spreads(model, batch: dict) -> tuple[float, list[float]]:
    """The logits' spread and the first token's relative spread after the embeddings and each layer."""
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    logits = out.logits.double()
    return float(logits.std(dim=0).mean()), [relative_spread(h[:, 0]) for h in out.hidden_states]


def describe(run_dir: Path, data_dir: str, examples: int) -> list[str]:
    config, model, batch = trained_model(run_dir, data_dir, examples, split="dev")
    logits, layers = spreads(model, batch)
    shares = adapter_shares(model, batch, config["target_modules"])
    top = sorted(shares.items(), key=lambda item: -item[1])[:SHOWN]
    return [f"{run_dir.name}: logits' spread {logits:.3g}",
            "  first token's relative spread, embeddings then each layer: " + ", ".join(f"{s:.2g}" for s in layers),
            "  largest adapter shares at the first token: " + "; ".join(f"{name} {share:.3g}" for name, share in top)]


@fail_cleanly
def main(argv: list[str] | None = None) -> None:
    args = model_tool_parser(__doc__, 256, "dev sentences to pass through the model").parse_args(argv)
    at_least(2, examples=args.examples)  # a spread needs two sentences
    for run_dir in args.runs:
        try:
            print("\n".join(describe(run_dir, args.data_dir, args.examples)))
        except UsageError as error:
            raise AnalysisError(str(error)) from None


if __name__ == "__main__":
    main()
