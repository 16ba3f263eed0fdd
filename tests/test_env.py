"""``ASYNCDDP_*`` variables: one parser, and a bad value is a ConfigError naming the variable."""

import pytest

from asyncddp.comm.device import chunk_bytes
from asyncddp.comm.engine import fusion_threshold
from asyncddp.comm.env import env_choice, env_flag, env_int
from asyncddp.comm.nccl import requested_backend
from asyncddp.comm.timeline import timeline_path_from_env
from asyncddp.errors import ConfigError


def test_unset_or_blank_means_the_default(monkeypatch):
    monkeypatch.setenv("ASYNCDDP_TEST_VAR", "  ")
    assert env_int("ASYNCDDP_TEST_VAR", 7) == 7
    assert env_flag("ASYNCDDP_TEST_VAR", None) is None
    assert env_choice("ASYNCDDP_TEST_VAR", "a", ("a", "b"), "a letter") == "a"
    monkeypatch.delenv("ASYNCDDP_TEST_VAR")
    assert env_int("ASYNCDDP_TEST_VAR", 7) == 7


def test_values_parse(monkeypatch):
    monkeypatch.setenv("ASYNCDDP_TEST_VAR", " 4096 ")
    assert env_int("ASYNCDDP_TEST_VAR", 7, minimum=4096) == 4096
    for text, want in (("1", True), ("Yes", True), ("on", True), ("0", False), ("FALSE", False), ("off", False)):
        monkeypatch.setenv("ASYNCDDP_TEST_VAR", text)
        assert env_flag("ASYNCDDP_TEST_VAR", None) is want
    monkeypatch.setenv("ASYNCDDP_TEST_VAR", "NCCL")
    assert env_choice("ASYNCDDP_TEST_VAR", "mpi", ("mpi", "nccl"), "a backend") == "nccl"


@pytest.mark.parametrize(
    "name, value, read, message",
    [
        ("ASYNCDDP_CHUNK_BYTES", "4M", chunk_bytes, "ASYNCDDP_CHUNK_BYTES='4M' is not a chunk size in bytes"),
        ("ASYNCDDP_CHUNK_BYTES", "1024", chunk_bytes, "at least 4096"),
        ("ASYNCDDP_FUSION_THRESHOLD", "-1", fusion_threshold, "ASYNCDDP_FUSION_THRESHOLD='-1' is not a byte count"),
        ("ASYNCDDP_BACKEND", "gloo", requested_backend, "ASYNCDDP_BACKEND='gloo' is not a backend: use one of 'mpi', 'nccl'"),
        ("ASYNCDDP_COMM_THREAD", "maybe", lambda: env_flag("ASYNCDDP_COMM_THREAD", True), "ASYNCDDP_COMM_THREAD='maybe' is not a switch"),
    ],
)  # fmt: skip
def test_a_bad_value_names_the_variable(monkeypatch, name, value, read, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        read()
    assert message in str(caught.value) and str(caught.value).startswith(f"{name}={value!r}")


def test_variables_read_their_values(monkeypatch):
    monkeypatch.setenv("ASYNCDDP_CHUNK_BYTES", "65536")
    monkeypatch.setenv("ASYNCDDP_FUSION_THRESHOLD", "0")
    monkeypatch.setenv("ASYNCDDP_TIMELINE", " /tmp/t.json ")
    assert chunk_bytes() == 65536 and fusion_threshold() == 0
    assert str(timeline_path_from_env()) == "/tmp/t.json"
