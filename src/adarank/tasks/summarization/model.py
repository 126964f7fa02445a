"""Loading a pretrained generator: a decoder-only causal LM or an encoder-decoder (BART, T5).

The embedded default, which loads offline, is SmolLM2-135M-Instruct (``adarank.loading``).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from adarank.errors import UsageError
from adarank.loading import (EMBEDDED_GENERATOR, embedded_generator_path, explained_load_errors, finish_loading,
                             four_bit_loading, refuse_quantized_checkpoint)


@dataclass(frozen=True)
class GeneratorShape:
    """What tokenisation, batching and generation need to know of a loaded generator."""

    encoder_decoder: bool
    chat_template: bool  # a decoder-only model whose tokenizer has one: prompts are wrapped in it
    max_positions: int | None  # the longest sequence it takes (None: not stated)

    @classmethod
    def of(cls, tokenizer, model) -> GeneratorShape:
        encoder_decoder = bool(model.config.is_encoder_decoder)
        return cls(encoder_decoder=encoder_decoder,
                   chat_template=bool(getattr(tokenizer, "chat_template", None)) and not encoder_decoder,
                   max_positions=getattr(model.config, "max_position_embeddings", None))


def load_generator(name_or_path: str | None, load_in_4bit: bool = False, compute_dtype: str | None = None):
    """(tokenizer, model, where it came from); the model is a causal LM or an encoder-decoder,
    as its configuration says."""
    source = embedded_generator_path() if name_or_path is None else name_or_path
    load_kwargs = four_bit_loading(compute_dtype, keep=["lm_head"]) if load_in_4bit else {}
    with explained_load_errors("generator", source, "pass --model_name_or_path a local folder of a causal LM or "
                               "encoder-decoder, or a hub name reachable from here (offline, the embedded default "
                               "works)"):
        tokenizer = AutoTokenizer.from_pretrained(source)
        config = AutoConfig.from_pretrained(source)
        refuse_quantized_checkpoint(config, source)
        kind = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = kind.from_pretrained(source, **load_kwargs)
    if tokenizer.pad_token_id is None:  # decoder-only tokenizers often have none: pad with eos
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise UsageError(f"the tokenizer of {source!r} has no end-of-sequence token, so a summary could not end: "
                         "use a model whose tokenizer defines eos_token")
    finish_loading(model, tokenizer, source, load_kwargs)
    return tokenizer, model, EMBEDDED_GENERATOR if name_or_path is None else name_or_path
