#!/usr/bin/env bash
# Fine-tune one GLUE task on a SLURM GPU node (or anywhere, with plain bash).
#   sbatch script/run_glue.sh TASK METHOD BUDGET [SEED] [extra flags...]
#   sbatch script/run_glue.sh cola adalora small 42 --model_name_or_path microsoft/deberta-v3-base
# TASK: cola sst2 mnli qnli rte mrpc stsb qqp; METHOD: lora adalora qlora qadalora; BUDGET: small large.
# The run directory is runs/<task>/<method>-<budget>-seed<seed>; set GLUE_DIR to read local GLUE files.
#SBATCH --job-name=adarank-glue
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TASK METHOD BUDGET [SEED] [extra flags...]" >&2
  exit 2
fi
task=$1 method=$2 budget=$3
shift 3
seed=42
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then seed=$1; shift; fi
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
python=${PYTHON:-.venv/bin/python}
script=src/glue-$task.py
[ "$task" = sst2 ] && script=src/glue_sst2.py
if [ ! -f "$script" ]; then
  echo "error: unknown task '$task': choose one of cola sst2 mnli qnli rte mrpc stsb qqp" >&2
  exit 2
fi
# auto: continue from the run's newest complete checkpoint (a resubmitted or requeued job), if any.
exec "$python" "$script" --method "$method" --budget "$budget" --seed "$seed" \
  --output_dir "runs/$task/$method-$budget-seed$seed" --resume_from_checkpoint auto "$@"
