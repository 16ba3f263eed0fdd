"""The launcher half of asyncddp: everything that runs in the parent process before and around
a job, and never inside a rank.

``hosts`` and ``slurm`` say which hosts and slots a job has, ``config`` reads the YAML cluster
file and ``run_config`` merges it with command-line options, ``mpi`` knows each MPI implementation (and finds the mpirun),
``plan`` turns options into an mpirun argv and environment, ``prepare.plan_job`` is the one path
from options to a plan on this machine, ``job`` runs that plan and watches its ranks
(``stop_signals``: how SIGINT/SIGTERM/SIGHUP stop it; ``session_guard``: how mpirun's session is
ended, also when the launcher is killed outright; ``log_dir``: a log folder per run),
(``survival`` says how a fault-tolerant job's ranks ended, ``restart`` relaunches a failed job;
``rank_guard`` alone runs on the ranks' hosts, around each rank of a fault-tolerant job),
``interactive`` starts ipyparallel engines, ``emulate`` (with ``emulate_spec`` and ``netns``)
builds an emulated cluster of network namespaces. Nothing
here imports MPI or torch; the runtime half (``asyncddp.comm``, ``optim``, ``topology``) never
imports this package.
"""
