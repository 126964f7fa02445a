# One DDP process of a job that srun starts once per task (script/slurm/job.sh, more than one task):
#   srun bash script/slurm/srun_task.sh PYTHON ENTRY_SCRIPT [flags...]
# Its place in the group comes from SLURM's variables, in the names torch.distributed reads;
# MASTER_ADDR and MASTER_PORT come from the batch shell. exec keeps the signals srun forwards
# (USR1, TERM) going to the run itself.
export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID
per_node=${SLURM_STEP_TASKS_PER_NODE:-$SLURM_NTASKS}  # "4", or "4(x2)" on two nodes of four tasks
export LOCAL_WORLD_SIZE=${per_node%%[(,]*}
exec "$@"
