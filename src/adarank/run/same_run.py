"""Whether a run directory's checkpoint or finished run is the run this command asks for: of the same
task and method, its adapters started with the same flags (config.json's ``arguments``)."""

from __future__ import annotations

import json
from pathlib import Path

from adarank.errors import UsageError
from adarank.run.directory import read_config_json


def recorded_run(run_dir: Path) -> tuple[str, str] | None:
    """(task, method) of the run whose config.json is in ``run_dir``; None where there is none to read."""
    document = read_config_json(run_dir / "config.json") or {}
    if not isinstance(document.get("task"), str) or not isinstance(document.get("method"), str):
        return None
    return document["task"], document["method"]


def check_same_run(run_dir: Path, task: str, method: str, what: str, fix: str, adapter: dict | None = None) -> None:
    """Refuse to continue, from ``run_dir``'s checkpoints or its finished state, a run of another task
    or method than this command's, or one whose adapters were started with other flags (``adapter``: the
    groups of config.json's ``arguments`` that decide them, as this command gives them: run/config.py's
    ``resumed_arguments``; ``what``: the thing given, ``fix``: what to do instead of another task or method)."""
    recorded = recorded_run(run_dir)
    if recorded is not None and recorded != (task, method):
        raise UsageError(f"{what} is of a {recorded[0]} run with --method {recorded[1]}, not of this {task} run "
                         f"with --method {method}: {fix}")
    changed = _changed_flag(run_dir, adapter or {})
    if changed is not None:
        name, was, now = changed
        raise UsageError(f"{what}: its run was started with --{name} {was}, this command gives {now}: give the flags "
                         "it was started with (its run's config.json, arguments), or start afresh (without "
                         "--resume_from_checkpoint) in another --output_dir")


def _changed_flag(run_dir: Path, adapter: dict) -> tuple[str, str, str] | None:
    """The first flag of ``adapter`` whose value differs from the one recorded in ``run_dir``'s config.json
    (flags it does not record are not compared; --budget not where a rank flag given alike sets the rank);
    each value as the command line writes it."""
    recorded = (read_config_json(run_dir / "config.json") or {}).get("arguments")
    recorded = recorded if isinstance(recorded, dict) else {}
    pairs = []  # (flag, recorded value, this command's value)
    for group, flags in json.loads(json.dumps(adapter, default=str)).items():  # as config.json holds them
        before = recorded.get(group) if isinstance(recorded.get(group), dict) else {}
        pairs += [(name, before[name], value) for name, value in flags.items()
                  if name in before and not (name in RESOLVED_SINCE and before[name] is None)]
    rank_given_alike = any(name in RANK_FLAGS and now is not None and before == now for name, before, now in pairs)
    for name, before, now in pairs:
        if _state_kind(name, before) != _state_kind(name, now) and not (name == "budget" and rank_given_alike):
            return name, _shown(before), _shown(now)
    return None


RANK_FLAGS = ("lora_r", "target_r", "r_max")  # each, where given, sets the rank --budget would
# Flags config.json records as resolved: a checkpoint's run from before that recorded them unset, which says
# nothing of the value it ran with.
RESOLVED_SINCE = ("bnb_4bit_compute_dtype",)

# Values of one flag that read and write the same checkpoint state: torch's AdamW with and without its
# fused kernel (transformers' default --optim became adamw_torch_fused with torch 2.8, so a torch upgrade
# between a stop and its resume changes the recorded name, not the optimizer).
SAME_STATE = {"optim": {"adamw_torch": "adamw_torch_fused"}}


def _state_kind(name: str, value):
    return SAME_STATE.get(name, {}).get(value, value)


def _shown(value) -> str:
    return "unset" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
