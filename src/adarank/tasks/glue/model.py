"""Loading the pretrained encoder and its tokenizer for a GLUE task: sequence classification with
the task's labels (or regression)."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from adarank.loading import (EMBEDDED_MODEL, embedded_model_path, explained_load_errors, finish_loading,
                             four_bit_loading, refuse_quantized_checkpoint)
from adarank.tasks.glue.spec import GlueSpec


def load_model(name_or_path: str | None, task: GlueSpec, load_in_4bit: bool = False,
               compute_dtype: str | None = None, classifier_dropout: float | None = None, **config_kwargs):
    """(tokenizer, model, where it came from) for sequence classification on ``task``;
    ``config_kwargs`` override the model's configuration (e.g. hidden_dropout_prob)."""
    source = embedded_model_path() if name_or_path is None else name_or_path
    load_kwargs = four_bit_loading(compute_dtype) if load_in_4bit else {}
    label_kwargs = {"num_labels": task.num_labels, **config_kwargs}
    if task.is_regression:
        label_kwargs["problem_type"] = "regression"
    else:
        label_kwargs["id2label"] = dict(enumerate(task.labels))
        label_kwargs["label2id"] = {name: i for i, name in enumerate(task.labels)}
    with explained_load_errors("model", source, "pass --model_name_or_path a local model folder or a hub name "
                               "reachable from here (offline, the default embedded model works)"):
        tokenizer = AutoTokenizer.from_pretrained(source)
        config = AutoConfig.from_pretrained(source, **label_kwargs)
        refuse_quantized_checkpoint(config, source)
        if classifier_dropout is not None:  # BERT-style heads read classifier_dropout, DeBERTa's cls_dropout
            config.classifier_dropout = config.cls_dropout = classifier_dropout
        # A checkpoint with a head for another label count gets a fresh head, as in run_glue.py.
        model = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, ignore_mismatched_sizes=True, **load_kwargs
        )
    finish_loading(model, tokenizer, source, load_kwargs)
    return tokenizer, model, EMBEDDED_MODEL if name_or_path is None else name_or_path
