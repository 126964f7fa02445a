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

import math
from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

from peft import TaskType

from adarank import rouge
from adarank.errors import UsageError
from adarank.generation import GenerationSettings, generate_summaries
from adarank.lm_models import load_generator
from adarank.summary_data import Files, Prompt, SummaryCollator, SummaryData, load_summaries, tokenize
from adarank.tasks.glue import PAPER_BATCH_SIZE, Recipe

CNN_DM_TRAIN_SIZE = 287113  # articles in cnn_dailymail 3.0.0's train split
AUTHORS_SCRIPT = Recipe(learning_rate=5e-4, epochs=15, orth_reg_weight=0.1, tinit=5000, delta_t=100, tfinal=85000,
                        lora_alpha=32, warmup=3000, weight_decay=0.0, max_seq_length=1024, init_r=4, target_r=2)
MAX_TARGET_LENGTH = 160
DEFAULT_PROMPT = "Summarize the following news article in three sentences.\n\n{text}"


@dataclass
class SummarizationArguments:
    """The summarization family's own flags (beside TrainingArguments and the adapter flags)."""

    data_file: str | None = field(default=None, metadata={
        "help": "Training data, JSON Lines or CSV (default: the hub's cnn_dailymail 3.0.0). Alone, its last "
                "--validation_split_percentage of records are held out; with --method none and no percentage, "
                "all are scored."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation data, scored at the end."})
    test_file: str | None = field(default=None, metadata={"help": "Test data, also scored at the end."})
    validation_split_percentage: float | None = field(default=None, metadata={
        "help": "Of a single --data_file: the share of records, taken from its end, held out for validation "
                "(default 10; --method none scores the same records when given it, else all)."})
    text_column: str = field(default="article", metadata={"help": "The column holding the text (XSum: document)."})
    summary_column: str = field(default="highlights", metadata={"help": "The reference summary (XSum: summary)."})
    max_target_length: int = field(default=MAX_TARGET_LENGTH, metadata={
        "help": "Reference summaries are cut to this many tokens in training (the recipe's 160)."})
    num_beams: int = field(default=4, metadata={"help": "Beam search width at evaluation (the paper: 4; 1: greedy)."})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "Longest generated summary in tokens (default: --max_target_length)."})
    no_repeat_ngram_size: int = field(default=3, metadata={
        "help": "Never repeat an n-gram of this size in a summary (0: off). Tuned small models loop without it."})
    length_penalty: float = field(default=1.0, metadata={
        "help": "Beam search's length exponent (above 1 favours longer summaries)."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Above 1 discourages repeated tokens."})
    prompt_template: str = field(default=DEFAULT_PROMPT, metadata={
        "help": "Decoder-only models: the prompt, with {text} where the article goes (wrapped in the model's "
                "chat template where it has one)."})


@dataclass
class SummarizationTask:
    name: str = "cnndailymail"
    options: SummarizationArguments = field(default_factory=SummarizationArguments)
    evaluate_only: bool = False  # --method none: score the base model, train nothing
    # Learned from the model at load_model.
    encoder_decoder: bool = False
    chat_template: bool = False
    max_positions: int | None = None

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
        for name in ("max_target_length", "num_beams"):
            if getattr(options, name) < 1:
                raise UsageError(f"--{name} {getattr(options, name)} must be at least 1")
        if options.max_new_tokens is not None and options.max_new_tokens < 1:
            raise UsageError(f"--max_new_tokens {options.max_new_tokens} must be at least 1")
        if options.no_repeat_ngram_size < 0:
            raise UsageError(f"--no_repeat_ngram_size {options.no_repeat_ngram_size} must be 0 (off) or more")
        if options.prompt_template.count("{text}") != 1:
            raise UsageError("--prompt_template must hold {text} exactly once, where the article goes")
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

    def describe(self) -> dict:
        """config.json's ``summarization`` entry: what the options resolved to."""
        return {"encoder_decoder": self.encoder_decoder, "chat_template": self.chat_template,
                "prompt_template": None if self.encoder_decoder else self.options.prompt_template,
                "generation": asdict(self.generation()), "evaluate_only": self.evaluate_only}

    # --- the task family's side of the pipeline (adarank.tasks.base.Task) ---------------------

    def load_data(self, data_dir, demo, max_train_samples, max_eval_samples) -> SummaryData:
        if data_dir is not None:
            raise UsageError("--data_dir is for GLUE: give summarization data with --data_file "
                             "(and --validation_file / --test_file)")
        o = self.options
        files = Files(o.data_file, o.validation_file, o.test_file, o.validation_split_percentage,
                      o.text_column, o.summary_column)
        return load_summaries(files, demo, max_train_samples, max_eval_samples, self.evaluate_only)

    def load_model(self, name_or_path, load_in_4bit=False, compute_dtype=None, classifier_dropout=None):
        tokenizer, model, name = load_generator(name_or_path, load_in_4bit, compute_dtype)
        self.encoder_decoder = bool(model.config.is_encoder_decoder)
        self.chat_template = bool(getattr(tokenizer, "chat_template", None)) and not self.encoder_decoder
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        return tokenizer, model, name

    def head_modules(self, model) -> list[str]:
        return []  # a generator's output layer is its (tied) embedding: frozen, as in the paper

    def tokenize(self, data: SummaryData, tokenizer, max_seq_length: int) -> SummaryData:
        prompt = None if self.encoder_decoder else Prompt(self.options.prompt_template, self.chat_template)
        tokenized = tokenize(data, tokenizer, max_seq_length, self.options.max_target_length,
                             self.encoder_decoder, prompt)
        if self.max_positions and not self.encoder_decoder:
            longest = max(max((len(r) for r in split["input_ids"]), default=0) + (
                self.generation().max_new_tokens if split is not tokenized.train else 0)
                for split in [tokenized.train, *tokenized.dev.values()] if len(split))
            if longest > self.max_positions:
                raise UsageError(f"prompt, article and summary take up to {longest} tokens, more than this model's "
                                 f"{self.max_positions} positions: lower --max_seq_length or --max_target_length")
        return tokenized

    def collator(self, tokenizer):
        return SummaryCollator(tokenizer, self.encoder_decoder)

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
                self.encoder_decoder, description=f"summarising {split}")
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
        import json

        lines = ([json.dumps({"note": note})] if note else []) + [json.dumps(row, ensure_ascii=False) for row in rows]
        return "predictions.jsonl", "\n".join(lines) + "\n"


SUMMARIZATION_TASKS = {"cnndailymail": SummarizationTask()}
