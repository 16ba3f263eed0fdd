"""Point-to-point exchange of tensors with a set of peers, on CPU, CUDA-aware or staged CUDA memory.

Every message is split into chunks of ``ASYNCDDP_CHUNK_BYTES`` (a function of the byte count
only, so both ends agree whatever device each uses). The message tag carries a 15-bit checksum
of the sender's dtype and shape; receives use ``ANY_TAG`` (MPI never lets messages from one
source on one communicator overtake each other, and the communication thread posts each op's
receives before the next op's), so a neighbour sending a tensor of another shape or dtype is
reported as a ``CommError`` instead of silently corrupting data or hanging. For staged CUDA
sends, every chunk's device-to-host copy is queued first and chunk k is sent as soon as its copy
has landed, while the copies of later chunks are still running.

Sends are posted before receives (on the one-chunk path only for messages of more than
``EAGER_BYTES``; staged CUDA sends wait for their copies; a smaller one-chunk exchange with one
peer each way is a single ``Sendrecv``). A large message goes by rendezvous:
the receiver answers the sender's first fragment with a small control message before the bulk
follows, and over TCP that answer queues behind any bulk data already going the same way on the
connection. When two ranks exchange with each other and a receive is posted first, it can match
the peer's request while this rank's own request is not out yet; the peer then starts its bulk
transfer, this rank's answer waits behind all of it, and the two directions run one after the
other (9 MB between two emulated nodes on 1 Gbit/s links: 154 ms instead of 77). With every
request out before any receive can match, each side's answer precedes its own bulk data and
both directions stream at once.
"""

from __future__ import annotations

import functools
import itertools
import zlib

import torch

from asyncddp.comm import device, failure
from asyncddp.comm.buffers import byte_view, host_empty
from asyncddp.errors import CommError

__all__ = ["EAGER_BYTES", "spec_tag", "check_received", "wait_all", "exchange", "exchange_one_chunk"]

EAGER_BYTES = 64 * 1024  # Open MPI's TCP eager limit: larger messages go by rendezvous


def spec_tag(shape, dtype) -> int:
    """A tag in 1..32767 identifying (dtype, shape); MPI guarantees tags up to 32767."""
    # A torch.Size holds ints already; a plain tuple of it keys (and prints) like any other.
    return _spec_tag(tuple(shape) if type(shape) is torch.Size else tuple(int(d) for d in shape), dtype)


@functools.lru_cache(maxsize=1024)
def _spec_tag(shape: tuple, dtype) -> int:
    text = f"{dtype}|{shape}".encode()
    return (zlib.crc32(text) % 32767) + 1


def _flat_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def _pieces(flat: torch.Tensor, byte_type) -> list:
    """``flat``'s chunks as MPI buffers: numpy slices of one byte view on the host (cheap to
    take); on a CUDA-aware MPI, tensor slices (mpi4py reads ``__cuda_array_interface__``)."""
    whole = byte_view(flat) if flat.device.type == "cpu" else flat
    return [[whole[start:stop], byte_type] for start, stop in device.chunk_ranges(flat.numel())]


_GUESS_DTYPES = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool,
)  # fmt: skip


