"""The benchmark code every rank runs; the parent side (launch, results, tables) is ``asyncddp.bench``.

Workloads: ``comm_ops`` (communication ops against raw mpi4py, nccl-tests style), ``training``
(one (method, np) training-throughput run), ``fault`` (one method's run that loses a rank), ``straggler`` (one slow rank, synchronous vs
asynchronous), ``converge`` (one method trained to a held-out accuracy, on the tasks of
``converge_tasks``) and ``models`` (the model zoo the last two train). ``__main__`` is the one per-rank
entry point: ``python -m mpi4py -m asyncddp.bench_ranks WORKLOAD OPTIONS_JSON RESULT_PATH``.
"""
