#!/usr/bin/env bash
# SST-2 benchmark of BENCHMARKS.md: each method at the small budget on the embedded
# MiniLM, 8,000 training examples, the full 872-example dev set, 3 epochs.
# Usage: [METHODS="lora adalora qlora qadalora"] bash script/benchmark_sst2.sh [GLUE_DATA_DIR] [RUNS_ROOT] [extra flags...]
#SBATCH --job-name=adarank-bench-sst2
#SBATCH --time=01:00:00
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-../shared/data/glue_data}
runs=${2:-runs/benchmark}
shift $(( $# > 2 ? 2 : $# ))
python=${PYTHON:-.venv/bin/python}
for method in ${METHODS:-lora adalora}; do
  "$python" src/glue_sst2.py --method "$method" --budget small --data_dir "$data_dir" \
    --max_train_samples 8000 --num_train_epochs 3 --seed 42 \
    --output_dir "$runs/sst2-$method-small" "$@"
done
