"""Summarize CNN/DailyMail (or any JSONL/CSV of articles and summaries) with LoRA, AdaLoRA, their
4-bit forms, or no adapters (--method none): python src/nlu-cnndailymail.py --help

The file keeps the original project's name, although the task is generation (NLG)."""

from adarank.pipeline import main

if __name__ == "__main__":
    main("cnndailymail")
