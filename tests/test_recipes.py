"""--recipe paper (Table 8) and --recipe official (the authors' scripts), as config.json records them."""

import json

import pytest

from adarank.tasks import TASKS
from adarank.tasks.glue.model import load_model
from conftest import QUICK, run_task
from fixtures.cli import fails_cleanly

# The authors' NLU scripts (QingruZhang/AdaLoRA, NLU/scripts/run_debertav3_<task>.sh), typed in
# from them independently of the library's table: init r, target r, alpha, gamma, tinit, tfinal,
# delta_t, lr, epochs, warm-up (steps, or a fraction), classifier dropout, weight decay, max length.
OFFICIAL = {
    "mnli": (3, 1, 16, 0.1, 8000, 50000, 100, 5e-4, 7, 1000, 0.15, 0.0, 256),
    "sst2": (2, 1, 16, 0.1, 6000, 22000, 100, 8e-4, 24, 1000, 0.0, 0.01, 128),
    "cola": (3, 1, 32, 0.1, 800, 3500, 10, 8e-4, 25, 100, 0.10, 0.0, 64),
    "qqp": (2, 1, 16, 0.1, 8000, 25000, 100, 8e-4, 5, 2000, 0.15, 0.01, 320),
    "qnli": (2, 1, 32, 0.1, 2000, 8000, 100, 5e-4, 5, 500, 0.1, 0.01, 512),
    "rte": (2, 1, 32, 0.3, 600, 1800, 1, 1.2e-3, 50, 200, 0.20, 0.01, 320),
    "mrpc": (2, 1, 32, 0.1, 600, 1800, 1, 1e-3, 30, 0.1, 0.0, 0.01, 320),
    "stsb": (2, 1, 32, 0.3, 800, 2000, 10, 2.2e-3, 25, 100, 0.2, 0.1, 128),
}


