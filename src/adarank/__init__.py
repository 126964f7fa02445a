"""adarank: LoRA, AdaLoRA, QLoRA and rank-growth fine-tuning, on GLUE (encoders) and CNN/DailyMail
summarization (generators), with run directories that analysis can trust."""

import logging

__version__ = "0.1.0"


class _OptionalKernelNotice(logging.Filter):
    """Drops bitsandbytes' import-time notice that the optional ``kernels`` package (a hub
    download) is missing on AVX512-BF16 CPUs: its built-in CPU kernel is used instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


# Installed before anything imports bitsandbytes: the notice is logged when it is imported.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_OptionalKernelNotice())
