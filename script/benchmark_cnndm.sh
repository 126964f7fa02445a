#!/usr/bin/env bash
# The summarization benchmark of BENCHMARKS.md ("CNN/DailyMail"): the embedded SmolLM2-135M-Instruct
# on the shared sample of 167 CNN/DailyMail test articles, trained on the first 137 and scored
# on the last 30 (--validation_split_percentage 18), small budget: the untrained model
# (--method none) against LoRA, AdaLoRA and QLoRA.
# CPU-sized settings, the same for every method: articles cut to 400 tokens, reference
# summaries to 96, batch 4 without accumulation (35 optimizer steps an epoch), greedy decoding
# of at most 80 new tokens with no repeated trigram. Everything else is the task's recipe (the
# authors' CNN/DailyMail script: lr 5e-4, alpha 32, AdaLoRA 4 -> 2, schedule scaled to the run).
# Finished runs keep their small files under results/cnndm/<config>-seed<N>/ and are skipped.
# Usage: [SEEDS=42] [CONFIGS="none lora adalora qlora"] [EPOCHS=3] [JOBS=2] [NICE=0]
#        bash script/benchmark_cnndm.sh [SAMPLE_JSONL] [RUNS_ROOT] [RESULTS_ROOT]
#SBATCH --job-name=adarank-bench-cnndm
#SBATCH --time=12:00:00
set -euo pipefail
cd "$(dirname "$0")/.."
sample=${1:-../shared/data/cnn_dailymail/sample.jsonl}
runs=${2:-runs/cnndm}
results=${3:-results/cnndm}
python=${PYTHON:-.venv/bin/python}
jobs=${JOBS:-2}
threads=${THREADS:-$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))}
[ -f "$sample" ] || { echo "error: $sample does not exist: pass the path of the CNN/DailyMail sample.jsonl" >&2; exit 2; }

common="--data_file $sample --validation_split_percentage 18 --max_seq_length 400 --max_target_length 96
  --per_device_train_batch_size 4 --gradient_accumulation_steps 1 --per_device_eval_batch_size 4
  --num_beams 1 --max_new_tokens 80 --no_repeat_ngram_size 3 --budget small --save_strategy no"

one() {  # config seed
  local config=$1 seed=$2 name="$1-seed$2" method=$1
  local epochs=(--num_train_epochs "${EPOCHS:-3}")
  [ "$config" = none ] && epochs=()
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=$threads nice -n "${NICE:-0}" "$python" src/nlu-cnndailymail.py --method "$method" $common \
    "${epochs[@]}" --seed "$seed" --output_dir "$runs/$name" >>"$runs/$name.log" 2>&1 \
    || { echo "failed: $name (see $runs/$name.log)" >&2; return 1; }
  mkdir -p "$results/$name"
  for f in config.json metrics.json memory.json history.jsonl ranks.jsonl predictions.jsonl; do
    [ -f "$runs/$name/$f" ] && cp "$runs/$name/$f" "$results/$name/"
  done
  echo "finished: $name"
}
export -f one
export python sample runs results threads common EPOCHS NICE

mkdir -p "$runs" "$results"
pending=()
for seed in ${SEEDS:-42}; do
  for config in ${CONFIGS:-none lora adalora qlora}; do
    case $config in none|lora|adalora|qlora|qadalora) ;; *)
      echo "error: unknown config '$config': choose from none lora adalora qlora qadalora" >&2; exit 2 ;; esac
    [ -f "$results/$config-seed$seed/metrics.json" ] || pending+=("$config $seed")
  done
done
echo "${#pending[@]} run(s) to do, $jobs at a time, $threads thread(s) each"
[ ${#pending[@]} -gt 0 ] || exit 0
printf '%s\n' "${pending[@]}" | xargs -P "$jobs" -L 1 bash -c 'one "$@"' _
