"""The versions of the run directory's documents, and the steps that read an older config.json in
today's terms. Training writes ``format_version`` (FORMAT_VERSION) into config.json and metrics.json;
files without one are version 1."""

from __future__ import annotations

# A later version adds a step to MIGRATIONS.
FORMAT_VERSION = 2


def _config_v1_to_v2(config: dict) -> dict:
    """Version 1 config.json in version 2 terms. Version 1 files were written before recipes and
    AdaLoRA's alternative initialisation existed, or before the schedule's published values were
    named so: they took the paper recipe and AdaLoRA's paper initialisation, and an AdaLoRA budget
    was compared with LoRA at its target rank."""
    config = {**config, "recipe": config.get("recipe", "paper")}
    if "total_steps" in config:
        config["total_step"] = config.pop("total_steps")
    adapter = dict(config.get("adapter") or {})
    if "init_r" in adapter:  # AdaLoRA and QLoRA + AdaLoRA
        adapter.setdefault("init", "paper")
        adapter.setdefault("compared_with_lora_r", adapter.get("target_r"))
        schedule = dict(adapter.get("schedule") or {})
        if "paper" in schedule:
            schedule.setdefault("published", schedule.pop("paper"))
        if schedule:
            schedule.setdefault("recipe", config["recipe"])
            adapter["schedule"] = schedule
    if adapter:
        config["adapter"] = adapter
    return config


MIGRATIONS = {1: _config_v1_to_v2}  # version -> the step that brings a config.json one version up


def migrate_config(config: dict) -> dict:
    """A config.json of any version in today's terms, one step at a time, so that seeds written
    months apart compare as one setting."""
    version = config.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise ValueError(f"config.json has format_version {version}, newer than this reader's {FORMAT_VERSION}: "
                         "update the project to read it")
    while version < FORMAT_VERSION:
        config = MIGRATIONS[version](config)
        version += 1
    return {**config, "format_version": FORMAT_VERSION}