def _guess_sent(tag: int, nbytes: int, shape: tuple, dtype) -> str | None:
    """The sender's dtype and shape, when one of the usual suspects of ``nbytes`` bytes (this
    rank's dims reordered or flattened, any dtype) has its tag; None when none does."""
    candidates = [(d, s) for d in _GUESS_DTYPES if nbytes % d.itemsize == 0
                  for s in {*itertools.permutations(shape), (nbytes // d.itemsize,)}
                  if torch.Size(s).numel() * d.itemsize == nbytes]
    found = [f"{str(d).removeprefix('torch.')} {list(s)}" for d, s in candidates if spec_tag(s, d) == tag]
    return found[0] if len(found) == 1 else None


def check_received(failure: str | None, expected, statuses) -> None:
    """CommError when a receive failed (``failure``: MPI's error string) or a message's size or
    dtype/shape tag differs from ``expected`` ``[(src, nbytes, tag, shape, dtype)]``: a rank
    passed a tensor of another shape or dtype than this one."""
    from mpi4py import MPI

    if failure is not None:
        raise CommError(
            f"a neighbour sent a larger tensor than this rank expected ({failure}): every rank "
            "must pass tensors of the same shape and dtype to this op"
        )
    for (src, nbytes, tag, shape, dtype), status in zip(expected, statuses):
        got, got_tag = status.Get_count(MPI.BYTE), status.Get_tag()
        if got == nbytes and got_tag == tag:
            continue
        mine = f"{str(dtype).removeprefix('torch.')} {list(shape)}"
        whole = torch.Size(shape).numel() * dtype.itemsize
        guess = _guess_sent(got_tag, got, tuple(shape), dtype) if got == whole or got != nbytes else None
        theirs = f"a {guess} tensor" if guess else "a tensor of another shape or dtype"
        size = (f"{got} bytes where {nbytes} were expected" if got != nbytes
                else f"the same {got} bytes but another shape or dtype")
        raise CommError(
            f"rank {src} sent {theirs} but this rank passed {mine} ({size}): every rank must pass "
            "tensors of the same shape and dtype to this op"
        )


class _Statuses(list):
    failure: str | None = None


def wait_all(requests) -> list:
    """``Waitall`` (MPI progresses every message at once); returns the statuses, with
    ``.failure`` set to MPI's error string when one failed. Even then every request is waited
    for, so none is left pointing at a buffer about to be reused or freed."""
    from mpi4py import MPI

    statuses = _Statuses([MPI.Status() for _ in requests])
    try:
        MPI.Request.Waitall(requests, statuses)
    except MPI.Exception as error:
        if failure.enabled() and failure.is_failure(error, statuses):
            # A dead peer, not a wrong message: recovery revokes, then completes the requests.
            raise failure.PeerFailure(error, requests) from None
        statuses.failure = error.Get_error_string()
        for request in requests:
            try:
                request.Wait()
            except MPI.Exception:
                pass
    return statuses


def _sendrecv(comm, send, dst: int, tag: int, recv, src: int) -> list:
    """``Sendrecv`` of an eager-sized message, its status reported as ``wait_all`` reports them."""
    from mpi4py import MPI

    statuses = _Statuses([MPI.Status()])
    try:
        comm.Sendrecv(send, dst, tag, recv, src, MPI.ANY_TAG, statuses[0])
    except MPI.Exception as error:
        if failure.enabled() and failure.is_failure(error, statuses):
            raise failure.PeerFailure(error, []) from None  # nothing is left posted
        statuses.failure = error.Get_error_string()
    return statuses


_NUMPY_TYPED = frozenset((
    torch.float16, torch.float32, torch.float64, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
))  # fmt: skip


class _HostBuffer:
    """A reused host receive buffer: its bytes, their numpy view, and typed views of the last
    dtype and shape received into it. Taking a view costs about as much as moving a small
    message, and a step of a training loop receives the same dtype and shape every time."""

    __slots__ = ("bytes", "byte_array", "spec", "tensor", "array")

    def __init__(self, nbytes: int) -> None:
        self.bytes = host_empty((nbytes,), torch.uint8)
        self.byte_array = self.bytes.numpy()
        self.spec = None
        self.tensor = self.array = None

    def typed(self, shape, dtype) -> torch.Tensor:
        """The buffer viewed as a tensor of ``shape`` and ``dtype`` (``.array``: as numpy, for
        dtypes numpy has, else None)."""
        if self.spec != (shape, dtype):
            self.tensor = self.bytes.view(dtype).view(shape)
            self.array = self.tensor.numpy() if dtype in _NUMPY_TYPED else None
            self.spec = (shape, dtype)
        return self.tensor


def _recv_buffer(engine, index: int, nbytes: int) -> _HostBuffer:
    return engine.scratch((index, nbytes, "cpu", False), lambda: _HostBuffer(nbytes))


def exchange_one_chunk(engine, comm, sends: dict, like: torch.Tensor, srcs) -> tuple[list, list | None]:
    """``exchange`` for CPU tensors of ``like``'s shape and dtype that fit one chunk, with
    nothing it does not need: the same messages (so a peer on the general path matches them),
    the same receive buffers. Returns the received tensors in ``srcs`` order and, when numpy
    has the dtype, their numpy views (None otherwise); both valid until the next exchange."""
    from mpi4py import MPI

    nbytes, shape, dtype = like.nbytes, like.shape, like.dtype
    tag = spec_tag(shape, dtype)
    numpy_typed = dtype in _NUMPY_TYPED
    # A typed numpy view is cheaper to take than a byte view; MPI.BYTE sends its bytes all the same.
    outgoing = [([t.numpy() if numpy_typed else byte_view(t), MPI.BYTE], dst) for dst, t in sends.items()]
    early = nbytes > EAGER_BYTES  # rendezvous: every send out before a receive can match (module docstring)
    counters = engine.counters  # count_sent inlined: this path is a small step's whole cost
    counters.num_messages += len(sends)
    counters.bytes_sent += nbytes * len(sends)
    if len(outgoing) == 1 and len(srcs) == 1 and not early:
        # One peer each way (a one-peer step, a pair): one call into MPI instead of three.
        bufs = [_recv_buffer(engine, 0, nbytes)]
        (buf, dst), = outgoing
        statuses = _sendrecv(comm, buf, dst, tag, [bufs[0].byte_array, MPI.BYTE], srcs[0])
    else:
        sent = [comm.Isend(buf, dst, tag) for buf, dst in outgoing] if early else []
        bufs, requests = [], []
        for index, src in enumerate(srcs):
            buf = _recv_buffer(engine, index, nbytes)
            bufs.append(buf)
            requests.append(comm.Irecv([buf.byte_array, MPI.BYTE], src, MPI.ANY_TAG))
        requests += sent if early else [comm.Isend(buf, dst, tag) for buf, dst in outgoing]
        statuses = wait_all(requests)
    check_received(statuses.failure, [(src, nbytes, tag, shape, dtype) for src in srcs], statuses[: len(srcs)])
    return [buf.typed(shape, dtype) for buf in bufs], ([buf.array for buf in bufs] if numpy_typed else None)


def _isend_direct(comm, sends: dict) -> tuple[list, list]:
    """Every chunk of every tensor of ``sends`` (host, or device on a CUDA-aware MPI) posted:
    ``(requests, flat tensors that must outlive them)``."""
    from mpi4py import MPI

    requests, keep_alive = [], []
    for dst, tensor in sends.items():
        flat = _flat_bytes(tensor)
        keep_alive.append(flat)
        tag = spec_tag(tensor.shape, tensor.dtype)
        for piece in _pieces(flat, MPI.BYTE):
            requests.append(comm.Isend(piece, dest=dst, tag=tag))
    return requests, keep_alive


def exchange(engine, comm, sends: dict, recv_specs: dict, device_like: torch.Tensor) -> dict:
    """Send ``sends[dst]`` to each dst and receive a tensor of ``recv_specs[src] = (shape, dtype)``.

    Returns ``{src: tensor}`` on ``device_like``'s device. The tensors may live in the engine's
    reusable receive buffers: consume them before the next exchange. Raises ``CommError`` when a
    received message has a size, shape or dtype other than expected.
    """
    from mpi4py import MPI

    on_cuda = device.is_cuda(device_like)
    # NCCL ranks are world ranks, so only world-communicator exchanges can use it.
    if on_cuda and getattr(engine, "nccl", None) is not None and comm is engine.world:
        return engine.nccl.exchange(engine, comm, sends, recv_specs, device_like)
    staged = on_cuda and not device.mpi_is_cuda_aware()
    # Sends first (module docstring), except staged ones: those wait for their device copies.
    sent, keep_alive = ([], []) if staged else _isend_direct(comm, sends)
    requests, expected = [], []
    recv_bufs = {}
    for src, (shape, dtype) in recv_specs.items():
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        if on_cuda:
            buf = engine.scratch(
                (len(recv_bufs), nbytes, "cpu" if staged else str(device_like.device), staged),
                lambda: torch.empty(nbytes, dtype=torch.uint8, device="cpu" if staged else device_like.device,
                                    pin_memory=staged),
            )
        else:
            buf = _recv_buffer(engine, len(recv_bufs), nbytes).bytes
        recv_bufs[src] = buf
        tag = spec_tag(shape, dtype)
        for piece in _pieces(buf, MPI.BYTE):
            requests.append(comm.Irecv(piece, source=src, tag=MPI.ANY_TAG))
            expected.append((src, len(piece[0]), tag, shape, dtype))
    num_recvs = len(requests)
    if staged:
        started = []
        for dst, tensor in sends.items():
            host, events, ranges = device.to_host(tensor)
            started.append((dst, host, events, ranges, spec_tag(tensor.shape, tensor.dtype)))
        for dst, host, events, ranges, tag in started:
            keep_alive.append(host)
            whole = byte_view(host)
            for _index, start, stop in device.ready_chunks(events, ranges):
                requests.append(comm.Isend([whole[start:stop], MPI.BYTE], dest=dst, tag=tag))
    requests += sent
    engine.count_sent(len(requests) - num_recvs, sum(tensor.nbytes for tensor in sends.values()))
    statuses = wait_all(requests)
    check_received(statuses.failure, expected, statuses[:num_recvs])
    out = {}
    for src, (shape, dtype) in recv_specs.items():
        buf = recv_bufs[src]
        if staged:
            like = torch.empty(shape, dtype=dtype, device=device_like.device)
            out[src] = device.from_host(buf, like)
        else:
            out[src] = buf.view(dtype).reshape(shape)
    return out
