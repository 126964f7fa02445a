#!/usr/bin/env bash
# CNN/DailyMail summarization on a SLURM GPU node (or anywhere, with plain bash).
#   sbatch script/run_cnndm.sh METHOD BUDGET [SEED] [extra flags...]
#   sbatch script/run_cnndm.sh adalora small 42 --model_name_or_path facebook/bart-large
#   sbatch script/run_cnndm.sh none small 42 --data_file test.jsonl      (the untrained model's ROUGE)
# METHOD: lora adalora qlora qadalora none. Data: the hub's cnn_dailymail 3.0.0 unless --data_file.
# The run directory is $RUNS/cnndailymail/<method>-<budget>-seed<seed> (RUNS default: runs). Preemption and requeue: script/slurm/job.sh.
#SBATCH --job-name=adarank-cnndm
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")  # script/slurm, also when started through the link script/<name>
[ -f "$here/job.sh" ] || here=${SLURM_SUBMIT_DIR:-.}/script/slurm  # sbatch runs a copy of this file elsewhere
# shellcheck source=script/slurm/job.sh
. "$here/job.sh"
[ $# -ge 2 ] || { echo "usage: $0 METHOD BUDGET [SEED] [extra flags...]" >&2; exit 2; }
parse_run_arguments cnndailymail "$@"
cd "${SLURM_SUBMIT_DIR:-$here/../..}"
run_job src/nlu-cnndailymail.py "${RUNS:-runs}/cnndailymail/$method-$budget-seed$seed" \
  --method "$method" --budget "$budget" --seed "$seed" "${rest[@]}"
