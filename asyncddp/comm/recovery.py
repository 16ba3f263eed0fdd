"""Surviving a lost rank: the one recovery protocol of the communication core.

With ``ASYNCDDP_FAULT_TOLERANT=1`` (set by ``asyncddp run --fault-tolerant``, which starts the job
with ULFM on) an op that meets a dead peer does not abort the job. The engine hands the MPI
error to ``recover()``, which runs these named steps, in this order, on every survivor:

1. **detect** — ``is_failure``: MPI's "process failed" or "communicator revoked" classes only;
   any other error keeps its old meaning.
2. **revoke** every communicator the runtime talks on (the world, its machine splits, the
   engine's duplicates, the windows'), so that survivors blocked in other ops, on other
   communicators, wake up with "revoked" and come here too.
3. **shrink** the world to the survivors (ULFM's ``Shrink``: itself fault tolerant).
4. **rebuild** on the shrunk world: machine splits, the topology (same family for the new
   size), the engine's duplicated communicators, the windows; once step 5 succeeds, the
   communicators replaced are freed (the windows' are not).
5. **agree** (ULFM's ``Agree``, uniform) that every survivor rebuilt; a rank that died during
   steps 3-5 makes the agreement fail everywhere, and the protocol goes back to step 2 on the
   shrunk world. So two losses at once, or one during recovery, end in one recovery.
6. **notify**: bump ``world_version()``, call ``on_world_change`` callbacks, and raise
   ``RankLostError`` (lost ranks in launch numbering) from the op that met the loss.

Ranks that met the loss in different ops (a rank whose neighbours all lived finished its op
and met the loss in the next one) leave recovery at different points of the program; the
first op after catching ``RankLostError`` must therefore be ``agree_on_step`` (or any
agreement of the program's own), which the distributed optimizers do for their users.
Without the variable, MPI errors abort the job as before.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Callable

from asyncddp import exported_by
from asyncddp.comm.failure import FAULT_TOLERANT_ENV, PeerFailure, enabled, is_failure
from asyncddp.errors import RankLostError

__all__ = [*exported_by(__name__), "FAULT_TOLERANT_ENV", "enabled", "is_failure", "PeerFailure",
           "recover", "launch_ranks"]


@dataclass(frozen=True)
class WorldChange:
    """What ``on_world_change`` callbacks receive after a loss."""

    world_version: int
    lost_ranks: tuple  # launch numbering, this loss only
    rank: int  # this process's rank in the new world
    size: int
    launch_ranks: tuple  # new rank -> rank at launch
    attempts: int = 1  # shrink rounds: more than 1 when ranks were lost during the recovery

    def to_dict(self) -> dict:
        return asdict(self)


class _State:
    """Per-process record of the world's history (one per process, like the context)."""

    def __init__(self) -> None:
        self.version = 0
        self.launch_ranks: list[int] | None = None  # None until the first loss: identity
        self.callbacks: list[Callable[[WorldChange], None]] = []
        self.lock = threading.Lock()  # one recovery at a time in this process


_state = _State()


def world_version() -> int:
    """How many times the world lost ranks and was rebuilt (0 when no rank was lost)."""
    return _state.version


def on_world_change(fn: Callable[[WorldChange], None]) -> None:
    """Call ``fn(WorldChange)`` after every rebuild, before ``RankLostError`` is raised.

    It runs on the thread that met the loss (possibly the communication thread): it may read
    ``rank()``/``size()`` and re-shard data, but must not start communication ops.
    """
    if not callable(fn):
        from asyncddp.errors import CommError

        raise CommError(f"on_world_change expects a callable taking a WorldChange, got {fn!r}")
    _state.callbacks.append(fn)


def launch_ranks(size: int) -> list[int]:
    """Rank at launch of each current rank."""
    return list(range(size)) if _state.launch_ranks is None else list(_state.launch_ranks)


def _revoke(comms) -> None:
    from mpi4py import MPI

    for comm in comms:
        if comm is None or comm == MPI.COMM_NULL:
            continue
        try:
            comm.Revoke()
        except MPI.Exception:  # already revoked, or unusable: nothing more to interrupt
            pass


def _drain(error) -> None:
    """Complete requests a failed exchange left posted (the communicator is revoked now)."""
    from mpi4py import MPI

    for request in getattr(error, "requests", ()):
        try:
            request.Wait()
        except MPI.Exception:
            pass


