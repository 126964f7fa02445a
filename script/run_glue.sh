#!/usr/bin/env bash
# Fine-tune one GLUE task on a SLURM GPU node (or anywhere, with plain bash).
#   sbatch script/run_glue.sh TASK METHOD BUDGET [SEED] [extra flags...]
#   sbatch script/run_glue.sh cola adalora small 42 --model_name_or_path microsoft/deberta-v3-base
# TASK: cola sst2 mnli qnli rte mrpc stsb qqp; METHOD: lora adalora qlora qadalora; BUDGET: small large.
# The run directory is runs/<task>/<method>-<budget>-seed<seed>; set GLUE_DIR to read local GLUE files.
# Five minutes before the time limit (or on preemption) SLURM sends USR1 (TERM): the run checkpoints
# at the next optimizer step and exits 75, and the job requeues itself to continue from there.
#SBATCH --job-name=adarank-glue
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
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
# The batch shell gets the signal (B:); the run must, so pass it on, and wait again for its checkpoint.
run=
trap '[ -n "$run" ] && kill -USR1 "$run" 2>/dev/null' USR1
trap '[ -n "$run" ] && kill -TERM "$run" 2>/dev/null' TERM
# auto: continue from the run's newest complete checkpoint (a resubmitted or requeued job), if any.
"$python" "$script" --method "$method" --budget "$budget" --seed "$seed" \
  --output_dir "runs/$task/$method-$budget-seed$seed" --resume_from_checkpoint auto "$@" &
run=$!
code=0
wait "$run" || code=$?
while kill -0 "$run" 2>/dev/null; do wait "$run" || code=$?; done
if [ "$code" -eq 75 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  echo "stopped after a checkpoint: requeueing job $SLURM_JOB_ID" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$code"
