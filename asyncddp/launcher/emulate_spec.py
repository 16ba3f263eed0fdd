"""The ``--emulate`` specification: how many nodes, ranks per node, and what each node's link is like.

``parse_emulate_spec("nodes=4,ranks_per_node=2,bandwidth=1gbit,latency=5ms,slow_node=2:200mbit")``
returns a frozen ``EmulateSpec``; every mistake raises ``ConfigError`` with one line naming the
``--emulate`` flag (or the config file's ``emulate:`` section, through ``source``) and the fix.
Rates use tc's units (``bit``, ``kbit``, ``mbit``, ``gbit``, ``tbit``): byte units such as ``mbps``
are refused because tc reads them as bytes per second, a factor of 8 a user would not expect.
Pure: nothing here touches the system.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from asyncddp.errors import ConfigError

__all__ = ["EmulateSpec", "parse_emulate_spec", "parse_rate", "parse_duration", "format_rate",
           "MAX_NODES"]

MAX_NODES = 64  # one /24 of addresses, and far more namespaces than a test box should carry
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_KEYS = ("nodes", "ranks_per_node", "bandwidth", "latency", "loss", "slow_node")
_EXAMPLE = "nodes=4,ranks_per_node=2,bandwidth=1gbit,latency=1ms"


@dataclass(frozen=True)
class EmulateSpec:
    """An emulated cluster: ``num_nodes`` nodes of ``ranks_per_node`` ranks each.

    ``bandwidth_bps`` (bits/s, None: unshaped) caps every node's link in both directions,
    ``latency_s`` is added one way to every packet a node sends, ``loss_percent`` drops that share
    of them; ``slow_nodes`` gives some nodes a rate of their own as ``((index, bps), ...)``.
    """

    num_nodes: int
    ranks_per_node: int = 1
    bandwidth_bps: int | None = None
    latency_s: float = 0.0
    loss_percent: float = 0.0
    slow_nodes: tuple[tuple[int, int], ...] = ()

    @property
    def num_ranks(self) -> int:
        return self.num_nodes * self.ranks_per_node

    def node_rate(self, index: int) -> int | None:
        """The link rate of node ``index`` in bits/s (None: unshaped)."""
        return dict(self.slow_nodes).get(index, self.bandwidth_bps)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["slow_nodes"] = [list(pair) for pair in self.slow_nodes]
        return data

    def describe(self) -> str:
        """The spec written back in ``--emulate`` syntax (canonical units)."""
        parts = [f"nodes={self.num_nodes}", f"ranks_per_node={self.ranks_per_node}"]
        if self.bandwidth_bps is not None:
            parts.append(f"bandwidth={format_rate(self.bandwidth_bps)}")
        if self.latency_s:
            parts.append(f"latency={_format_duration(self.latency_s)}")
        if self.loss_percent:
            parts.append(f"loss={self.loss_percent:g}%")
        parts += [f"slow_node={index}:{format_rate(rate)}" for index, rate in self.slow_nodes]
        return ",".join(parts)


def _fail(source: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {message}")


def parse_rate(text: str, source: str = "--emulate", key: str = "bandwidth") -> int:
    """``1gbit`` -> 1_000_000_000 bits/s."""
    sep = "" if key.endswith(":") else "="
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]+)", text.strip().lower())
    if match is None or match.group(2) not in _RATE_UNITS:
        hint = " (tc reads 'bps' as bytes/s; write bits, e.g. 800mbit)" if text.lower().endswith("bps") else ""
        raise _fail(source, f"{key}{sep}{text!r} is not a rate{hint}; write a number and one of "
                            f"{'/'.join(_RATE_UNITS)}, e.g. {key}{sep}1gbit")
    value = float(match.group(1)) * _RATE_UNITS[match.group(2)]
    if value < 8000:
        raise _fail(source, f"{key}{sep}{text!r} is below 8kbit, too slow for MPI to start; write e.g. {key}{sep}10mbit")
    return int(value)


def parse_duration(text: str, source: str = "--emulate", key: str = "latency") -> float:
    """``5ms`` -> 0.005 seconds; ``0`` is allowed."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(us|ms|s)?", text.strip().lower())
    if match is None or (match.group(2) is None and float(match.group(1)) != 0):
        raise _fail(source, f"{key}={text!r} is not a duration; write a number and us/ms/s, e.g. {key}=5ms")
    seconds = float(match.group(1)) * _TIME_UNITS[match.group(2) or "s"]
    if seconds > 10:
        raise _fail(source, f"{key}={text!r} is over 10 s, MPI would time out; write e.g. {key}=50ms")
    return seconds


