"""Summarization, the second task family: its flags (``arguments``), data from files, the hub or
demo data (``data``), the generator (``model``), beam search (``generation``), ROUGE (``rouge``)
and the pipeline's side (``task``)."""

from adarank.tasks.summarization.arguments import SummarizationArguments
from adarank.tasks.summarization.task import SUMMARIZATION_TASKS, SummarizationTask

__all__ = ["SUMMARIZATION_TASKS", "SummarizationArguments", "SummarizationTask"]
