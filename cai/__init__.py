"""The ``cai`` application: the command dispatcher and the orchestration of all stages (``cai run``)."""
