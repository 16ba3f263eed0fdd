"""Hostile Slurm variables: runaway ranges, huge numbers and bad names are one line, never a hang."""

from __future__ import annotations

import time

import pytest

from asyncddp.errors import HostfileError
from asyncddp.launcher.slurm import expand_nodelist, expand_tasks_per_node, slurm_hosts


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("n[0-999999999]", "SLURM_JOB_NODELIST: the node list expands to more than 262144 hosts"),
        ("a[1-1000]b[1-1000]", "SLURM_JOB_NODELIST: the node list expands to more than 262144 hosts"),
        ("n[1-" + "9" * 5000 + "]", "SLURM_JOB_NODELIST: bad range '1-999"),
        ("n[1-2],-oProxyCommand=x", "SLURM_JOB_NODELIST='n[1-2],-oProxyCommand=x': host '-oProxyCommand=x' is not a host name"),
        ("n1,a b", "SLURM_JOB_NODELIST='n1,a b': host 'a b' is not a host name"),
    ],
)
def test_runaway_or_hostile_node_lists(text, message):
    started = time.monotonic()
    with pytest.raises(HostfileError) as caught:
        expand_nodelist(text)
    assert str(caught.value).startswith(message), str(caught.value)
    assert len(str(caught.value)) < 400 and time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("text", "message"),
    [("4(x999999999)", "SLURM_TASKS_PER_NODE='4(x999999999)': more than 262144 counts"),
     ("2000000", "SLURM_TASKS_PER_NODE='2000000': bad entry '2000000'"),
     ("4(x" + "9" * 5000 + ")", "SLURM_TASKS_PER_NODE='4(x999")],
)
def test_runaway_tasks_per_node(text, message):
    with pytest.raises(HostfileError) as caught:
        expand_tasks_per_node(text)
    assert str(caught.value).startswith(message), str(caught.value)
    assert len(str(caught.value)) < 400


def test_huge_ntasks_is_refused():
    with pytest.raises(HostfileError, match=r"^SLURM_NTASKS='9999999999' is not a positive whole number \(at most 1048576\)"):
        slurm_hosts({"SLURM_JOB_NODELIST": "a[1-2]", "SLURM_NTASKS": "9999999999"})
