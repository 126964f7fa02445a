"""Everything about one run that is not the task or the method: its directory, its callbacks,
preemption and resumption, the environment it records."""
