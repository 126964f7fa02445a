#!/usr/bin/env bash
# The whole comparison as one SLURM job array, then one job that writes its tables and report.
#   bash script/slurm/run_matrix.sh [--dry-run] [--preset NAME | --config FILE] [--tasks "..."] [--methods "..."]
#                                   [--budgets "..."] [--seeds "..."] [-- extra flags for every run]
# Default: the original project's table, MNLI, SST-2, CoLA, QNLI x lora, adalora x small, large x
# seeds 42 43 44 (48 runs). --preset NAME reads script/slurm/presets/NAME.conf: rivals (the adaptive-rank
# rivals beside LoRA, AdaLoRA and plateau at the small budget). A config file holds the same choices, one a line:
#   tasks=cola sst2
#   methods=lora adalora qadalora plateau
#   flags=--model_name_or_path microsoft/deberta-v3-base
# Methods: lora adalora increlora sora dora pissa rslora eva (run_glue.sh), qlora qadalora qdora qrslora
# (run_qlora.sh), plateau (run_plateau.sh); the
# task cnndailymail takes lora adalora qlora qadalora none with run_cnndm.sh. Runs go to $RUNS/<task>/<method>-<budget>-seed<seed>
# (RUNS default runs/matrix). A run that finished (metrics.json) is not submitted again; an
# unfinished one continues from its newest complete checkpoint. After the array, a dependent job
# (afterany: it runs whatever the array's outcome) writes $RUNS/tables.md (summarize_runs.py) and
# $RUNS/report.html (report.py). --dry-run prints the array's commands and size and submits nothing.
# Refused before anything is listed or submitted: an empty or repeated task, method, budget or seed, a seed
# that is not a whole number, a task or method no job script takes, and a pair none runs (cnndailymail with
# a rival or plateau). Flags after -- reach each job as the same words; flags= in a config is split into
# words as xargs splits them (quotes group words; nothing is expanded).
# script/run_matrix.sh is a link to this file, as script/run_{glue,qlora,plateau,cnndm}.sh are to theirs.
set -euo pipefail
caller=$PWD  # a --config path is read from where the script was started
cd "$(dirname "$(readlink -f "$0")")/../.."
# shellcheck source=script/slurm/job.sh
. script/slurm/job.sh  # glue_script: the tasks of run_glue.sh and run_qlora.sh

