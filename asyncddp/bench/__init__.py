"""``asyncddp bench``, the parent side: benchmarks launched through the same path as ``asyncddp run``.

``runner`` launches a workload of ``asyncddp.bench_ranks`` (what every rank runs) and collects
rank 0's result; ``results`` holds the options and results both sides exchange as JSON (and the
tags of rank 0's progress and result lines); ``network`` records the emulated cluster a result
was taken on; ``sweep`` repeats a model bench over link rates; ``fault`` holds the options,
checks and results of a model bench that loses a rank (``--kill-rank``); ``render`` turns results
into tables and plots. ``methods`` is the one registry of training methods every model bench runs;
``converge`` (options, data split, results), ``converge_run`` (its launches) and
``converge_render`` (its table and plot) make ``bench converge``, time to accuracy per method.
Importing this package stays cheap: torch and mpi4py are imported only inside the ranks.
"""
