#!/usr/bin/env bash
# CoLA benchmark of BENCHMARKS.md for the plateau method: fixed LoRA r=2 and r=8, AdaLoRA
# 12 -> 8, plateau as in the original (all modules, random A rows) and its variants (new rows
# from the raw or the whitened weight gradient; growth of the most important modules only), on
# the embedded MiniLM, full CoLA train and dev sets, 3 epochs, one pass over the seeds at a time.
# Usage: [SEEDS="42 43 44"] [EPOCHS=3] [CONFIGS="..."] bash script/benchmark_cola_plateau.sh [GLUE_DATA_DIR] [RUNS_ROOT]
#SBATCH --job-name=adarank-bench-plateau
#SBATCH --time=08:00:00
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-../shared/data/glue_data}
runs=${2:-runs/benchmark-cola}
python=${PYTHON:-.venv/bin/python}
epochs=${EPOCHS:-3}
common=(--data_dir "$data_dir" --num_train_epochs "$epochs")
# min_delta 0: the value these runs were made with (the scripts' default is now 1e-4).
plateau=(--r0 2 --delta_r 2 --r_max 8 --eval_every 40 --plateau_patience 2 --plateau_min_delta 0)
run() {  # name seed script flags...
  local name=$1 seed=$2 script=$3
  shift 3
  [ -f "$runs/$name-seed$seed/metrics.json" ] && return 0  # finished earlier
  "$python" "$script" "${common[@]}" --seed "$seed" --output_dir "$runs/$name-seed$seed" --overwrite_output_dir "$@"
}
for seed in ${SEEDS:-42 43 44}; do
  for config in ${CONFIGS:-lora-r2 lora-r8 adalora-12to8 plateau plateau-gradient plateau-whitened \
                plateau-importance plateau-importance-whitened}; do
    case $config in
      lora-r2) run "$config" "$seed" src/glue-cola.py --method lora --budget small ;;
      lora-r8) run "$config" "$seed" src/glue-cola.py --method lora --budget large ;;
      adalora-12to8) run "$config" "$seed" src/glue-cola.py --method adalora --budget large ;;
      plateau) run "$config" "$seed" src/custom/glue-cola.py "${plateau[@]}" ;;
      plateau-gradient) run "$config" "$seed" src/custom/glue-cola.py "${plateau[@]}" --growth_init gradient ;;
      plateau-whitened) run "$config" "$seed" src/custom/glue-cola.py "${plateau[@]}" --growth_init whitened ;;
      plateau-importance) run "$config" "$seed" src/custom/glue-cola.py "${plateau[@]}" \
        --grow_where importance --growth_budget 24 ;;
      plateau-importance-whitened) run "$config" "$seed" src/custom/glue-cola.py "${plateau[@]}" \
        --growth_init whitened --grow_where importance --growth_budget 24 ;;
      *) echo "error: unknown config '$config'" >&2; exit 2 ;;
    esac
  done
done
