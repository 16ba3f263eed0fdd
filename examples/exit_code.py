"""One rank exits with a chosen code while the others wait in a barrier (launcher tests).

    asyncddp run -np 4 examples/exit_code.py 2 7          # rank 2: sys.exit(7)
    asyncddp run -np 4 examples/exit_code.py 2 7 --hard   # rank 2: os._exit(7), like a crash

The waiting ranks would hang forever on their own; ``asyncddp run`` must stop them, exit with 7
and name rank 2 and its host.
"""

import os
import sys

import asyncddp as addp
from asyncddp.comm.context import get_context

failing_rank = int(sys.argv[1]) if len(sys.argv) > 1 else 2
exit_code = int(sys.argv[2]) if len(sys.argv) > 2 else 7

addp.init()
print(f"rank {addp.rank()} started", flush=True)
if addp.rank() == failing_rank:
    if "--hard" in sys.argv:
        os._exit(exit_code)  # skips MPI_Finalize, as a crashed process would
    sys.exit(exit_code)
get_context().comm.Barrier()
print(f"rank {addp.rank()} passed the barrier", flush=True)
addp.shutdown()
