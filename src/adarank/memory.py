"""Parameter counts, bytes of the base model and the adapters, and measured peak memory."""

from __future__ import annotations

import json
import math
import resource
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch
from torch import nn

from adarank.modules import head_modules
from adarank.quantization import is_linear_4bit


def stored_numel(param: torch.Tensor) -> int:
    """Parameters a tensor stands for: a packed 4-bit weight holds two per byte."""
    state = getattr(param, "quant_state", None)
    return int(torch.Size(state.shape).numel()) if state is not None else param.numel()


def base_parameter_count(model: nn.Module) -> int:
    """Parameters of the pretrained model with its head, before any adapter is added."""
    return sum(stored_numel(p) for p in model.parameters())


@dataclass(frozen=True)
class ParameterCounts:
    """Trainable parameters split into adapters and the (copied) task head, and the model's total."""

    trainable_params: int
    adapter_params: int
    head_params: int
    total_params: int  # the base model's parameters and the adapters'

    def as_dict(self) -> dict:
        return asdict(self)


def parameter_counts(model: nn.Module, base_params: int) -> ParameterCounts:
    adapter = head = 0
    for name, param in model.named_parameters():
        if param.requires_grad:
            if "lora_" in name:
                adapter += param.numel()
            else:
                head += param.numel()
    return ParameterCounts(trainable_params=adapter + head, adapter_params=adapter, head_params=head,
                           total_params=base_params + adapter)


class PeakMemory:
    """Peak memory while training: the CUDA allocator's peak on a GPU; on a CPU the
    process's resident set, sampled every 50 ms (ru_maxrss would include data loading)."""

    def __enter__(self):
        self.cuda = torch.cuda.is_available()
        self.peak = 0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self._process = psutil.Process()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            if self._stop.wait(0.05):
                return

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._process.memory_info().rss)

    def report(self) -> dict:
        # ru_maxrss is in KiB on Linux and in bytes on macOS.
        unit = 1 if sys.platform == "darwin" else 1024
        return {
            "peak_memory_mb": self.peak / 2**20,
            "peak_memory_measured_by": (
                "torch.cuda.max_memory_allocated during training" if self.cuda
                else "resident set size of the process, sampled every 50 ms during training"
            ),
            "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20,
        }


# --- what the base model and the adapters occupy --------------------------------------------

BASE_COMPONENTS = (
    "quantized_linear_weights", "quantization_constants", "linear_weights", "embeddings",
    "norms_and_biases", "head",
)


def component(module: nn.Module, param_name: str, in_head: bool) -> str:
    """Which of BASE_COMPONENTS a parameter of a base model belongs to (``in_head``: the module
    is inside the task head, adarank.modules.head_modules, which is trained in full and never quantised)."""
    if in_head:
        return "head"
    if is_linear_4bit(module) and param_name == "weight":
        return "quantized_linear_weights"
    if isinstance(module, nn.Embedding):
        return "embeddings"
    if isinstance(module, nn.Linear) and param_name == "weight":
        return "linear_weights"
    return "norms_and_biases"


def _quant_state_tensors(weight) -> list[torch.Tensor]:
    state = getattr(weight, "quant_state", None)
    if state is None:
        return []
    tensors = [state.absmax, state.code, getattr(state, "offset", None)]
    if state.state2 is not None:
        tensors += [state.state2.absmax, state.state2.code]
    return [t for t in tensors if isinstance(t, torch.Tensor)]


