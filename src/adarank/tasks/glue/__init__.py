"""GLUE, the first task family: the table of task facts and recipes (``spec``), data from files,
the hub or demo data (``data``, ``demo``), the classification model (``model``), metrics
(``metrics``) and the pipeline's side (``task``)."""

from adarank.tasks.glue.spec import GLUE_SPECS, GlueSpec
from adarank.tasks.glue.task import GLUE_TASKS, GlueTask

__all__ = ["GLUE_SPECS", "GLUE_TASKS", "GlueSpec", "GlueTask"]
