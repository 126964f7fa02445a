"""analysis/layer_spread.py and analysis/row_energy.py, the tools that load a finished run's adapter,
on real (tiny) runs: a run file they cannot read ends in one line naming it, and row_energy splits a
run's rows where its ranks began to grow (a run whose ranks never grow has no grown rows)."""

import json
import shutil
import statistics

import pytest

import layer_spread
import row_energy
from conftest import QUICK
from custom.plateau import register
from fixtures.cli import error_line, main_fails_cleanly, run_task, without_progress_bars
from fixtures.glue import write_sst2_folder

register()  # --method plateau, as the entry scripts in src/custom make it known

TOOLS = {"layer_spread": layer_spread.main, "row_energy": row_energy.main}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return str(write_sst2_folder(tmp_path_factory.mktemp("glue")))


@pytest.fixture(scope="module")
def growing_runs(tiny_model, data, tmp_path_factory):
    """Runs whose ranks grow from rank 1 (plateau, growing at every evaluation; IncreLoRA) and a SoRA run."""
    root = tmp_path_factory.mktemp("growing")
    common = ("--data_dir", data, "--model_name_or_path", tiny_model, "--max_eval_samples", "16", *QUICK)
    assert run_task("sst2", *common, "--max_steps", "3", "--r0", "1", "--eval_every", "1", "--plateau_patience", "1",
                    "--plateau_min_delta", "100", "--output_dir", str(root / "plateau"), method="plateau") == 0
    assert run_task("sst2", *common, "--method", "increlora", "--max_steps", "6",
                    "--output_dir", str(root / "increlora")) == 0
    assert run_task("sst2", *common, "--method", "sora", "--max_steps", "2", "--output_dir", str(root / "sora")) == 0
    return root


def fails_in_one_line(capsys, tool: str, argv: list) -> str:
    """``tool``'s error line, the only line on stderr but for the progress bars of loading the model."""
    with pytest.raises(SystemExit) as stop:
        TOOLS[tool](argv)
    return error_line(stop.value.code, without_progress_bars(capsys.readouterr().err), one_line=True)


def damaged_copy(runs_root, tmp_path):
    return shutil.copytree(runs_root / "sst2-lora-1", tmp_path / "run")


