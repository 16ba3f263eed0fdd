"""``save_checkpoint`` / ``load_checkpoint`` when things go wrong: a full disk (a real tmpfs, and a
file size limit), a read-only folder, a parent that is a file, temporary files of crashed writers,
and files that are truncated or hold something else. Every failure is one ``CheckpointError``
naming the file and the cause, and nothing is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import asyncddp as addp

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _rank_0(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")


def _big() -> torch.nn.Module:
    return torch.nn.Linear(200, 200)  # 160 KB of weights: more than the small filesystem holds


def _small() -> torch.nn.Module:
    return torch.nn.Linear(3, 2)


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs mounted here for the test (needs root and mount), unmounted afterwards."""
    where = tmp_path / "fs"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def _remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def test_a_full_disk_is_one_error_and_leaves_no_temporary_file(tiny_fs):
    path = tiny_fs / "ckpt.pt"
    with pytest.raises(addp.CheckpointError) as caught:
        addp.save_checkpoint(path, _big(), step=1)
    assert str(caught.value) == (f"cannot write checkpoint {path}: No space left on device; free some space or "
                                 "give a path on another filesystem")
    assert list(tiny_fs.iterdir()) == []  # the disk is not left full
    assert addp.save_checkpoint(path, _small(), step=2) is True
    assert addp.load_checkpoint(path, _small()) == 2


