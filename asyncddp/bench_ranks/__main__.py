"""The per-rank entry point of every benchmark: ``WORKLOAD OPTIONS_JSON RESULT_PATH``.

Each workload module has ``run_rank(options: dict) -> dict | None`` (rank 0 returns the result,
the others None; in workload ``fault`` the survivors' rank 0) and may have ``after_shutdown()``. This main initialises asyncddp around it and
hands rank 0's result to the parent twice: as RESULT_PATH (written whole or not at all, so the
parent never reads half a file) and as one ``RESULT_TAG`` line on stdout, which also arrives when
rank 0 runs on another host, where RESULT_PATH's directory does not exist. An error a workload
raises on purpose (``BenchError``, ``ConfigError``) reaches the parent as one ``ERROR_TAG`` line
instead of a traceback.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from asyncddp.bench.results import ERROR_TAG, RESULT_TAG, BenchError
from asyncddp.errors import ConfigError

WORKLOADS = {"comm": "comm_ops", "training": "training", "straggler": "straggler", "fault": "fault",
             "converge": "converge"}


def _write_result(data: dict, path: str) -> None:
    partial = path + ".part"
    try:
        with open(partial, "w") as handle:
            json.dump(data, handle)
        os.replace(partial, path)
    except OSError:
        pass  # rank 0 on another host: the RESULT_TAG line carries the result


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in WORKLOADS:
        raise BenchError(f"usage: python -m asyncddp.bench_ranks {{{','.join(WORKLOADS)}}} OPTIONS_JSON RESULT_PATH "
                         f"(got {' '.join(argv) or 'nothing'})")
    module = importlib.import_module(f"asyncddp.bench_ranks.{WORKLOADS[argv[0]]}")
    import torch

    import asyncddp.comm as addp

    torch.set_num_threads(1)  # ranks share the cores; np=1 must not get all of them
    addp.init()
    try:
        data = module.run_rank(json.loads(argv[1]))
        if data is not None:
            _write_result(data, argv[2])
            print(RESULT_TAG, json.dumps(data), flush=True)
    except (BenchError, ConfigError) as error:
        _fail(error, addp.get_context().comm)
        return 1
    finally:
        addp.shutdown()
    if hasattr(module, "after_shutdown"):
        module.after_shutdown()
    return 0


def _fail(error: Exception, comm) -> None:
    """An error raised on purpose (a bad task, option or device): its one line for the parent,
    which shows it instead of a traceback, then the whole job ends (the other ranks may be
    waiting in a collective for this one)."""
    print(ERROR_TAG, json.dumps({"type": type(error).__name__, "message": str(error)}), flush=True)
    if comm.Get_size() > 1:
        comm.Abort(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