def edit_config(run, edit) -> None:
    config = json.loads((run / "config.json").read_text())
    edit(config)
    (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("tool", TOOLS)
def test_a_damaged_adapter_file_is_named_in_one_line(runs_root, data, tmp_path, capsys, tool):
    run = damaged_copy(runs_root, tmp_path)
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_text("garbage\n")
    line = fails_in_one_line(capsys, tool, [str(run), "--data_dir", data, "--examples", "4"])
    assert line == (f"error: {weights} is damaged (Error while deserializing header: header too large): "
                    "train the run again or leave it out")


@pytest.mark.parametrize("tool", TOOLS)
def test_a_missing_adapter_config_is_named_in_one_line(runs_root, data, tmp_path, capsys, tool):
    run = damaged_copy(runs_root, tmp_path)
    settings = run / "adapter" / "adapter_config.json"
    settings.unlink()
    line = fails_in_one_line(capsys, tool, [str(run), "--data_dir", data, "--examples", "4"])
    assert line == (f"error: {settings} is missing (PEFT reads the adapter's settings there): "
                    "train the run again or leave it out")


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("change, why", [
    ({"peft_type": "BOGUS"}, "its peft_type 'BOGUS' is not one PEFT knows"),
    ({"r": "x"}, "its settings build no adapter: '<=' not supported between instances of 'str' and 'int'"),
    ({"r": 4}, "its settings do not fit adapter_model.safetensors: size mismatch for base_model.model.bert.encoder."
               "layer.0.attention.self.query.lora_A.default.weight: copying a param with shape torch.Size([2, 16]) "
               "from checkpoint, the shape in current model is torch.Size([4, 16])."),
], ids=["peft-type-unknown", "rank-a-word", "rank-unlike-the-weights"])
def test_adapter_settings_peft_cannot_build_are_named_in_one_line(runs_root, data, tmp_path, capsys, tool, change,
                                                                  why):
    """These ended in a KeyError, a TypeError, or a RuntimeError of 110 lines (a size mismatch a tensor)."""
    run = damaged_copy(runs_root, tmp_path)
    settings = run / "adapter" / "adapter_config.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), **change}))
    line = fails_in_one_line(capsys, tool, [str(run), "--data_dir", data, "--examples", "4"])
    assert line == f"error: {settings} is damaged ({why}): train the run again or leave it out"


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("entry, why", [
    ("target_modules", "it names no target_modules"),
    ("arguments.model", "it names no arguments.model, the base model the run adapted"),
])
def test_config_json_without_the_modules_or_the_model_is_named_in_one_line(runs_root, data, tmp_path, capsys, tool,
                                                                           entry, why):
    run = damaged_copy(runs_root, tmp_path)
    edit_config(run, lambda config: config.pop("target_modules") if entry == "target_modules"
                else config["arguments"].pop("model"))
    line = fails_in_one_line(capsys, tool, [str(run), "--data_dir", data, "--examples", "4"])
    assert line == f"error: {run / 'config.json'} is damaged ({why}): train the run again or leave it out"


@pytest.mark.parametrize("tool, shown", [
    ("layer_spread", "bert.encoder.layer.5."),  # the embedded MiniLM's sixth layer: the tiny test model has two
    ("row_energy", "run (lora grows no rows)\t"),
])
def test_a_run_on_the_embedded_default_model_is_read(data, tmp_path, capsys, tool, shown):
    # config.json names the default model null: the tool loads the embedded one, as the run did
    run = tmp_path / "run"
    assert run_task("sst2", "--data_dir", data, "--method", "lora", "--max_eval_samples", "16", *QUICK,
                    "--max_steps", "2", "--output_dir", str(run)) == 0
    assert json.loads((run / "config.json").read_text())["arguments"]["model"]["model_name_or_path"] is None
    capsys.readouterr()
    TOOLS[tool]([str(run), "--data_dir", data, "--examples", "4"])
    assert shown in capsys.readouterr().out


def cell(energies: list[float]) -> str:
    return f"{statistics.median(energies):.2f}, {max(energies):.2f}" if energies else "-"


@pytest.mark.parametrize("method, entry", [("plateau", "r0"), ("increlora", "init_r")])
def test_row_energy_splits_a_run_at_the_rank_it_started_at(growing_runs, data, capsys, method, entry):
    """A run whose ranks grew from rank 1 has its first row, not the default --r0's two, from the start."""
    run = growing_runs / method
    assert json.loads((run / "config.json").read_text())["adapter"][entry] == 1
    energies = row_energy.row_energies(run, data, 8)
    assert max(len(rows) for rows in energies.values()) > 2  # grown past the old default split
    row_energy.main([str(run), "--data_dir", data, "--examples", "8"])
    lines = capsys.readouterr().out.splitlines()
    initial = cell([float(rows[0]) for rows in energies.values()])
    grown = cell([float(e) for rows in energies.values() for e in rows[1:]])
    assert lines[1:] == [f"{method}\t{initial}\t{grown}"]
    row_energy.main([str(run), "--data_dir", data, "--examples", "8", "--r0", "1"])  # the run's own: agreed
    assert capsys.readouterr().out.splitlines()[1:] == lines[1:]


def test_row_energy_refuses_an_r0_that_contradicts_the_run(growing_runs, data, capsys):
    run = growing_runs / "plateau"
    line = main_fails_cleanly(capsys, row_energy.main, [str(run), "--data_dir", data, "--examples", "8", "--r0", "2"],
                              one_line=True)
    assert line == (f"error: --r0 2 contradicts {run}, whose matrices started at rank 1 (adapter.r0 in its "
                    "config.json): leave --r0 out, each run's own is read")


def test_row_energy_finds_no_grown_rows_in_a_run_whose_ranks_never_grow(growing_runs, runs_root, data, capsys):
    """SoRA and AdaLoRA only prune: every row is from the start; --r0 splits them all the same, as a
    control, and the line says so."""
    for run in (growing_runs / "sora", runs_root / "sst2-adalora-1"):
        method = json.loads((run / "config.json").read_text())["method"]
        energies = row_energy.row_energies(run, data, 8)
        row_energy.main([str(run), "--data_dir", data, "--examples", "8"])
        every_row = cell([float(e) for rows in energies.values() for e in rows])
        assert capsys.readouterr().out.splitlines()[1:] == [f"{run.name} ({method} grows no rows)\t{every_row}\t-"]
    run = growing_runs / "sora"
    energies = row_energy.row_energies(run, data, 8)
    row_energy.main([str(run), "--data_dir", data, "--examples", "8", "--r0", "1"])
    first = cell([float(rows[0]) for rows in energies.values()])
    rest = cell([float(e) for rows in energies.values() for e in rows[1:]])
    assert capsys.readouterr().out.splitlines()[1:] == [
        f"sora (sora grows no rows; split at --r0 1 as a control)\t{first}\t{rest}"]
