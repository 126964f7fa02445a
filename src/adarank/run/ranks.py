"""ranks.jsonl: the rank of every adapted module at each allocation event.

One JSON object a line::

    {"step": 120, "event": "prune", "budget": 96, "total_rank": 96,
     "ranks": {"0": {"query": 3, "key": 2, ...}, "1": {...}}}

``step`` counts finished optimizer steps, as ``history.jsonl`` does. Events:
``initial`` (before training), ``prune`` (an AdaLoRA masking step, with its
``mask_threshold``), ``grow`` (rank growth: plateau, IncreLoRA), ``sparsify``
(SoRA: the set of nonzero gates changed) and ``final`` (end of training). Layers are
labelled "0", "1", ... ("encoder.0" ... "decoder.0" ... in encoder-decoder
models, encoder first); within a layer, modules come in the paper's order
(query ... output) or the architecture's (q_proj ... down_proj). A method with
schedule phases names them on its ``initial`` record, e.g.
``"phases": {"warm-up (tinit)": [0, 96], "final (tfinal)": [384, 804]}`` (steps).
"""

from __future__ import annotations

import json
from pathlib import Path

from adarank.modules import KIND_ORDER, layer_order, locate


def nest_by_layer(ranks: dict[str, int]) -> dict[str, dict[str, int]]:
    """{module or parameter name: rank} -> {layer label: {module kind: rank}}."""
    nested: dict[str, dict[str, int]] = {}
    for name, rank in ranks.items():
        place = locate(name)
        if place is None:
            raise ValueError(f"cannot place adapted module {name!r} in a layer")
        layer, kind = place
        nested.setdefault(layer, {})[kind] = int(rank)
    return {
        layer: {k: kinds[k] for k in sorted(kinds, key=KIND_ORDER.index)}
        for layer, kinds in sorted(nested.items(), key=lambda item: layer_order(item[0]))
    }


def final_ranks(path: Path) -> dict | None:
    """The last record of ranks.jsonl ({layer: {module kind: rank}} and its total), None without one."""
    if not path.is_file():
        return None
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


class RankLog:
    """Appends allocation events to ``ranks.jsonl`` (main process only), and hands each record to
    ``scalars`` (run/scalars.py: TensorBoard, W&B) where one is given."""

    def __init__(self, path: Path, enabled: bool = True, scalars=None):
        self.path = path
        self.enabled = enabled
        self.scalars = scalars
        if scalars is not None and (last := final_ranks(path)) is not None:  # resumed: as its records left them
            scalars.continue_from(last)

    def write(self, step: int, event: str, budget: int, ranks: dict[str, int], **extra) -> dict:
        record = {
            "step": step,
            "event": event,
            "budget": int(budget),
            "total_rank": int(sum(ranks.values())),
            **extra,
            "ranks": nest_by_layer(ranks),
        }
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        if self.scalars is not None:
            self.scalars.rank_record(record)
        return record