@pytest.mark.parametrize("task", sorted(OFFICIAL))
def test_the_official_recipe_is_the_authors_scripts_in_config_json(tiny_512, tmp_path, task):
    run_dir = tmp_path / task
    assert run_task(task, "--demo", "--model_name_or_path", tiny_512, "--method", "adalora", "--recipe", "official",
                    "--max_steps", "4", "--save_strategy", "no", "--output_dir", str(run_dir)) == 0
    config = json.loads((run_dir / "config.json").read_text())
    init_r, target_r, alpha, gamma, tinit, tfinal, delta_t, lr, epochs, warmup, dropout, decay, length = OFFICIAL[task]
    adapter, training = config["adapter"], config["arguments"]["training"]
    assert config["recipe"] == "official" and config["arguments"]["adapter"]["recipe"] == "official"
    assert (adapter["init_r"], adapter["target_r"], adapter["lora_alpha"]) == (init_r, target_r, alpha)
    assert (adapter["orth_reg_weight"], adapter["beta1"], adapter["beta2"]) == (gamma, 0.85, 0.85)
    published = adapter["schedule"]["published"]
    assert (published["tinit"], published["tfinal"], published["delta_t"]) == (tinit, tfinal, delta_t)
    # The schedule's unit is the authors' full run: the GLUE training set at batch 32 for their epochs.
    assert published["total_step"] == -(-TASKS[task].paper_train_size // 32) * epochs
    assert config["recipe_values"]["epochs"] == epochs
    assert config["recipe_values"]["warmup"] == warmup
    if warmup >= 1:  # a number of steps shrinks with this 4-step run, as the schedule does
        assert f"{warmup:g} warm-up steps" in config["warmup_note"]
        assert training["warmup_steps"] == max(1, round(warmup * 4 / published["total_step"]))
    else:  # MRPC: a fraction of the run already
        assert training["warmup_steps"] == warmup and config["warmup_note"] is None
    assert (training["learning_rate"], training["weight_decay"]) == (lr, decay)
    assert training["per_device_train_batch_size"] == 32
    model = config["arguments"]["model"]
    assert (model["max_seq_length"], model["classifier_dropout"]) == (length, dropout)
    # init 2-3 -> target 1 trains about as many parameters as LoRA r=2: the run is filed as the small budget.
    assert config["budget"] == "small"


def test_the_paper_recipe_stays_the_default(tiny_model, tmp_path):
    run_dir = tmp_path / "paper"
    assert run_task("cola", "--demo", "--model_name_or_path", tiny_model, "--method", "adalora", "--max_steps", "4",
                    "--output_dir", str(run_dir), *QUICK) == 0
    config = json.loads((run_dir / "config.json").read_text())
    paper = TASKS["cola"].paper
    assert config["recipe"] == "paper" and config["budget"] == "small"
    assert (config["adapter"]["init_r"], config["adapter"]["target_r"], config["adapter"]["lora_alpha"]) == (3, 2, 16)
    assert config["adapter"]["orth_reg_weight"] == paper.orth_reg_weight == 0.5
    training = config["arguments"]["training"]
    assert (training["learning_rate"], training["warmup_steps"], training["weight_decay"]) == (5e-4, 0.06, 0.01)
    assert config["arguments"]["model"]["max_seq_length"] == 128


def test_lora_takes_the_recipe_with_its_own_rank(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_task("cola", "--demo", "--model_name_or_path", tiny_model, "--method", "lora", "--recipe", "official",
                    "--max_steps", "2", *QUICK) == 0
    (run_dir,) = (tmp_path / "runs" / "cola").iterdir()
    assert run_dir.name.startswith("demo-lora-official-small-seed42-")  # the recipe is in the run's name
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["adapter"]["r"], config["adapter"]["lora_alpha"]) == (2, 32)  # alpha / r = 16
    assert config["arguments"]["training"]["learning_rate"] == 8e-4


def test_explicit_flags_win_over_the_recipe(tiny_model, tmp_path):
    run_dir = tmp_path / "explicit"
    assert run_task("cola", "--demo", "--model_name_or_path", tiny_model, "--method", "adalora", "--recipe", "official",
                    "--target_r", "2", "--lora_alpha", "8", "--learning_rate", "1e-3", "--max_steps", "4",
                    "--output_dir", str(run_dir), *QUICK) == 0
    config = json.loads((run_dir / "config.json").read_text())
    # With --target_r given, init_r follows the budget rule again, and the run is filed by its target.
    assert (config["adapter"]["target_r"], config["adapter"]["init_r"], config["adapter"]["lora_alpha"]) == (2, 3, 8)
    assert config["arguments"]["training"]["learning_rate"] == 1e-3 and config["budget"] == "small"


def test_the_recipe_sets_the_classifier_dropout(tiny_model):
    model = load_model(tiny_model, TASKS["cola"], classifier_dropout=0.15)[1]
    assert model.dropout.p == 0.15
    assert load_model(tiny_model, TASKS["cola"])[1].dropout.p == 0.1  # the model's own hidden dropout


def test_an_unknown_recipe_is_one_line(tiny_model, tmp_path, capsys):
    line = fails_cleanly(capsys, "cola", "--demo", "--model_name_or_path", tiny_model, "--recipe", "authors",
                         "--output_dir", str(tmp_path / "x"), one_line=True)
    assert line == "error: unknown recipe 'authors': choose one of paper, official"
    assert not (tmp_path / "x").exists()


def test_an_abbreviated_recipe_flag_is_refused_not_half_applied(tiny_model, tmp_path, capsys):
    line = fails_cleanly(capsys, "cola", "--demo", "--model_name_or_path", tiny_model, "--reci", "official",
                         "--output_dir", str(tmp_path / "x"), one_line=True)
    assert "--reci (did you mean --recipe?)" in line
    assert not (tmp_path / "x").exists()


def test_a_recipes_warm_up_steps_shrink_only_for_shorter_runs_and_never_when_given():
    from adarank.arguments import parse_arguments, scale_warmup

    cola = TASKS["cola"]
    full = cola.full_run_steps(cola.official)  # 268 steps an epoch, 25 epochs
    for total_step, expected in ((full, 100), (full // 10, 10), (3, 1), (2, 1), (1, 0)):
        args = parse_arguments(cola, ["--recipe", "official"])
        scale_warmup(args, cola, total_step)
        assert args.training.warmup_steps == expected
        assert (args.warmup_note is None) == (total_step == full)
    given = parse_arguments(cola, ["--recipe", "official", "--warmup_steps", "7"])
    scale_warmup(given, cola, 3)
    assert given.training.warmup_steps == 7 and given.warmup_note is None
    paper = parse_arguments(cola, [])  # Table 8's warm-up is a fraction of the run already
    scale_warmup(paper, cola, 3)
    assert paper.training.warmup_steps == 0.06 and paper.warmup_note is None


@pytest.mark.parametrize("flags", [(), ("--recipe", "official"), ("--lr_scheduler_type", "constant_with_warmup")],
                         ids=["paper", "official", "constant_with_warmup"])
def test_a_run_of_one_step_takes_no_warm_up_and_trains(tiny_model, tmp_path, flags):
    """A warm-up's first step runs at learning rate 0: a run of one step (Table 8's 6% of it, or a recipe's
    steps scaled down, each one step) trained nothing and reported its base model's score as the method's."""
    from safetensors.torch import load_file

    run_dir = tmp_path / "one"
    assert run_task("cola", "--demo", "--model_name_or_path", tiny_model, "--method", "lora", "--max_steps", "1",
                    "--output_dir", str(run_dir), *flags) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arguments"]["training"]["warmup_steps"] == 0 and "no warm-up" in config["warmup_note"]
    lora_b = [w for name, w in load_file(run_dir / "adapter" / "adapter_model.safetensors").items() if "lora_B" in name]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b)  # zero at the start: the step moved them


def test_a_warm_up_given_for_a_run_of_one_step_is_refused(tiny_model, tmp_path, capsys):
    line = fails_cleanly(capsys, "cola", "--demo", "--model_name_or_path", tiny_model, "--method", "lora",
                         "--max_steps", "1", "--warmup_steps", "1", "--output_dir", str(tmp_path / "x"), one_line=True)
    assert "--warmup_steps 1 spends this run's one optimizer step in warm-up, at learning rate 0" in line
    assert not (tmp_path / "x").exists()
    (tmp_path / "args.yaml").write_text(f"demo: true\nmodel_name_or_path: {tiny_model}\nmethod: lora\nmax_steps: 1\n"
                                        f"warmup_steps: 1\noutput_dir: {tmp_path / 'x'}\n")
    line = fails_cleanly(capsys, "cola", str(tmp_path / "args.yaml"), one_line=True)
    assert f"{tmp_path / 'args.yaml'}: warmup_steps 1 spends this run's one optimizer step in warm-up" in line
    for kind in ("constant", "cosine_warmup_with_min_lr"):  # no warm-up; one whose first step is above 0
        assert run_task("cola", "--demo", "--model_name_or_path", tiny_model, "--method", "lora", "--max_steps", "1",
                        "--warmup_steps", "1", "--lr_scheduler_type", kind, "--lr_scheduler_kwargs",
                        '{"min_lr_rate": 0.1}' if kind != "constant" else "{}", "--output_dir", str(tmp_path / kind)) == 0
