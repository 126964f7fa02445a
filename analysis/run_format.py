"""The versions of the run directory's documents, and the steps that read an older config.json or
metrics.json in today's terms. Training writes ``format_version`` (FORMAT_VERSION) into config.json
and metrics.json; files without one are version 1."""

from __future__ import annotations

# A later version adds a step to MIGRATIONS (and to migrate_metrics where metrics.json changed).
FORMAT_VERSION = 3


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


def _config_v2_to_v3(config: dict) -> dict:
    """Version 3 changed metrics.json alone (``migrate_metrics``): a version 2 config.json reads as it is."""
    return config


MIGRATIONS = {1: _config_v1_to_v2, 2: _config_v2_to_v3}  # version -> the step that brings a config.json one up


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


# Methods whose adapters switch directions off while they stay held: before version 3, AdaLoRA's
# metrics.json averaged what it held and SoRA's what was live.
MASKING = {"adalora", "qadalora"}


def _number(value) -> bool:
    """As run_files' test of a figure (run_files imports this module, so it cannot be imported here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def migrate_metrics(metrics: dict, config: dict) -> dict:
    """A metrics.json of any version in today's terms (``config``: the run's config.json, read already).

    Since version 3, ``average_adapter_params`` is what every method holds and trains, and
    ``average_live_adapter_params`` / ``final_live_adapter_params`` what is switched on. Before, SoRA
    reported the live figure as its average: held is then A and B at r_max (config.json's adapter count,
    taken before training) plus the gates, one per direction. AdaLoRA reported what it held; its live
    figures were not recorded, so they stay absent. Every other method holds only live directions.
    Figures that are missing or no numbers are left as they are, for the readers to report.
    """
    version = metrics.get("format_version", 1)
    if not _number(version) or version >= FORMAT_VERSION:
        return metrics
    metrics = {**metrics, "format_version": FORMAT_VERSION}
    held = metrics.get("average_adapter_params", metrics.get("adapter_params"))
    final = metrics.get("final_adapter_params", metrics.get("adapter_params"))
    method = config.get("method")
    if method == "sora":
        parameters = config.get("parameters") if isinstance(config.get("parameters"), dict) else {}
        start = parameters.get("adapter_params", metrics.get("adapter_params"))
        gates = metrics.get("initial_total_rank")
        if not all(map(_number, (held, start, gates))):
            return metrics
        metrics["average_live_adapter_params"], metrics["average_adapter_params"] = held, start + gates
        if _number(final):
            metrics["final_live_adapter_params"] = final + gates
    elif method not in MASKING and _number(held):
        metrics["average_adapter_params"] = metrics["average_live_adapter_params"] = held
        if _number(final):
            metrics["final_live_adapter_params"] = final
    return metrics
