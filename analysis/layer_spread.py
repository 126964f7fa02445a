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
from safetensors import SafetensorError
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from adarank.errors import UsageError  # noqa: E402
from trained import model_tool_parser, trained_model  # noqa: E402  (adarank before peft: its filter drops bitsandbytes' notice)
from cli import at_least, fail_cleanly  # noqa: E402
from run_files import Damaged, read_object  # noqa: E402
from run_reader import AnalysisError, load_run  # noqa: E402

SHOWN = 4  # adapters listed per run


def trained_run(run_dir: Path, data_dir: str, examples: int, split: str = "train"):
    """trained_model's (config, model, batch) for the tools that load a run's adapter (row_energy too):
    its refusals, and a run file it cannot read (config.json without the model or the modules the run
    trained, adapter/ missing a file or damaged), end in one line (AnalysisError)."""
    try:
        config, model, batch = trained_model(run_dir, data_dir, examples, split=split)
    except UsageError as error:
        raise AnalysisError(str(error)) from None
    except (KeyError, TypeError, ValueError, SafetensorError):  # what config.json, PEFT and safetensors raise
        if problem := unreadable(run_dir):
            raise problem from None
        raise
    names, config_path = config.get("target_modules"), run_dir / "config.json"
    if names is None:
        raise Damaged(config_path, "it names no target_modules")
    if not (isinstance(names, list) and names and all(isinstance(name, str) for name in names)):
        raise Damaged(config_path, "its target_modules is not a list of module names")
    for name in names:
        try:
            adapted = hasattr(model.base_model.model.get_submodule(name), "base_layer")
        except AttributeError:  # no such module
            adapted = False
        if not adapted:
            raise Damaged(config_path, f"its target_modules names {name}, which the run's adapter does not adapt")
    return config, model, batch


def unreadable(run_dir: Path) -> AnalysisError | None:
    """Why trained_model could not rebuild the run's model from its files, naming the file (None: no
    file of the run is at fault)."""
    config_path, adapter = run_dir / "config.json", run_dir / "adapter"
    model = (load_run(run_dir).config.get("arguments") or {}).get("model")
    if model is None:
        return Damaged(config_path, "it names no arguments.model, the base model the run adapted")
    if "model_name_or_path" not in model:
        return Damaged(config_path, "its arguments.model names no model_name_or_path")
    settings = adapter / "adapter_config.json"
    if not settings.is_file():
        return AnalysisError(f"{settings} is missing (PEFT reads the adapter's settings there): "
                             "train the run again or leave it out")
    try:
        if "peft_type" not in read_object(settings):
            return Damaged(settings, "it names no peft_type")
        load_file(str(adapter / "adapter_model.safetensors"))
    except Damaged as damage:
        return damage
    except SafetensorError as error:
        return Damaged(adapter / "adapter_model.safetensors", str(error))
    return None


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
    config, model, batch = trained_run(run_dir, data_dir, examples, split="dev")
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
        print("\n".join(describe(run_dir, args.data_dir, args.examples)))


if __name__ == "__main__":
    main()
