"""Summarization (CNN/DailyMail and any set of the same shape): the second task family.

Training minimises the cross-entropy of the reference summary (decoder-only models: the
summary tokens after a prompt; encoder-decoders: the decoder's targets). The final
evaluation generates a summary of every article of each evaluation split with beam search
and scores it with ROUGE-1/2/L/Lsum (F-measure x 100), written per article to
predictions.jsonl. Evaluations during training report the loss alone: generating is slow.

The recipe is the authors' CNN/DailyMail script (QingruZhang/AdaLoRA,
NLG_QA/scripts/run_bart_cnndailymail.sh): BART-large, all six matrix kinds
(q_proj, k_proj, v_proj, out_proj, fc1, fc2), AdaLoRA init rank 4 -> target 2, alpha 32,
gamma 0.1, tinit 5000, tfinal 85000, delta_t 100, global batch 32 (8 GPUs x 4), lr 5e-4,
15 epochs, 3000 warm-up steps, source 1024 and target 160 tokens, 4 beams. The paper
reports its CNN/DailyMail numbers from that script, so both recipe names give it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

from peft import TaskType

from adarank.errors import UsageError
from adarank.tasks.base import PAPER_BATCH_SIZE, LoadedModel, Recipe, TaskData
from adarank.tasks.summarization import rouge
from adarank.tasks.summarization.arguments import SummarizationArguments, check_arguments
from adarank.tasks.summarization.data import Prompt, SummaryCollator, load_summaries, tokenize
from adarank.tasks.summarization.generation import GenerationSettings, generate_summaries
from adarank.tasks.summarization.model import GeneratorShape, load_generator

CNN_DM_TRAIN_SIZE = 287113  # articles in cnn_dailymail 3.0.0's train split
AUTHORS_SCRIPT = Recipe(learning_rate=5e-4, epochs=15, orth_reg_weight=0.1, tinit=5000, delta_t=100, tfinal=85000,
                        lora_alpha=32, warmup=3000, weight_decay=0.0, max_seq_length=1024, init_r=4, target_r=2)


@dataclass(frozen=True)
class SummarizationTask:
    name: str = "cnndailymail"
    options: SummarizationArguments = field(default_factory=SummarizationArguments)
    evaluate_only: bool = False  # --method none: score the base model, train nothing
    shape: GeneratorShape | None = None  # the loaded model's: set on the task load_model returns

    family: ClassVar[str] = "summarization"
    metrics: ClassVar[tuple[str, ...]] = rouge.ROUGE_TYPES  # the first is the headline, as in the original's tables
    arguments: ClassVar[type] = SummarizationArguments
    allows_no_adapter: ClassVar[bool] = True  # a pretrained generator summarises without training
    cpu_bf16_measured: ClassVar[bool] = False  # bf16 vs fp32 on the CPU: ROUGE not yet compared
    recipes: ClassVar[dict[str, Recipe]] = {"paper": AUTHORS_SCRIPT, "official": AUTHORS_SCRIPT}

    @property
    def dev_splits(self) -> dict[str, str]:
        o = self.options
        test = o.test_file is not None or (o.data_file is None and o.validation_file is None)
        return {"validation": "validation", **({"test": "test"} if test else {})}

    def configure(self, options: SummarizationArguments | None, evaluate_only: bool) -> SummarizationTask:
        options = options or SummarizationArguments()
        check_arguments(options)
        return replace(self, options=options, evaluate_only=evaluate_only)

    def training_defaults(self, demo: bool) -> dict:
        # The recipe's global batch of 32 as 8 x 4 accumulation steps, which fits a CPU or one GPU.
        defaults = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4, "per_device_eval_batch_size": 8}
        if demo:  # a minute on a laptop: the demo's stories are learnt in a few steps
            defaults.update(gradient_accumulation_steps=1, num_train_epochs=2, max_seq_length=96)
        return defaults

    def full_run_steps(self, recipe: Recipe) -> int:
        return math.ceil(CNN_DM_TRAIN_SIZE / PAPER_BATCH_SIZE) * recipe.epochs

    def peft_task_type(self, model) -> TaskType:
        return TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else TaskType.CAUSAL_LM

    def generation(self) -> GenerationSettings:
        o = self.options
        return GenerationSettings(num_beams=o.num_beams, max_new_tokens=o.max_new_tokens or o.max_target_length,
                                  no_repeat_ngram_size=o.no_repeat_ngram_size, length_penalty=o.length_penalty,
                                  repetition_penalty=o.repetition_penalty)

    @property
    def model_shape(self) -> GeneratorShape:
        if self.shape is None:
            raise RuntimeError("ask the task that load_model returned: it knows the model's shape")
        return self.shape

    def describe(self) -> dict:
        """config.json's ``summarization`` entry: what the options resolved to."""
        return {"encoder_decoder": self.model_shape.encoder_decoder, "chat_template": self.model_shape.chat_template,
                "prompt_template": None if self.model_shape.encoder_decoder else self.options.prompt_template,
                "generation": asdict(self.generation()), "evaluate_only": self.evaluate_only}

    # --- the task family's side of the pipeline (adarank.tasks.base.Task) ---------------------

    def load_data(self, data_dir, demo, max_train_samples, max_eval_samples) -> TaskData:
        if data_dir is not None:
            raise UsageError("--data_dir is for GLUE: give summarization data with --data_file "
                             "(and --validation_file / --test_file)")
        return load_summaries(self.options, demo, max_train_samples, max_eval_samples, self.evaluate_only)

    def load_model(self, name_or_path, load_in_4bit=False, compute_dtype=None, classifier_dropout=None) -> LoadedModel:
        """``classifier_dropout`` has no meaning here: a generator has no classification head. The recipes set
        none, so a value is the user's: refused before the model is loaded, not dropped."""
        if classifier_dropout is not None:
            raise UsageError(f"--classifier_dropout {classifier_dropout:g} is the dropout before a classification "
                             "head, and a generator has none: leave it out")
        tokenizer, model, name = load_generator(name_or_path, load_in_4bit, compute_dtype)
        return LoadedModel(tokenizer, model, name, replace(self, shape=GeneratorShape.of(tokenizer, model)))

    def head_modules(self, model) -> list[str]:
        return []  # a generator's output layer is its (tied) embedding: frozen, as in the paper

    def tokenize(self, data: TaskData, tokenizer, max_seq_length: int) -> TaskData:
        shape = self.model_shape
        prompt = None if shape.encoder_decoder else Prompt(self.options.prompt_template, shape.chat_template)
        tokenized = tokenize(data, tokenizer, max_seq_length, self.options.max_target_length,
                             shape.encoder_decoder, prompt)
        if shape.max_positions and not shape.encoder_decoder:
            _check_positions(tokenized, shape.max_positions, self.generation().max_new_tokens)
        return tokenized

    def collator(self, tokenizer):
        return SummaryCollator(tokenizer, self.model_shape.encoder_decoder)

    def trainer_metrics(self):
        return None  # evaluations during training: the loss alone

    def evaluate(self, trainer, dev: dict) -> tuple[dict, list[dict]]:
        scores, rows = {}, []
        settings = self.generation()
        for split, dataset in dev.items():
            prefix = "eval" if len(dev) == 1 else f"eval_{split}"
            loss = trainer.evaluate(dataset, metric_key_prefix=prefix)[f"{prefix}_loss"]
            summaries, seconds = generate_summaries(
                trainer.model, trainer.processing_class, dataset, settings, trainer.args.per_device_eval_batch_size,
                self.model_shape.encoder_decoder, description=f"summarising {split}", bf16=trainer.args.bf16)
            each = rouge.score_each(summaries, dataset["summary"])
            scores.update({f"{prefix}_{kind}": value for kind, value in rouge.mean_scores(each).items()})
            scores.update({f"{prefix}_loss": loss, f"{prefix}_examples": len(dataset),
                           f"{prefix}_seconds_per_article": round(seconds, 3)})
            rows += [{"split": split, "index": i, "id": id_, "reference": reference, "prediction": summary,
                      **{kind: round(value, 4) for kind, value in score.items()}}
                     for i, (id_, reference, summary, score) in
                     enumerate(zip(dataset["id"], dataset["summary"], summaries, each))]
        return scores, rows

    def predictions_file(self, rows: list[dict], note: str | None) -> tuple[str, str]:
        lines = ([json.dumps({"note": note})] if note else []) + [json.dumps(row, ensure_ascii=False) for row in rows]
        return "predictions.jsonl", "\n".join(lines) + "\n"


SUMMARIZATION_TASKS = {"cnndailymail": SummarizationTask()}


def _check_positions(tokenized: TaskData, positions: int, new_tokens: int) -> None:
    """Refuse sequences a decoder-only model has no positions for: a whole record (prompt, article and summary),
    trained on or scored for its loss, or a dev prompt alone (generation feeds no summary) with the
    --max_new_tokens generated after it."""
    dev = [split for split in tokenized.dev.values() if len(split)]
    trained = max((len(ids) for split in [tokenized.train, *dev] if len(split) for ids in split["input_ids"]),
                  default=0)
    prompted = max((length for split in dev for length in split["prompt_length"]), default=0)
    if trained > positions:
        raise UsageError(f"prompt, article and summary take up to {trained} tokens, more than this model's "
                         f"{positions} positions: lower --max_seq_length or --max_target_length")
    if prompted + new_tokens > positions:
        raise UsageError(f"a dev prompt of up to {prompted} tokens and --max_new_tokens {new_tokens} take "
                         f"{prompted + new_tokens} positions, more than this model's {positions}: lower "
                         "--max_new_tokens (default: --max_target_length) or --max_seq_length")
