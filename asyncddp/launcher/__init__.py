"""The launcher half of asyncddp: everything that runs in the parent process before and around
a job, and never inside a rank.

``hosts`` and ``slurm`` say which hosts and slots a job has, ``config`` merges the YAML cluster
file with command-line options, ``plan`` turns them into an mpirun argv and environment,
``job`` runs that plan and watches its ranks, ``interactive`` starts ipyparallel engines,
``emulate`` (with ``emulate_spec`` and ``netns``) builds an emulated cluster of network namespaces. Nothing
here imports MPI or torch; the runtime half (``asyncddp.comm``, ``optim``, ``topology``) never
imports this package.
"""
