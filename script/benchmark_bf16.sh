#!/usr/bin/env bash
# bf16 autocast against fp32 on the CPU (BENCHMARKS.md, "bf16 on the CPU"): SST-2 as in the SST-2
# benchmark (embedded MiniLM, 8,000 training examples, the full dev set, 3 epochs, small budget),
# LoRA and AdaLoRA, each seed in both precisions, so that the bf16 - fp32 difference can be read
# against the spread of seeds. Finished runs keep their small files under
# results/bf16/sst2/<method>-<precision>-seed<N>/ and are skipped when run again.
# Usage: [SEEDS="42 43 44"] [METHODS="lora adalora"] [JOBS=2] [NICE=0]
#        bash script/benchmark_bf16.sh [GLUE_DATA_DIR] [RUNS_ROOT] [RESULTS_ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-../shared/data/glue_data}
runs=${2:-runs/bf16/sst2}
results=${3:-results/bf16/sst2}
python=${PYTHON:-.venv/bin/python}
jobs=${JOBS:-2}
threads=${THREADS:-$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))}

one() {  # method precision seed
  local name="$1-$2-seed$3" precision_flag=--no_bf16
  [ "$2" = bf16 ] && precision_flag=--bf16
  OMP_NUM_THREADS=$threads nice -n "${NICE:-0}" "$python" src/glue_sst2.py --method "$1" --budget small \
    --data_dir "$data_dir" --max_train_samples 8000 --num_train_epochs 3 --seed "$3" "$precision_flag" \
    --output_dir "$runs/$name" --resume_from_checkpoint auto >>"$runs/$name.log" 2>&1 \
    || { echo "failed: $name (see $runs/$name.log)" >&2; return 1; }
  mkdir -p "$results/$name"
  for f in config.json metrics.json history.jsonl ranks.jsonl predictions.tsv; do
    [ -f "$runs/$name/$f" ] && cp "$runs/$name/$f" "$results/$name/"
  done
  echo "finished: $name"
}
export -f one
export python data_dir runs results threads

mkdir -p "$runs" "$results"
pending=()
for seed in ${SEEDS:-42 43 44}; do
  for method in ${METHODS:-lora adalora}; do
    for precision in fp32 bf16; do
      [ -f "$results/$method-$precision-seed$seed/metrics.json" ] || pending+=("$method $precision $seed")
    done
  done
done
echo "${#pending[@]} run(s) to do, $jobs at a time, $threads thread(s) each"
[ ${#pending[@]} -gt 0 ] || exit 0
printf '%s\n' "${pending[@]}" | xargs -P "$jobs" -L 1 bash -c 'one "$@"' _
