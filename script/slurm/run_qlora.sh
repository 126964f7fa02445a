#!/usr/bin/env bash
# A method on a 4-bit NF4 base (QLoRA, QLoRA + AdaLoRA, DoRA or rsLoRA) on one GLUE task, on a SLURM
# GPU node or with plain bash.
#   sbatch script/run_qlora.sh TASK [METHOD] BUDGET [SEED] [extra flags...]   (METHOD: qlora qadalora qdora qrslora)
#   sbatch script/run_qlora.sh sst2 qadalora small 42 --model_name_or_path microsoft/deberta-v3-base
# The run directory is $RUNS/<task>/<method>-<budget>-seed<seed> (RUNS default: runs). Preemption and requeue: script/slurm/job.sh.
#SBATCH --job-name=adarank-qlora
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
[ $# -ge 2 ] || { echo "usage: $0 TASK [METHOD] BUDGET [SEED] [extra flags...]" >&2; exit 2; }
case $2 in small|large) set -- "$1" qlora "${@:2}" ;; esac  # METHOD left out: qlora
parse_run_arguments "$@"
case $method in qlora|qadalora|qdora|qrslora) ;; *)
  echo "error: run_qlora.sh trains qlora qadalora qdora qrslora, not '$method': use run_glue.sh for $method" >&2; exit 2 ;; esac
entry=$(glue_script "$task")
cd "${SLURM_SUBMIT_DIR:-$here/../..}"
run_job "$entry" "${RUNS:-runs}/$task/$method-$budget-seed$seed" \
  --method "$method" --budget "$budget" --seed "$seed" "${rest[@]}"
