"""Tasks, by family: GLUE (``glue``) and summarization (``summarization``), each a package that
implements ``base.Task``. ``get_task`` finds any of them by name."""

from adarank.errors import UsageError
from adarank.tasks.base import PAPER_BATCH_SIZE, LoadedModel, Recipe, Task, TaskData
from adarank.tasks.glue import GLUE_TASKS, GlueTask
from adarank.tasks.summarization import SUMMARIZATION_TASKS, SummarizationTask

TASKS: dict[str, Task] = {**GLUE_TASKS, **SUMMARIZATION_TASKS}


def get_task(name: str) -> Task:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise UsageError(f"unknown task {name!r}: choose one of {', '.join(sorted(TASKS))}")
    return TASKS[key]


def recipe_of(task: Task, name: str) -> Recipe:
    """The task's hyperparameters under a named recipe (``--recipe``)."""
    if name not in task.recipes:
        raise UsageError(f"unknown recipe {name!r}: choose one of {', '.join(task.recipes)}")
    return task.recipes[name]


__all__ = ["PAPER_BATCH_SIZE", "TASKS", "GlueTask", "LoadedModel", "Recipe", "SummarizationTask", "Task", "TaskData",
           "get_task", "recipe_of"]
