"""``asyncddp bench``: benchmarks launched through the same path as ``asyncddp run``.

``comm`` (communication micro-benchmarks in nccl-tests form) runs on every rank; ``runner``
launches it and collects rank 0's result; ``render`` turns results into tables and plots.
Importing this package stays cheap: torch and mpi4py are imported only inside the ranks.
"""
