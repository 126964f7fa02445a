"""Batched summary generation with beam search and the KV cache, timed per article.

A decoder-only model's sequence holds the article too, and transformers' no-repeat rule
would then forbid copying any three words of it: the model routes around the ban (seen:
"bridgeopened" for "bridge opened"). So for those models the rule looks at the summary alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor

from adarank.tasks.summarization.data import SummaryCollator


@dataclass(frozen=True)
class GenerationSettings:
    num_beams: int
    max_new_tokens: int
    no_repeat_ngram_size: int
    length_penalty: float
    repetition_penalty: float

    def as_generate_kwargs(self) -> dict:
        kwargs = {**asdict(self), "do_sample": False, "use_cache": True}
        if self.num_beams > 1:
            kwargs["early_stopping"] = True
        else:
            kwargs.pop("length_penalty")  # beams only
        return kwargs


class NoRepeatNGramAfter(NoRepeatNGramLogitsProcessor):
    """No repeated n-gram within the tokens after column ``start`` (the generated summary)."""

    def __init__(self, ngram_size: int, start: int):
        super().__init__(ngram_size)
        self.start = start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return super().__call__(input_ids[:, self.start:], scores)


def generate_summaries(model, tokenizer, dataset, settings: GenerationSettings, batch_size: int,
                       encoder_decoder: bool, description: str = "generating", bf16: bool = False
                       ) -> tuple[list[str], float]:
    """(one summary per row of ``dataset``, seconds per article). ``bf16``: under bf16 autocast, as
    the run trained (the Trainer's autocast wraps the model's forward, which generate does not call)."""
    collate = SummaryCollator(tokenizer, encoder_decoder, generation=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    summaries: list[str] = []
    started = time.perf_counter()
    try:
        with (torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
              tqdm(total=len(dataset), desc=description, unit="article") as progress):
            for start in range(0, len(dataset), batch_size):
                rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                batch = {k: v.to(device) for k, v in collate(rows).items()}
                kwargs = settings.as_generate_kwargs()
                if not encoder_decoder and settings.no_repeat_ngram_size:
                    ngram = kwargs.pop("no_repeat_ngram_size")
                    kwargs["logits_processor"] = LogitsProcessorList(
                        [NoRepeatNGramAfter(ngram, batch["input_ids"].shape[1])])
                output = model.generate(**batch, **kwargs, pad_token_id=tokenizer.pad_token_id,
                                        eos_token_id=tokenizer.eos_token_id)
                new = output if encoder_decoder else output[:, batch["input_ids"].shape[1]:]
                summaries += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
                progress.update(len(rows))
                progress.set_postfix(s_per_article=f"{(time.perf_counter() - started) / len(summaries):.1f}")
    finally:
        model.train(was_training)
    return summaries, (time.perf_counter() - started) / max(1, len(dataset))