tasks="mnli sst2 cola qnli" methods="lora adalora" budgets="small large" seeds="42 43 44" flags="" dry=0 passed=()
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry=1 ;;
    --tasks|--methods|--budgets|--seeds)
      [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
      declare "${1#--}=$2"; shift ;;
    --preset|--config)
      [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
      file=$2
      case $file in /*) ;; *) [ ! -f "$caller/$file" ] || file=$caller/$file ;; esac
      if [ "$1" = --preset ]; then
        file=script/slurm/presets/$2.conf
        [ -f "$file" ] || { echo "error: unknown preset '$2': choose one of $(ls script/slurm/presets | sed 's/\.conf$//' | tr '\n' ' ')" >&2; exit 2; }
      fi
      [ -f "$file" ] || { echo "error: --config needs an existing file" >&2; exit 2; }
      while IFS= read -r line || [ -n "$line" ]; do
        line=${line%%#*}
        [ -n "${line// }" ] || continue
        key=${line%%=*} value=${line#*=}
        case $key in tasks|methods|budgets|seeds|flags) declare "$key=$value" ;;
          *) echo "error: $file: unknown key '$key': use tasks, methods, budgets, seeds or flags" >&2; exit 2 ;; esac
      done < "$file"
      shift ;;
    --) shift; passed=("$@"); break ;;
    *) echo "error: unknown argument '$1' (see the head of $0)" >&2; exit 2 ;;
  esac
  shift
done
# flags= split into words as xargs splits them (quotes group words, no expansion), then the flags after --;
# each word shell-quoted (%q)
quoted=$(printf '%s' "$flags" | xargs -r printf '%q ' 2>/dev/null) \
  || { echo "error: flags=$flags: a quote is not closed: close it (within quotes a backslash escapes nothing:" \
         "put a ' inside \"...\" and a \" inside '...')" >&2; exit 2; }
eval "words=($quoted)"
words+=("${passed[@]}")
refuse_run_flags "${words[@]}"  # each job sets --method, --budget, --seed and its directory itself
flags=$( [ ${#words[@]} -eq 0 ] || printf ' %q' "${words[@]}" )  # one space before each flag
export RUNS=${RUNS:-runs/matrix}

command_of() {  # task method budget seed -> the job script's command line
  local task=$1 method=$2 budget=$3 seed=$4 why
  if [ "$task" = cnndailymail ]; then
    case $method in lora|adalora|qlora|qadalora|none) echo "script/slurm/run_cnndm.sh $method $budget $seed"; return ;;
      *) echo "error: cnndailymail takes lora adalora qlora qadalora none, not '$method'" >&2; return 2 ;; esac
  fi
  why=$(glue_script "$task" 2>&1 >/dev/null) || { echo "$why, or cnndailymail" >&2; return 2; }
  case $method in
    lora|adalora|increlora|sora|dora|pissa|rslora|eva) echo "script/slurm/run_glue.sh $task $method $budget $seed" ;;
    qlora|qadalora|qdora|qrslora) echo "script/slurm/run_qlora.sh $task $method $budget $seed" ;;
    plateau) echo "script/slurm/run_plateau.sh $task $budget $seed" ;;
    *) echo "error: unknown method '$method': choose from lora adalora increlora sora dora pissa rslora eva" \
         "qlora qadalora qdora qrslora plateau" >&2; return 2 ;;
  esac
}

check_choices() {  # name words...: one or more, none twice (seeds: whole numbers, 1 and 01 the same)
  local name=$1 seen=" " word key
  shift
  [ $# -gt 0 ] || { echo "error: no $name given: give one or more with --$name (or $name= in a config)" >&2; exit 2; }
  for word in "$@"; do
    key=$word
    if [ "$name" = seeds ]; then
      [[ $word =~ ^0*([0-9]{1,10})$ ]] && key=$((10#${BASH_REMATCH[1]})) && [ "$key" -lt 4294967296 ] \
        || { echo "error: seed '$word' is not a whole number from 0 to 2^32 - 1: give seeds as 0 1 2 ..." >&2; exit 2; }
    fi
    case $seen in *" $key "*) echo "error: --$name '$*' names $key twice: name each once" >&2; exit 2 ;; esac
    seen="$seen$key "
  done
}

read -r -a task_list <<< "$tasks"; read -r -a method_list <<< "$methods"
read -r -a budget_list <<< "$budgets"; read -r -a seed_list <<< "$seeds"
check_choices tasks "${task_list[@]}"; check_choices methods "${method_list[@]}"
check_choices budgets "${budget_list[@]}"; check_choices seeds "${seed_list[@]}"
for budget in "${budget_list[@]}"; do
  case $budget in small|large) ;; *) echo "error: unknown budget '$budget': choose small or large" >&2; exit 2 ;; esac
done
for task in "${task_list[@]}"; do for method in "${method_list[@]}"; do
  command_of "$task" "$method" small 0 > /dev/null  # every task and method, and every pair, before anything is listed
done; done

lines=() finished=0
for task in "${task_list[@]}"; do for method in "${method_list[@]}"; do
  for budget in "${budget_list[@]}"; do for seed in "${seed_list[@]}"; do
    line=$(command_of "$task" "$method" "$budget" "$seed")
    dir="$RUNS/$task/$method-$budget-seed$seed"
    if [ -f "$dir/metrics.json" ]; then finished=$((finished + 1)); continue; fi
    lines+=("$line$flags")
  done; done
done; done

echo "matrix: ${task_list[*]} x ${method_list[*]} x ${budget_list[*]} x seeds ${seed_list[*]}; $finished finished," \
  "${#lines[@]} to run (array size ${#lines[@]})"
if [ ${#lines[@]} -eq 0 ]; then
  echo "nothing to submit: every run of the matrix has finished (tables: python analysis/summarize_runs.py $RUNS)"
  exit 0
fi
if [ "$dry" -eq 1 ]; then
  printf '%s\n' "${lines[@]}"
  exit 0
fi
command -v sbatch >/dev/null || { echo "error: sbatch not found: run this on a SLURM login node (or --dry-run)" >&2; exit 2; }
mkdir -p logs "$RUNS"
list="$RUNS/matrix-$(date +%Y%m%d-%H%M%S).txt"
printf '%s\n' "${lines[@]}" > "$list"
# Each array task runs line SLURM_ARRAY_TASK_ID + 1 of the list with bash (which reads the words' %q quoting:
# --wrap's script is sh); the job script's own
# #SBATCH lines do not apply there, so the array asks for what run_glue.sh asks for.
array=$(sbatch --parsable --job-name=adarank-matrix --array=0-$((${#lines[@]} - 1)) --gres=gpu:1 --cpus-per-task=8 \
  --mem=32G --time=24:00:00 --requeue --signal=B:USR1@300 --open-mode=append --output="logs/%x-%A_%a.out" \
  --export=ALL ${SBATCH_EXTRA:-} \
  --wrap="set -e; line=\$(sed -n \"\$((SLURM_ARRAY_TASK_ID + 1))p\" '$list'); exec bash -c \"exec bash \$line\"")
array=${array%%;*}
python=${PYTHON:-.venv/bin/python}
report=$(sbatch --parsable --job-name=adarank-matrix-report --dependency="afterany:$array" --cpus-per-task=1 \
  --mem=8G --time=01:00:00 --output="logs/%x-%j.out" --export=ALL ${SBATCH_REPORT_EXTRA:-} \
  --wrap="$python analysis/summarize_runs.py '$RUNS' > '$RUNS/tables.md'; $python analysis/report.py '$RUNS' --out '$RUNS/report.html'")
echo "submitted array job $array (${#lines[@]} runs, listed in $list) and report job ${report%%;*}"
echo "where it stands: squeue -j $array; tables: $RUNS/tables.md and $RUNS/report.html once job ${report%%;*} ends"
