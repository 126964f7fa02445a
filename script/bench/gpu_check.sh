#!/usr/bin/env bash
# The quick speed matrix on a CUDA GPU (bf16, the embedded MiniLM, synthetic demo data unless GLUE
# files are given), and the two checks that a GPU can answer and a CPU cannot:
#   - AdaLoRA's step time against LoRA's at the same init rank (on a CPU: BENCHMARKS.md, "Speed");
#   - QLoRA's peak GPU memory below LoRA's (the 4-bit base is the point of QLoRA; on a CPU the
#     resident set hides it).
# Writes speed.md, speed.json and check.txt to OUT_DIR; meant to finish in under 8 minutes.
#   bash script/bench/gpu_check.sh OUT_DIR [GLUE_DATA_DIR]
# ALLOW_CPU=1 runs it on a CPU (for trying the script itself; the memory check then says nothing).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: bash script/bench/gpu_check.sh OUT_DIR [GLUE_DATA_DIR]}
python=${PYTHON:-.venv/bin/python}
if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if [ "${ALLOW_CPU:-0}" != 1 ]; then
    echo "error: no CUDA GPU here (torch.cuda.is_available() is False): run this on a GPU machine, or set ALLOW_CPU=1 to try the script on a CPU" >&2
    exit 2
  fi
fi
mkdir -p "$out"
"$python" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU', torch.__version__)" \
  | tee "$out/device.txt"
data=()
[ -n "${2:-}" ] && data=(--data_dir "$2")
"$python" script/bench/benchmark_speed.py --quick --work_dir "$out" "${data[@]}" | tee "$out/benchmark.txt"
"$python" - "$out/speed.json" <<'PY' | tee "$out/check.txt"
import json, sys
speed = json.load(open(sys.argv[1]))
rows = {row["run"]: row for row in speed["rows"]}
ratios = speed["ratios"]
lora = next(r for name, r in rows.items() if name.startswith("LoRA r=") and len(name.split()) == 2)
qlora = next(r for name, r in rows.items() if name.startswith("QLoRA r="))
checks = [
    ("AdaLoRA step time within 1.25x LoRA's (same init rank)", ratios["adalora_over_lora"] <= 1.25,
     f"{ratios['adalora_over_lora']:.2f}x"),
    ("QLoRA peak memory below LoRA's", qlora["peak_memory_mb"] < lora["peak_memory_mb"],
     f"{qlora['peak_memory_mb']:.0f} MB vs {lora['peak_memory_mb']:.0f} MB"),
]
for what, ok, value in checks:
    print(f"{'PASS' if ok else 'FAIL'}  {what}: {value}")
PY