def _parse_count(text: str, source: str, key: str, low: int, high: int) -> int:
    if not re.fullmatch(r"\d+", text) or not low <= int(text) <= high:
        raise _fail(source, f"{key}={text!r} must be a whole number from {low} to {high}; write e.g. {key}={low + 1}")
    return int(text)


def _parse_loss(text: str, source: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)%", text.strip())
    if match is None or float(match.group(1)) >= 100:
        raise _fail(source, f"loss={text!r} must be a percentage below 100 with a % sign, e.g. loss=0.1%")
    return float(match.group(1))


def parse_emulate_spec(text: str, source: str = "--emulate") -> EmulateSpec:
    """Parse ``nodes=N[,ranks_per_node=K][,bandwidth=RATE][,latency=T][,loss=P][,slow_node=I:RATE]``.

    ``source`` names where the text came from in error messages (the flag, or ``file:line``).
    ``slow_node`` may be given several times, once per node.
    """
    values: dict[str, str] = {}
    slow: list[tuple[str, str]] = []
    for item in (part.strip() for part in text.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not item or not sep or not value.strip():
            raise _fail(source, f"{item!r} is not key=value; write e.g. {_EXAMPLE}")
        if key not in _KEYS:
            raise _fail(source, f"unknown key {key!r}; the keys are {', '.join(_KEYS)}")
        if key == "slow_node":
            index, colon, rate = value.partition(":")
            if not colon:
                raise _fail(source, f"slow_node={value!r} needs INDEX:RATE, e.g. slow_node=2:200mbit")
            slow.append((index.strip(), rate.strip()))
        elif key in values:
            raise _fail(source, f"{key} is given twice; keep one")
        else:
            values[key] = value.strip()
    if "nodes" not in values:
        raise _fail(source, f"nodes=N is required, e.g. {_EXAMPLE}")
    num_nodes = _parse_count(values["nodes"], source, "nodes", 1, MAX_NODES)
    slow_nodes: dict[int, int] = {}
    for index_text, rate_text in slow:
        if not re.fullmatch(r"\d+", index_text) or int(index_text) >= num_nodes:
            raise _fail(source, f"slow_node={index_text}:{rate_text} names no node (nodes are 0 to {num_nodes - 1}); "
                                f"write e.g. slow_node={num_nodes - 1}:200mbit")
        index = int(index_text)
        if index in slow_nodes:
            raise _fail(source, f"slow_node={index}:... is given twice; keep one per node")
        slow_nodes[index] = parse_rate(rate_text, source, f"slow_node={index}:")
    return EmulateSpec(
        num_nodes=num_nodes,
        ranks_per_node=_parse_count(values.get("ranks_per_node", "1"), source, "ranks_per_node", 1, 256),
        bandwidth_bps=parse_rate(values["bandwidth"], source) if "bandwidth" in values else None,
        latency_s=parse_duration(values.get("latency", "0"), source),
        loss_percent=_parse_loss(values["loss"], source) if "loss" in values else 0.0,
        slow_nodes=tuple(sorted(slow_nodes.items())),
    )


def format_rate(bps: int) -> str:
    """tc's spelling of a rate: the largest unit that keeps it whole."""
    for unit, size in reversed(list(_RATE_UNITS.items())):
        if bps % size == 0:
            return f"{bps // size}{unit}"
    return f"{bps}bit"


def _format_duration(seconds: float) -> str:
    micros = round(seconds * 1e6)
    if micros % 1000:
        return f"{micros}us"
    return f"{micros // 1000}ms"