def _runtime_comms(engine) -> list:
    ctx = engine.ctx
    comms = [engine.world, engine.local, engine.cross, ctx.comm, ctx.local_comm, ctx.cross_comm]
    for window in list(ctx.windows.values()):
        comms.append(getattr(window, "comm", None))
    return comms


def _replaced_comms(engine, world_is_ours: bool) -> list:
    """The communicators a recovery replaces, to free once it succeeded: the engine's duplicates,
    the machine splits, and the world when an earlier recovery made it (the first world is
    MPI_COMM_WORLD or the one given to ``init``, not the runtime's to free). Freeing a revoked
    communicator after the shrink is ULFM's own idiom (Open MPI's ULFM tests do it) and local:
    Open MPI frees an intracommunicator without talking to its peers. The windows' are left
    alone (see ``world_rebuild.rebuild_windows``)."""
    ctx = engine.ctx
    comms = [engine.world, engine.local, engine.cross, ctx.local_comm, ctx.cross_comm]
    return comms + [ctx.comm] if world_is_ours else comms


def _free(comms: list, keep: list) -> None:
    """``Comm.Free`` each of ``comms`` once, except those in ``keep`` and the predefined ones."""
    from mpi4py import MPI

    kept = {comm.py2f() for comm in keep}
    for comm in comms:
        if comm is None or comm == MPI.COMM_NULL or comm == MPI.COMM_WORLD or comm.py2f() in kept:
            continue
        kept.add(comm.py2f())
        try:
            comm.Free()
        except MPI.Exception:  # unusable after the failure: abandoned, as before
            pass


def _rebuild(engine, world, before, old_launch: list[int], launch: list[int]) -> None:
    """Step 4: everything that lives on the world, rebuilt on ``world`` (collective)."""
    from asyncddp.comm import context, world_rebuild

    ctx = engine.ctx
    me = launch[world.Get_rank()]
    local, cross, machine_rank, machine_size = context.machines(world, me)
    survivors = [old_launch.index(r) for r in launch]
    world_rebuild.update_context(ctx, before, survivors, world, local, cross, machine_rank, machine_size)
    engine.rebind()
    engine.nccl = None  # NCCL communicators cannot shrink; exchanges fall back to MPI
    world_rebuild.rebuild_windows(ctx)


def recover(engine, error: BaseException) -> RankLostError:
    """Run the protocol (collective over the survivors); return the error to raise."""
    from mpi4py import MPI

    from asyncddp.comm.world_rebuild import Before

    with _state.lock:
        ctx = engine.ctx
        old_launch = launch_ranks(ctx.comm.Get_size())
        before = Before.of(ctx)
        replaced = _replaced_comms(engine, _state.version > 0)
        _revoke(_runtime_comms(engine))
        _drain(error)
        mine = old_launch[ctx.comm.Get_rank()]
        world = ctx.comm
        attempts = 0
        while True:
            attempts += 1
            world = world.Shrink()
            world.Set_errhandler(MPI.ERRORS_RETURN)
            ok = 1
            try:
                launch = world.allgather(mine)
                _rebuild(engine, world, before, old_launch, launch)
            except MPI.Exception as failed:
                if not is_failure(failed):
                    raise
                ok = 0
            try:
                ok = world.Agree(ok)
            except MPI.Exception as failed:
                if not is_failure(failed):
                    raise
                ok = 0
            if ok:
                break
            replaced += [world, *_replaced_comms(engine, False)]  # this attempt's, half rebuilt
            _revoke([world, *_runtime_comms(engine)])
        _free(replaced, keep=_replaced_comms(engine, True))
        lost = sorted(set(old_launch) - set(launch))
        _state.launch_ranks = launch
        _state.version += 1
        change = WorldChange(_state.version, tuple(lost), world.Get_rank(), world.Get_size(), tuple(launch),
                             attempts)
    # The launcher cannot tell a hung rank from a slow one; the survivors' word lets it stop the
    # ranks they left behind as soon as everyone else has ended.
    from asyncddp.comm.rank_report import report_lost_ranks

    report_lost_ranks(lost)
    for callback in list(_state.callbacks):
        callback(change)
    return RankLostError(lost, change.world_version, change.size)
