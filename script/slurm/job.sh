# Sourced by the run_*.sh job scripts: one run of the project as a SLURM job (or a plain bash job).
#   run_job ENTRY_SCRIPT RUN_DIR [flags...]
# - The project's Python: $PYTHON, else .venv/bin/python, else python3.
# - Several processes with NPROC=N (default: the GPUs SLURM gave this job, else 1): torchrun with DDP
#   on this node.
# - Across nodes: ask SLURM for one task per GPU (sbatch --nodes 2 --ntasks-per-node 4 --gres gpu:4 ...);
#   with more than one task in the allocation, srun starts one process per task, and each finds its
#   place in the DDP group from SLURM's variables (script/slurm/srun_task.sh).
# - SLURM's warning signal (--signal=B:USR1@300 before the time limit, or TERM on preemption) reaches
#   the batch shell; it is passed on to the run (srun hands it to every task), which checkpoints and
#   exits 75, and the job requeues
#   itself. The requeued job runs the same command, and --resume_from_checkpoint auto continues from
#   the run's newest complete checkpoint. A finished run (metrics.json) is left alone.

ADARANK_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)  # before the job script changes directory

adarank_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -x .venv/bin/python ]; then echo .venv/bin/python
  else echo python3; fi
}

RUN_PID= SIGNALLED=0
forward() {  # signal: to the run, or under torchrun to its workers (torchrun itself would kill them)
  [ -n "$RUN_PID" ] || return 0
  SIGNALLED=1
  if [ "$LAUNCHER" = torchrun ]; then pkill "-$1" -P "$RUN_PID" 2>/dev/null || true
  else kill "-$1" "$RUN_PID" 2>/dev/null || true; fi
}

run_job() {
  local entry=$1 run_dir=$2 python code=0
  shift 2
  python=$(adarank_python)
  if [ -f "$run_dir/metrics.json" ]; then
    echo "$run_dir holds a finished run: nothing to do" >&2
    return 0
  fi
  NPROCS=${NPROC:-${SLURM_GPUS_ON_NODE:-1}} LAUNCHER=python
  if [ -n "${NPROC:-}" ] && ! [[ "$NPROC" =~ ^[1-9][0-9]*$ ]]; then  # a word or 0 ran one process silently
    echo "error: NPROC=$NPROC is not a number of processes: set NPROC to 1 or more, or unset it" >&2
    return 2
  fi
  local launch=("$python")
  if [ -n "${SLURM_JOB_ID:-}" ] && [ "${SLURM_NTASKS:-1}" -gt 1 ]; then
    LAUNCHER=srun
    MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
    MASTER_PORT=${MASTER_PORT:-$(( 20000 + SLURM_JOB_ID % 20000 ))}
    export MASTER_ADDR MASTER_PORT
    launch=(srun --kill-on-bad-exit=0 bash "$ADARANK_SCRIPTS/srun_task.sh" "$python")
  elif [ "$NPROCS" -gt 1 ]; then
    LAUNCHER=torchrun
    launch=("$python" -m torch.distributed.run --standalone --nproc_per_node "$NPROCS")
  fi
  trap 'forward USR1' USR1
  trap 'forward TERM' TERM
  "${launch[@]}" "$entry" --output_dir "$run_dir" --resume_from_checkpoint auto "$@" &
  RUN_PID=$!
  wait "$RUN_PID" || code=$?
  while kill -0 "$RUN_PID" 2>/dev/null; do wait "$RUN_PID" || code=$?; done  # a signal interrupted the wait
  # torchrun reports its workers' exit 75 as a failure of its own (1): after a signal, that is the stop.
  if [ "$SIGNALLED" -eq 1 ] && [ "$LAUNCHER" = torchrun ] && [ "$code" -ne 0 ]; then code=75; fi
  if [ "$code" -eq 75 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    echo "stopped after a checkpoint: requeueing job $SLURM_JOB_ID" >&2
    scontrol requeue "$SLURM_JOB_ID"
  fi
  return "$code"
}

# TASK METHOD BUDGET [SEED] [flags...] -> the variables task, method, budget, seed and the array rest.
parse_run_arguments() {
  if [ $# -lt 3 ]; then
    echo "usage: $0 TASK METHOD BUDGET [SEED] [extra flags...]" >&2
    exit 2
  fi
  task=$1 method=$2 budget=$3
  shift 3
  seed=42
  if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then seed=$1; shift; fi
  rest=("$@")
  refuse_run_flags "${rest[@]}"
}

refuse_run_flags() {  # extra flags that would silently override what the script sets and names the run by
  local word
  for word in "$@"; do
    case ${word%%=*} in
      --method|--budget|--seed|--output_dir|--output-dir)
        echo "error: ${word%%=*} among the extra flags: the script sets it and names the run directory by it;" \
             "give the method, budget and seed as the script's own arguments and the folder as \$RUNS" >&2
        exit 2 ;;
    esac
  done
}

glue_script() {  # task -> its entry script under src/
  case $1 in
    sst2) echo src/glue_sst2.py ;;
    cola|mnli|qnli|rte|mrpc|stsb|qqp) echo "src/glue-$1.py" ;;
    *) echo "error: unknown task '$1': choose one of cola sst2 mnli qnli rte mrpc stsb qqp" >&2; exit 2 ;;
  esac
}
