#!/usr/bin/env bash
# Fine-tune one GLUE task on a SLURM GPU node (or anywhere, with plain bash). script/run_glue.sh is a link
# to this file (sbatch reads the #SBATCH lines through it).
#   sbatch script/run_glue.sh TASK METHOD BUDGET [SEED] [extra flags...]
#   sbatch script/run_glue.sh cola adalora small 42 --model_name_or_path microsoft/deberta-v3-base
# TASK: cola sst2 mnli qnli rte mrpc stsb qqp; METHOD: lora adalora increlora sora dora pissa rslora eva
# (and the 4-bit qlora qadalora qdora qrslora, also through run_qlora.sh); BUDGET: small large.
# The run directory is $RUNS/<task>/<method>-<budget>-seed<seed> (RUNS default: runs); set GLUE_DIR to read local GLUE files.
# Preemption, requeue, NPROC and the Python used: script/slurm/job.sh.
#SBATCH --job-name=adarank-glue
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
parse_run_arguments "$@"
entry=$(glue_script "$task")
cd "${SLURM_SUBMIT_DIR:-$here/../..}"
run_job "$entry" "${RUNS:-runs}/$task/$method-$budget-seed$seed" \
  --method "$method" --budget "$budget" --seed "$seed" "${rest[@]}"
