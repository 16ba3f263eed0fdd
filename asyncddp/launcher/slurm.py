"""Hosts and slots of a Slurm allocation, read from the environment Slurm gives a job.

Pure parsing, no Slurm daemon needed: ``SLURM_JOB_NODELIST`` in Slurm's compressed form
(``node[01-04,07]``, ``a[1-2],b3``, ``rack[1-2]-n[1-2]``) expands to host names, and
``SLURM_TASKS_PER_NODE`` (``4(x3),2``) to one slot count per host. Without a tasks-per-node
variable ``SLURM_NTASKS`` is spread over the nodes as Slurm's block distribution does; with neither,
each node gets one slot. Every malformed value raises ``HostfileError`` naming the variable and the
offending text, so a job never silently falls back to localhost inside an allocation; host names
are held to host name syntax and a list expanding past ``MAX_HOSTS`` hosts is refused before it is
built.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from asyncddp.errors import HostfileError
from asyncddp.launcher.hosts import HostSpec, check_unique
from asyncddp.launcher.validation import MAX_HOSTS, MAX_SLOTS, check_host_name, quote

__all__ = ["expand_nodelist", "expand_tasks_per_node", "slurm_hosts", "in_slurm_allocation"]

NODELIST_VARS = ("SLURM_JOB_NODELIST", "SLURM_NODELIST")
TASKS_VAR = "SLURM_TASKS_PER_NODE"
NTASKS_VAR = "SLURM_NTASKS"

# At most 9 digits: the numbers stay small enough to convert and compare at no cost.
_RANGE = re.compile(r"^(\d{1,9})(?:-(\d{1,9}))?$")
_TASKS = re.compile(r"^(\d{1,9})(?:\(x(\d{1,9})\))?$")


def _split_top_level(text: str, where: str) -> list[str]:
    """Split on commas that are outside brackets (``a[1,3],b`` -> ``a[1,3]``, ``b``)."""
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth > 1:
                raise HostfileError(f"{where}: nested '[' in {text!r}; Slurm node lists nest no brackets")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise HostfileError(f"{where}: ']' without '[' in {text!r}")
        elif char == "," and depth == 0:
            items.append(text[start:index])
            start = index + 1
    if depth:
        raise HostfileError(f"{where}: unclosed '[' in {text!r}")
    items.append(text[start:])
    return items


def _expand_ranges(body: str, where: str) -> list[str]:
    """``01-03,07`` -> ``01 02 03 07``; the zero padding of the first bound is kept."""
    numbers: list[str] = []
    for part in body.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise HostfileError(f"{where}: bad range {quote(part)} inside [{quote(body)[1:-1]}]; write e.g. [01-04,07]")
        first, last = match[1], match[2] if match[2] is not None else match[1]
        if int(last) < int(first):
            raise HostfileError(f"{where}: range {part!r} runs backwards; write the smaller number first")
        if len(numbers) + int(last) - int(first) >= MAX_HOSTS:
            raise _too_many(where)
        width = len(first) if first.startswith("0") else 0
        numbers += [str(value).zfill(width) for value in range(int(first), int(last) + 1)]
    return numbers


def _expand_item(item: str, where: str) -> list[str]:
    """One comma-free item; several bracket groups give their cartesian product, in order."""
    names = [""]
    for literal, bracket, body in re.findall(r"([^\[]*)(\[([^\]]*)\])?", item):
        choices = _expand_ranges(body, where) if bracket else [""]
        if len(names) * len(choices) > MAX_HOSTS:
            raise _too_many(where)
        names = [name + literal + choice for name in names for choice in choices]
    return names


def _too_many(where: str) -> HostfileError:
    return HostfileError(f"{where}: the node list expands to more than {MAX_HOSTS} hosts; check the variable")


def expand_nodelist(text: str, where: str = "SLURM_JOB_NODELIST") -> list[str]:
    """Host names of a compressed Slurm node list, in Slurm's order."""
    text = text.strip()
    if not text:
        raise HostfileError(f"{where} is empty; run inside an allocation (salloc/sbatch) or give --hostfile")
    names: list[str] = []
    for item in _split_top_level(text, where):
        item = item.strip()
        if not item or item.startswith("["):
            raise HostfileError(f"{where}: empty host name in {text!r}")
        names += _expand_item(item, where)
        if len(names) > MAX_HOSTS:
            raise _too_many(where)
    for name in names:
        check_host_name(name, f"{where}={quote(text)}", HostfileError)
    return names


def expand_tasks_per_node(text: str, where: str = TASKS_VAR) -> list[int]:
    """``4(x3),2`` -> ``[4, 4, 4, 2]``."""
    counts: list[int] = []
    for part in text.strip().split(","):
        match = _TASKS.match(part.strip())
        if not match or not 1 <= int(match[1]) <= MAX_SLOTS or (match[2] is not None and int(match[2]) < 1):
            raise HostfileError(f"{where}={quote(text)}: bad entry {quote(part)}; Slurm writes counts like 4(x3),2")
        repeat = int(match[2]) if match[2] is not None else 1
        if len(counts) + repeat > MAX_HOSTS:
            raise HostfileError(f"{where}={quote(text)}: more than {MAX_HOSTS} counts; check the variable")
        counts += [int(match[1])] * repeat
    return counts


def _block_counts(num_tasks: int, num_nodes: int) -> list[int]:
    per_node, remainder = divmod(num_tasks, num_nodes)
    return [per_node + (1 if index < remainder else 0) for index in range(num_nodes)]


def in_slurm_allocation(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return any(environ.get(name) for name in NODELIST_VARS)


def slurm_hosts(environ: Mapping[str, str] | None = None) -> list[HostSpec]:
    """The allocation's hosts with their slots, from ``environ`` (default ``os.environ``)."""
    environ = os.environ if environ is None else environ
    variable = next((name for name in NODELIST_VARS if environ.get(name)), None)
    if variable is None:
        raise HostfileError("not inside a Slurm allocation: SLURM_JOB_NODELIST is not set")
    names = expand_nodelist(environ[variable], variable)
    if environ.get(TASKS_VAR):
        counts = expand_tasks_per_node(environ[TASKS_VAR])
        if len(counts) != len(names):
            raise HostfileError(
                f"{TASKS_VAR}={environ[TASKS_VAR]!r} gives {len(counts)} counts but {variable}="
                f"{environ[variable]!r} has {len(names)} nodes; they must match"
            )
    elif environ.get(NTASKS_VAR):
        text = environ[NTASKS_VAR].strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 9 or not 1 <= int(text) <= MAX_SLOTS:
            raise HostfileError(f"{NTASKS_VAR}={quote(text)} is not a positive whole number (at most {MAX_SLOTS})")
        if int(text) < len(names):
            raise HostfileError(f"{NTASKS_VAR}={text} is fewer than the {len(names)} nodes of {variable}")
        counts = _block_counts(int(text), len(names))
    else:
        counts = [1] * len(names)
    hosts = [HostSpec(name=name, slots=count, source=f"{variable} {name}") for name, count in zip(names, counts)]
    check_unique(hosts)
    return hosts
