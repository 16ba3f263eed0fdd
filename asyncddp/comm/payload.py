"""``exchange_payloads``: different byte payloads to each destination, through the one exchange path.

Compressed averaging sends a packed payload (indices and values, packed bits) whose content can
differ per destination (CHOCO keeps a public copy per edge) and whose size both ends know in
advance. This op moves exactly those bytes with ``p2p.exchange`` (the path every neighbour op
takes, so per-message counters and fault detection see them) as one queued op of the engine:
same program order as every other op, and in a fault-tolerant job a lost peer becomes the usual
``RankLostError``.
"""

from __future__ import annotations

import torch

from asyncddp.comm import p2p
from asyncddp.comm.engine import Op, live_engine
from asyncddp.comm.neighbor_plan import check_pattern

__all__ = ["exchange_payloads"]


def _run(engine, batch: list[Op]) -> list:
    (op,) = batch
    sends, sizes, check = op.args["sends"], op.args["sizes"], op.args["check"]
    if check:
        check_pattern(engine, engine.world, list(sends), list(sizes))
    like = next(iter(sends.values()), None)
    if like is None:
        like = torch.empty(0, dtype=torch.uint8, device=op.args["device"])
    got = p2p.exchange(engine, engine.world, sends, {s: ((n,), torch.uint8) for s, n in sizes.items()}, like)
    # The received tensors may be the engine's reusable buffers: copy them out.
    return [{src: tensor.clone() for src, tensor in got.items()}]


def exchange_payloads(sends: dict, sizes: dict, *, device=None, name: str = "exchange_payloads",
                      check: bool = False) -> dict:
    """Send ``sends[dst]`` (a 1-D ``uint8`` tensor) to each dst and receive ``sizes[src]`` bytes
    from each src; returns ``{src: uint8 tensor}`` on ``device`` (blocking; every rank of the
    exchange must call it in the same order as its other ops). With ``check``, a send/receive
    pattern that does not match across ranks raises ``CommError`` everywhere instead of hanging.
    """
    engine = live_engine()
    if device is None:
        device = next(iter(sends.values())).device if sends else torch.device("cpu")
    sends = {int(d): t.contiguous() for d, t in sends.items()}
    sizes = {int(s): int(n) for s, n in sizes.items()}
    op = Op(
        kind="exchange_payloads",
        name=name,
        run=_run,
        args={"sends": sends, "sizes": sizes, "check": bool(check), "device": device},
        nbytes=sum(t.numel() for t in sends.values()),
        peers=tuple(sorted(set(sends) | set(sizes))),
    )
    return engine.call(op, blocking=True)