def base_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(component, tensor) for every parameter, quantisation constant and buffer of a base model.

    A tensor shared by several modules (the NF4 code book) comes once. Parameters are the
    ``nn.Parameter`` among them.
    """
    head = set(head_modules(model))
    seen: set[int] = set()
    for name, module in model.named_modules():
        in_head = any(part in head for part in name.split("."))
        found = []
        for param_name, param in module.named_parameters(recurse=False):
            found.append((component(module, param_name, in_head), param))
            if found[-1][0] == "quantized_linear_weights":
                found += [("quantization_constants", constant) for constant in _quant_state_tensors(param)]
        found += [("head" if in_head else "norms_and_biases", buffer) for buffer in module.buffers(recurse=False)]
        for kind, tensor in found:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                yield kind, tensor


def base_model_bytes(model: nn.Module) -> dict:
    """Bytes of a (possibly 4-bit) model by component kind and dtype, before adapters are added."""
    table: dict[str, dict[str, int]] = {c: {} for c in BASE_COMPONENTS}
    for kind, tensor in base_tensors(model):
        dtype = str(tensor.dtype).removeprefix("torch.")
        table[kind][dtype] = table[kind].get(dtype, 0) + tensor.numel() * tensor.element_size()
    totals = {c: sum(by_dtype.values()) for c, by_dtype in table.items()}
    return {"components": table, "component_bytes": totals, "total_bytes": sum(totals.values())}


def quantized_bits_per_parameter(model: nn.Module) -> float | None:
    """Bits per quantised weight, the quantisation constants included (NF4 + double quantisation: 4.127)."""
    report = base_model_bytes(model)["component_bytes"]
    quantized = sum(
        int(torch.Size(m.weight.quant_state.shape).numel())
        for m in model.modules() if is_linear_4bit(m) and getattr(m.weight, "quant_state", None) is not None
    )
    if not quantized:
        return None
    return 8 * (report["quantized_linear_weights"] + report["quantization_constants"]) / quantized


def saved_adapter_size(adapter_dir) -> dict:
    """What the saved adapter really holds: tensor bytes, LoRA parameters, and the file size."""
    path = Path(adapter_dir) / "adapter_model.safetensors"
    with open(path, "rb") as handle:
        (header_length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_length))
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    data_bytes = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in tensors.values())
    def size(entry) -> int:
        return entry["data_offsets"][1] - entry["data_offsets"][0]

    return {
        "adapter_file_bytes": path.stat().st_size,
        "adapter_header_bytes": 8 + header_length,
        "adapter_tensor_bytes": data_bytes,
        "adapter_lora_bytes": sum(size(v) for k, v in tensors.items() if ".lora_" in k),
        "adapter_head_bytes": sum(size(v) for k, v in tensors.items() if ".lora_" not in k),
        "saved_adapter_params": sum(math.prod(v["shape"]) for k, v in tensors.items() if ".lora_" in k),
        "saved_head_params": sum(math.prod(v["shape"]) for k, v in tensors.items() if ".lora_" not in k),
    }


# The saved-adapter figures of a run without adapters (--method none).
NO_ADAPTER = {"adapter_file_bytes": 0, "adapter_header_bytes": 0, "adapter_tensor_bytes": 0, "adapter_lora_bytes": 0,
              "adapter_head_bytes": 0, "saved_adapter_params": 0, "saved_head_params": 0}


@dataclass
class MemoryReport:
    """memory.json: the base model's bytes by component and dtype, the saved adapter's, and the peak
    measured while training."""

    base: dict  # base_model_bytes
    quantized_bits_per_parameter: float | None
    adapter: dict | None = None  # the trainable parameters and what the saved adapter holds
    peak: dict | None = None  # PeakMemory.report() of training

    @classmethod
    def of_base(cls, model: nn.Module) -> MemoryReport:
        """The base model's figures, taken before adapters are added."""
        return cls(base_model_bytes(model), quantized_bits_per_parameter(model))

    def add_adapter(self, counts: ParameterCounts, adapter_dir: Path | None) -> None:
        """The saved adapter in ``adapter_dir`` (None: a run without adapters)."""
        saved = saved_adapter_size(adapter_dir) if adapter_dir is not None else NO_ADAPTER
        self.adapter = {"trainable_params": counts.as_dict(), **saved}

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """The memory figures of the comparison table, in MB (2**20 bytes)."""
        return {
            "base_mb": self.base["total_bytes"] / 2**20,
            "adapter_mb": self.adapter["adapter_lora_bytes"] / 2**20,  # the LoRA tensors alone
            "head_mb": self.adapter["adapter_head_bytes"] / 2**20,
            "saved_adapter_params": self.adapter["saved_adapter_params"],
            "quantized_bits_per_parameter": self.quantized_bits_per_parameter,
        }
