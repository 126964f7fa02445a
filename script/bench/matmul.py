"""The machine's matmul rate and a training step's FLOPs: what a run's speed is measured against
(benchmark_speed.py) and whether bf16 pays on this machine (matmul_rate.py)."""

from __future__ import annotations

import statistics
import time


def product_seconds(m: int, k: int, n: int, dtype, repeats: int, device: str = "cpu") -> float:
    """The median time of an (m x k) @ (k x n) product, after 3 untimed ones."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_matmul_rate(shapes: dict, tokens: int, dtype: str, repeats: int = 30) -> float:
    """GFLOP/s over one step's matmuls: every linear layer forward (tokens x in @ in x out) and the
    gradient of its input (tokens x out @ out x in), FLOP-weighted."""
    import torch

    kind = getattr(torch, dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seconds = flops = 0.0
    for i, o in sorted(set(shapes["linears"])):
        count = shapes["linears"].count((i, o))
        for k, n in ((i, o), (o, i)):
            seconds += count * product_seconds(tokens, k, n, kind, repeats, device)
            flops += count * 2 * tokens * k * n
    return flops / seconds / 1e9


def model_shapes(path: str | None) -> dict:
    """The encoder's linear layers (in, out), its width and depth."""
    from torch import nn
    from transformers import AutoConfig, AutoModel

    from adarank.loading import embedded_model_path

    model = AutoModel.from_config(AutoConfig.from_pretrained(path or embedded_model_path()))
    linears = [(m.in_features, m.out_features) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and ".layer." in f".{name}."]
    return {"linears": linears, "width": model.config.hidden_size, "layers": model.config.num_hidden_layers}


def flops_per_step(result: dict, shapes: dict, adapter_params: float) -> float:
    """A run's FLOPs a step (its metrics.json ``result``), as benchmark_speed.py's docstring counts them."""
    tokens = result["train_tokens"] / result["total_step"]
    examples = result["train_examples_per_second"] * result["train_seconds"] / result["total_step"]
    length = tokens / examples  # mean padded length of a sequence
    linear = sum(4 * i * o for i, o in shapes["linears"])
    attention = 12 * length * shapes["width"] * shapes["layers"]
    adapters = 6 * adapter_params  # each adapter weight: once forward, twice backward
    return tokens * (linear + attention + adapters)
