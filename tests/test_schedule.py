import pytest

from adarank.errors import UsageError
from adarank.methods.adalora import fit_budget_schedule
from adarank.methods.adalora.schedule import check_allocations
from adarank.run.steps import count_optimizer_steps
from adarank.tasks import TASKS


def test_step_count_follows_batch_accumulation_world_size_and_epochs():
    assert count_optimizer_steps(8000, 32, 1, 1, 3, -1) == 750
    assert count_optimizer_steps(100, 8, 1, 2, 1, -1) == 7  # 13 batches -> 7 steps, the last one short
    assert count_optimizer_steps(100, 8, 2, 1, 2, -1) == 14  # 2 processes: 7 global batches an epoch
    assert count_optimizer_steps(100, 8, 1, 1, 1, 5) == 5  # --max_steps wins
    assert count_optimizer_steps(100, 8, 1, 1, 1, -1, drop_last=True) == 12


def test_a_short_run_keeps_the_papers_fractions_of_its_length():
    sst2 = TASKS["sst2"]  # 6000 / 22000 / 100 over 2105 * 24 = 50520 steps
    s = fit_budget_schedule(sst2, 750)
    assert s.scaled and s.scale == pytest.approx(750 / 50520)
    assert (s.tinit, s.tfinal, s.delta_t) == (round(6000 * 750 / 50520), round(22000 * 750 / 50520), 1)
    assert "scaled" in s.describe()


def test_a_full_length_run_uses_the_papers_numbers():
    s = fit_budget_schedule(TASKS["cola"], TASKS["cola"].paper_total_step)
    assert (s.tinit, s.tfinal, s.delta_t, s.scaled) == (800, 3500, 10, False)


def test_explicit_values_are_kept():
    s = fit_budget_schedule(TASKS["cola"], 100, tinit=5, tfinal=10, delta_t=2)
    assert (s.tinit, s.tfinal, s.delta_t) == (5, 10, 2)


def test_an_impossible_explicit_schedule_names_the_numbers_and_a_fix():
    with pytest.raises(UsageError, match=r"tinit 60 \+ tfinal 50 leaves no pruning steps .* 100 optimizer steps.*--tinit 12 --tfinal 52"):
        fit_budget_schedule(TASKS["cola"], 100, tinit=60, tfinal=50)


def test_tfinal_zero_is_refused_since_the_final_budget_is_fixed_at_total_minus_tfinal():
    with pytest.raises(UsageError, match="--tfinal 0"):
        fit_budget_schedule(TASKS["cola"], 100, tfinal=0)


def test_a_one_step_run_cannot_prune():
    with pytest.raises(UsageError, match="at least 2 optimizer steps"):
        fit_budget_schedule(TASKS["rte"], 1)


def test_tinit_below_zero_is_named_alone():
    with pytest.raises(UsageError, match=r"^--tinit -1 must be >= 0 \(the steps at the full budget\)"):
        fit_budget_schedule(TASKS["cola"], 100, tinit=-1)
    with pytest.raises(UsageError, match=r"^--tfinal 0 must be >= 1"):  # it named --tinit 0 as well
        fit_budget_schedule(TASKS["cola"], 100, tinit=0, tfinal=0)


def test_a_delta_t_without_a_multiple_in_the_pruning_window_is_refused(caplog):
    """PEFT re-allocates on the cubic schedule at the multiples of delta_t in (tinit, total_step - tfinal),
    and masks to the target at total_step - tfinal itself; without a multiple in between the cubic
    schedule never runs and the budget falls to its target at once."""
    with pytest.raises(UsageError, match=r"delta_t 5 after tinit 5 and before total_step - tfinal = 9, and none "
                                         r"lies there.*at step 9: use --delta_t 3 or less"):
        check_allocations(fit_budget_schedule(TASKS["cola"], 10, tinit=5, tfinal=1, delta_t=5), explicit=True)
    with pytest.raises(UsageError, match="delta_t 9 after tinit 1"):  # 9 is the step that masks to the target
        check_allocations(fit_budget_schedule(TASKS["cola"], 10, tinit=1, tfinal=1, delta_t=9), explicit=True)
    with pytest.raises(UsageError, match="at step 3: lower --tinit or --tfinal, or train longer"):
        check_allocations(fit_budget_schedule(TASKS["cola"], 10, tinit=2, tfinal=7, delta_t=1), explicit=True)
    check_allocations(fit_budget_schedule(TASKS["cola"], 10, tinit=5, tfinal=1, delta_t=3), explicit=True)  # 6
    check_allocations(fit_budget_schedule(TASKS["cola"], 10, tinit=1, tfinal=1, delta_t=8), explicit=True)  # 8
    with caplog.at_level("WARNING", logger="adarank"):  # the recipe scaled to a trial run: said, not refused
        check_allocations(fit_budget_schedule(TASKS["cola"], 2), explicit=False)
    assert "falls to the target in one step" in caplog.text and "scaled to this run of 2 steps" in caplog.text
    for total in (10, 50, 64, 804, 6680):  # the scaled recipes re-allocate in runs of more than a few steps
        for task in ("cola", "sst2", "rte", "mnli"):
            caplog.clear()
            with caplog.at_level("WARNING", logger="adarank"):
                check_allocations(fit_budget_schedule(TASKS[task], total), explicit=False)
            assert caplog.text == "", (task, total)
