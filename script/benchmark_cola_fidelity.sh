#!/usr/bin/env bash
# The paper-length comparison of BENCHMARKS.md ("AdaLoRA fidelity"): CoLA at 25 epochs (the
# paper's length), full train and dev sets, embedded MiniLM, 3 seeds of each configuration:
# LoRA r=2 and AdaLoRA small under the paper's Table 8 (--recipe paper), and both under the
# authors' released script settings (--recipe official).
# Finished runs keep their small files (config, metrics, history, ranks, predictions; never
# adapters or checkpoints) under results/fidelity/cola/<config>-seed<N>/, and a run already
# there is skipped, so the table grows from session to session. Every run is fp32 (--no_bf16), as
# the table's first seeds were, whatever the CPU's default.
# JOBS runs go side by side, each with cores/JOBS threads (two single-threaded runs finish
# sooner in total than one two-threaded run on two cores; see BENCHMARKS.md).
# Usage: [SEEDS="42 43 44"] [CONFIGS="lora-r2 adalora-small adalora-official lora-official"] [JOBS=2] [NICE=0]
#        [EPOCHS=25] [EXTRA="--diagnostics"]
#        [THREADS=cores/JOBS] bash script/benchmark_cola_fidelity.sh [GLUE_DATA_DIR] [RUNS_ROOT] [RESULTS_ROOT]
# The diagnosis of why AdaLoRA learns late (3 epochs, one seed, one change per run):
#   EPOCHS=3 SEEDS=42 EXTRA=--diagnostics CONFIGS="lora-r2 adalora-small adalora-init-lora adalora-gamma0
#   adalora-late-pruning adalora-lr2e-3 adalora-official lora-official" \
#   bash script/benchmark_cola_fidelity.sh ../shared/data/glue_data runs/diagnosis/cola results/diagnosis/cola
#SBATCH --job-name=adarank-bench-fidelity
#SBATCH --time=24:00:00
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-../shared/data/glue_data}
runs=${2:-runs/fidelity/cola}
results=${3:-results/fidelity/cola}
python=${PYTHON:-.venv/bin/python}
jobs=${JOBS:-2}
threads=${THREADS:-$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))}
keep=(config.json metrics.json history.jsonl ranks.jsonl predictions.tsv diagnostics.jsonl)

flags() {  # the flags of one configuration
  case $1 in
    lora-r2) echo src/glue-cola.py --method lora --budget small ;;
    adalora-small) echo src/glue-cola.py --method adalora --budget small ;;
    adalora-official) echo src/glue-cola.py --method adalora --budget small --recipe official ;;  # init 3 -> target 1
    lora-official) echo src/glue-cola.py --method lora --budget small --recipe official ;;  # r=2 under the same recipe
    # The diagnosis (BENCHMARKS.md): AdaLoRA small with one thing changed.
    adalora-init-lora) echo src/glue-cola.py --method adalora --budget small --adalora_init lora ;;  # (a) E = 1, B = 0
    adalora-gamma0) echo src/glue-cola.py --method adalora --budget small --orth_reg_weight 0 ;;  # (b) no regulariser
    adalora-late-pruning) echo src/glue-cola.py --method adalora --budget small --tinit 400 --tfinal 200 ;;  # (c)
    adalora-lr2e-3) echo src/glue-cola.py --method adalora --budget small --learning_rate 2e-3 ;;  # (d) 4x the lr
    *) echo "error: unknown config '$1': choose from lora-r2 adalora-small adalora-official lora-official" \
            "adalora-init-lora adalora-gamma0 adalora-late-pruning adalora-lr2e-3" >&2
       return 2 ;;
  esac
}

one() {  # config seed: train (continuing from the run's newest complete checkpoint, if any), keep the small files
  local config=$1 seed=$2 name="$1-seed$2"
  # shellcheck disable=SC2046
  OMP_NUM_THREADS=$threads nice -n "${NICE:-0}" "$python" $(flags "$config") --data_dir "$data_dir" \
    --num_train_epochs "${EPOCHS:-25}" --seed "$seed" --output_dir "$runs/$name" --resume_from_checkpoint auto \
    --no_bf16 ${EXTRA:-} \
    >>"$runs/$name.log" 2>&1 || { echo "failed: $name (see $runs/$name.log)" >&2; return 1; }
  mkdir -p "$results/$name"
  for f in "${keep[@]}"; do [ -f "$runs/$name/$f" ] && cp "$runs/$name/$f" "$results/$name/"; done
  echo "finished: $name"
}
export -f one flags
export python data_dir runs results threads EPOCHS EXTRA
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