def test_a_file_size_limit_is_one_error_too():
    """The same path without root: RLIMIT_FSIZE makes the write fail with EFBIG."""
    script = textwrap.dedent("""
        import os, resource, signal, sys, tempfile, torch, asyncddp as addp
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        folder = tempfile.mkdtemp()
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            addp.save_checkpoint(os.path.join(folder, "ckpt.pt"), torch.nn.Linear(200, 200), step=1)
        except addp.CheckpointError as error:
            print(error)
        print(sorted(os.listdir(folder)))
        os.rmdir(folder)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "OMPI_COMM_WORLD_RANK": "0"})
    assert done.returncode == 0, done.stderr
    message, left = done.stdout.splitlines()
    assert message.startswith("cannot write checkpoint ") and message.endswith(
        "ckpt.pt: File too large; free some space or give a path on another filesystem")
    assert left == "[]"


def test_a_read_only_folder_names_that_not_the_cleanup(tiny_fs):
    stale = tiny_fs / ".ckpt.pt.999999999.tmp"  # no such pid, but the folder will not let it go
    stale.write_bytes(b"x")
    _remount_read_only(tiny_fs)
    path = tiny_fs / "ckpt.pt"
    with pytest.raises(addp.CheckpointError) as caught:
        addp.save_checkpoint(path, _small(), step=1)
    assert str(caught.value) == (f"cannot write checkpoint {path}: Read-only file system; give a path in a folder "
                                 "you can write")


def test_a_parent_that_is_a_file_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for path in (blocker / "ckpt.pt", blocker / "sub" / "ckpt.pt"):
        with pytest.raises(addp.CheckpointError) as caught:
            addp.save_checkpoint(path, _small(), step=1)
        assert str(caught.value) == (f"cannot write checkpoint {path}: {blocker} is a file, not a folder; give a "
                                     "path in a folder you can write")
    assert [item.name for item in tmp_path.iterdir()] == ["file"]


def test_a_failed_cleanup_is_added_to_the_real_error(tmp_path, monkeypatch):
    def no_rename(*_args):
        raise OSError(5, "Input/output error")

    def no_unlink(*_args):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "replace", no_rename)
    monkeypatch.setattr(os, "unlink", no_unlink)
    path = tmp_path / "ckpt.pt"
    with pytest.raises(addp.CheckpointError) as caught:
        addp.save_checkpoint(path, _small(), step=1)
    temporary = tmp_path / f".ckpt.pt.{os.getpid()}.tmp"
    assert str(caught.value) == (f"cannot write checkpoint {path}: Input/output error; give a path in a folder you "
                                 f"can write (and its temporary file {temporary} could not be removed: Read-only "
                                 "file system)")


def test_temporary_files_of_crashed_writers_go_on_the_next_save(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [f".ckpt.pt.{dead.pid}.tmp", f".ckpt.pt.{alive.pid}.tmp", ".ckpt.pt.x.tmp", f".other.pt.{dead.pid}.tmp"]
        for name in names:
            (tmp_path / name).write_bytes(b"half a checkpoint")
        assert addp.save_checkpoint(tmp_path / "ckpt.pt", _small(), step=1) is True
        # The crashed writer's file goes; a running writer's, another name's and a foreign one stay.
        assert sorted(item.name for item in tmp_path.iterdir()) == sorted(["ckpt.pt", *names[1:]])
    finally:
        alive.kill()
        alive.wait()


def test_a_state_that_cannot_be_serialised_leaves_nothing(tmp_path):
    class Odd(torch.nn.Linear):
        def state_dict(self, *args, **kwargs):
            return {"weight": lambda: None}  # pickle refuses a lambda

    path = tmp_path / "ckpt.pt"
    with pytest.raises(addp.CheckpointError, match=rf"^cannot write checkpoint {path}: cannot serialise the state "
                                                   r"\((PicklingError|AttributeError): "):
        addp.save_checkpoint(path, Odd(3, 2), step=1)
    assert list(tmp_path.iterdir()) == []


def _saved(tmp_path: Path) -> bytes:
    path = tmp_path / "whole.pt"
    addp.save_checkpoint(path, torch.nn.Linear(30, 30), torch.optim.SGD(torch.nn.Linear(30, 30).parameters(), lr=0.1),
                         step=4)
    return path.read_bytes()


def test_every_truncation_of_a_checkpoint_is_one_error(tmp_path):
    whole = _saved(tmp_path)
    path = tmp_path / "cut.pt"
    seen = set()
    for length in range(0, len(whole), 97):
        path.write_bytes(whole[:length])
        with pytest.raises(addp.CheckpointError) as caught:
            addp.load_checkpoint(path, torch.nn.Linear(30, 30))
        message = str(caught.value)
        assert message.startswith(f"cannot load checkpoint {path}: the file is truncated or not what save_checkpoint "
                                  "writes (a dict of model, optimizer and step): "), message
        assert "\n" not in message
        seen.add(message.split(": ", 2)[2])
    assert any("Invalid argument" in text for text in seen)  # the short cuts: once a bare errno


@pytest.mark.parametrize("content, holds", [
    (torch.ones(3), "a Tensor"),
    ([1, 2], "a list"),
    ({"step": 1}, "a dict without a model state"),
    ({"model": [1], "step": 1}, "a model state that is not a dict"),
    ({"model": {}, "optimizer": 3, "step": 1}, "an optimizer state that is not a dict"),
    ({"model": {}, "step": "7"}, "step '7', not an integer"),
])
def test_a_file_holding_something_else_is_named(tmp_path, content, holds):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(addp.CheckpointError) as caught:
        addp.load_checkpoint(path, _small())
    assert str(caught.value) == (f"cannot load checkpoint {path}: it holds {holds}, not what save_checkpoint writes "
                                 "(a dict of model, optimizer and step)")


def test_a_checkpoint_of_another_model_or_optimizer_is_named(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = torch.nn.Linear(3, 2)
    addp.save_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1), step=3)
    with pytest.raises(addp.CheckpointError, match=rf"^cannot load checkpoint {path}: it does not fit the model: "
                                                   r"Error\(s\) in loading state_dict for Linear: size mismatch"):
        addp.load_checkpoint(path, torch.nn.Linear(4, 2))
    two_groups = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.1)
    with pytest.raises(addp.CheckpointError, match=rf"^cannot load checkpoint {path}: it does not fit the optimizer: "):
        addp.load_checkpoint(path, model, two_groups)


def test_a_folder_or_fifo_is_not_read(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (tmp_path, fifo):  # a FIFO would block the open
        with pytest.raises(addp.CheckpointError) as caught:
            addp.load_checkpoint(path, _small())
        assert str(caught.value) == (f"cannot load checkpoint {path}: not a regular file; give the file "
                                     "save_checkpoint wrote")
