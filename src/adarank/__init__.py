"""adarank: LoRA, AdaLoRA and rank-growth fine-tuning of pretrained encoders on GLUE."""

__version__ = "0.1.0"
