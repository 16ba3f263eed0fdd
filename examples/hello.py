"""Hello from every rank: the smallest asyncddp job.

    asyncddp run -np 4 examples/hello.py
"""

import socket

import asyncddp as addp

addp.init()
print(
    f"hello from rank {addp.rank()} of {addp.size()} "
    f"(local rank {addp.local_rank()} of {addp.local_size()}, "
    f"machine {addp.machine_rank()} of {addp.machine_size()}) on {socket.gethostname()}",
    flush=True,
)
addp.shutdown()
