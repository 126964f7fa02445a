"""The entry of the scripts under src/src_qlora/: a task's run on a 4-bit NF4 base, QLoRA by default.

A full-precision method named there (--method lora, pissa, ...) would train an unquantised model under a
script that says it quantises: refused, naming the 4-bit methods and the task's full-precision script.
"""

from __future__ import annotations

from adarank.command_line import requested_method
from adarank.errors import UsageError, exits_cleanly_on_usage_errors
from adarank.methods import METHODS
from adarank.pipeline import main


@exits_cleanly_on_usage_errors
def main_four_bit(task: str, full_precision_script: str, argv: list[str] | None = None) -> dict:
    named = requested_method(argv)
    four_bit = ", ".join(name for name, method in METHODS.items() if method.quantized)
    if named in METHODS and not METHODS[named].trains:
        raise UsageError(f"--method {named} trains no adapter, so there is no base to quantise for: choose one of "
                         f"{four_bit} here, or run {named} with {full_precision_script}")
    if named in METHODS and not METHODS[named].quantized:
        raise UsageError(f"--method {named} trains a full-precision base, and this script quantises the base to "
                         f"4 bits: choose one of {four_bit} here, or run {named} with {full_precision_script}")
    return main(task, argv, defaults={"method": "qlora"})
