#!/usr/bin/env bash
# The paper-length comparison of BENCHMARKS.md ("AdaLoRA fidelity"): CoLA at 25 epochs (the
# paper's length), full train and dev sets, embedded MiniLM, 3 seeds of each configuration:
# LoRA r=2 and AdaLoRA small under the paper's Table 8 (--recipe paper), and both under the
# authors' released script settings (--recipe official).
# Finished runs keep their small files (config, metrics, history, ranks, predictions; never
# adapters or checkpoints) under results/fidelity/cola/<config>-seed<N>/, and a run already
# there is skipped, so the table grows from session to session.
# JOBS runs go side by side, each with cores/JOBS threads (two single-threaded runs finish
# sooner in total than one two-threaded run on two cores; see BENCHMARKS.md).
# Usage: [SEEDS="42 43 44"] [CONFIGS="lora-r2 adalora-small adalora-official lora-official"] [JOBS=2] [NICE=0] [EPOCHS=25]
#        bash script/benchmark_cola_fidelity.sh [GLUE_DATA_DIR] [RUNS_ROOT] [RESULTS_ROOT]
#SBATCH --job-name=adarank-bench-fidelity
#SBATCH --time=24:00:00
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-../shared/data/glue_data}
runs=${2:-runs/fidelity/cola}
results=${3:-results/fidelity/cola}
python=${PYTHON:-.venv/bin/python}
jobs=${JOBS:-2}
threads=$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))
keep=(config.json metrics.json history.jsonl ranks.jsonl predictions.tsv)

flags() {  # the flags of one configuration
  case $1 in
    lora-r2) echo src/glue-cola.py --method lora --budget small ;;
    adalora-small) echo src/glue-cola.py --method adalora --budget small ;;
    adalora-official) echo src/glue-cola.py --method adalora --budget small --recipe official ;;  # init 3 -> target 1
    lora-official) echo src/glue-cola.py --method lora --budget small --recipe official ;;  # r=2 under the same recipe
    *) echo "error: unknown config '$1': choose from lora-r2 adalora-small adalora-official lora-official" >&2
       return 2 ;;
  esac
}

one() {  # config seed: train (continuing from the run's newest checkpoint, if any), then keep the small files
  local config=$1 seed=$2 name="$1-seed$2" start=(--overwrite_output_dir) newest
  newest=$(for c in "$runs/$name"/checkpoints/checkpoint-*/trainer_state.json; do  # complete checkpoints only
    [ -f "$c" ] && echo "${c%/trainer_state.json}"; done | awk -F'checkpoint-' '{print $NF, $0}' | sort -n |
    tail -n 1 | cut -d' ' -f2-)
  [ -n "$newest" ] && start=(--resume_from_checkpoint "$newest")
  # shellcheck disable=SC2046
  OMP_NUM_THREADS=$threads nice -n "${NICE:-0}" "$python" $(flags "$config") --data_dir "$data_dir" \
    --num_train_epochs "${EPOCHS:-25}" --seed "$seed" --output_dir "$runs/$name" "${start[@]}" \
    >>"$runs/$name.log" 2>&1 || { echo "failed: $name (see $runs/$name.log)" >&2; return 1; }
  mkdir -p "$results/$name"
  for f in "${keep[@]}"; do [ -f "$runs/$name/$f" ] && cp "$runs/$name/$f" "$results/$name/"; done
  echo "finished: $name"
}
export -f one flags
export python data_dir runs results threads EPOCHS
export keep_list="${keep[*]}"

mkdir -p "$runs" "$results"
pending=()
for seed in ${SEEDS:-42 43 44}; do
  for config in ${CONFIGS:-lora-r2 adalora-small adalora-official lora-official}; do
    flags "$config" >/dev/null
    [ -f "$results/$config-seed$seed/metrics.json" ] || pending+=("$config $seed")
  done
done
echo "${#pending[@]} run(s) to do, $jobs at a time, $threads thread(s) each"
[ ${#pending[@]} -gt 0 ] || exit 0
printf '%s\n' "${pending[@]}" | xargs -P "$jobs" -L 1 bash -c 'keep=($keep_list); one "$@"' _
