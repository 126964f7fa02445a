#!/usr/bin/env bash
# Dynamic rank scheduling via loss plateau (src/custom) on a GLUE task, on a SLURM GPU node or with bash.
#   sbatch script/run_plateau.sh TASK BUDGET [SEED] [extra flags...]
#   sbatch script/run_plateau.sh cola large 42 --plateau_patience 2
# The run directory is $RUNS/<task>/plateau-<budget>-seed<seed> (RUNS default: runs). Preemption and requeue: script/slurm/job.sh.
#SBATCH --job-name=adarank-plateau
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")  # script/slurm, also when started through the link script/<name>
[ -f "$here/job.sh" ] || here=${SLURM_SUBMIT_DIR:-.}/script/slurm  # sbatch runs a copy of this file elsewhere
# shellcheck source=script/slurm/job.sh
. "$here/job.sh"
[ $# -ge 2 ] || { echo "usage: $0 TASK BUDGET [SEED] [extra flags...]" >&2; exit 2; }
parse_run_arguments "$1" plateau "${@:2}"
entry=$(glue_script "$task")
entry=src/custom/${entry#src/}  # src/custom holds an entry script of each GLUE task, named as src/'s
cd "${SLURM_SUBMIT_DIR:-$here/../..}"
run_job "$entry" "${RUNS:-runs}/$task/plateau-$budget-seed$seed" --budget "$budget" --seed "$seed" "${rest[@]}"
