import pytest

from adarank.errors import UsageError
from adarank.tasks import TASKS, get_task
from adarank.tasks.glue import GLUE_TASKS


def test_table_holds_the_eight_glue_tasks_with_the_papers_hyperparameters():
    assert sorted(GLUE_TASKS) == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"]
    assert sorted(TASKS) == sorted([*GLUE_TASKS, "cnndailymail"])
    mnli = TASKS["mnli"].paper
    assert (mnli.learning_rate, mnli.epochs, mnli.orth_reg_weight, mnli.tinit, mnli.delta_t, mnli.tfinal) == (
        5e-4, 7, 0.1, 8000, 100, 50000)
    cola = TASKS["cola"].paper
    assert (cola.learning_rate, cola.epochs, cola.orth_reg_weight, cola.tinit, cola.delta_t, cola.tfinal) == (
        5e-4, 25, 0.5, 800, 10, 3500)
    assert TASKS["stsb"].is_regression and TASKS["stsb"].metrics == ("pearson", "spearman")
    assert TASKS["cola"].main_metric == "matthews_correlation"
    assert set(TASKS["mnli"].dev_splits) == {"matched", "mismatched"}


@pytest.mark.parametrize("name", TASKS)
def test_every_recipe_schedule_fits_inside_its_own_run(name):
    task = TASKS[name]
    for recipe in task.recipes.values():
        assert recipe.tinit + recipe.tfinal < task.full_run_steps(recipe)


def test_task_names_accept_the_spellings_users_type():
    assert get_task("SST-2").name == "sst2"
    assert get_task("STS_B").name == "stsb"


def test_unknown_task_names_the_choices():
    with pytest.raises(UsageError, match="unknown task 'sst3'.*cola"):
        get_task("sst3")
