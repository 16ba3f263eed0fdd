"""Syntax checks for the names, numbers and paths a user gives the launcher, run before anything is
written or started.

Host names, users, ports and key paths end up in a generated ssh_config, on mpirun's command line
and in ssh's argv. There a newline adds ssh_config directives (``ProxyCommand`` runs a command), a
leading ``-`` turns a host into an ssh option, ``%`` is expanded as an ssh token and a NUL byte makes
``subprocess`` raise. So each value is held to the syntax it must have, and a refusal names where
the value came from (``file:line``, ``-H``, a flag) and what to write instead. ``quote`` bounds how
much of a value an error repeats, so no input can make an error message large.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import reprlib
import stat
import tempfile
from pathlib import Path
from typing import Any

from asyncddp.errors import ConfigError, LaunchError

__all__ = ["MAX_SLOTS", "MAX_HOSTS", "MAX_SECONDS", "quote", "check_host_name", "check_user", "check_port",
           "check_count", "check_ssh_path", "check_text", "check_env_name", "check_seconds", "as_operand",
           "check_script", "check_output_file", "check_network"]

# Ranks on one host or in one job, hosts in one job: far above any real cluster, low enough that a
# typo like slots=4000000000 is refused instead of building a rank map of that many entries.
MAX_SLOTS = 1 << 20
MAX_HOSTS = 1 << 18
# Longer than any job runs; keeps timeouts below what threading and time_t accept.
MAX_SECONDS = 1e8

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4


def quote(value: Any) -> str:
    """``repr(value)`` cut to about 80 characters, in time independent of the value's size."""
    return _repr.repr(value)


# RFC 1123 labels, plus '_' which real clusters use in /etc/hosts names and ssh accepts.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}\$?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_GLOB = re.compile(r"[A-Za-z0-9_*?\[\]!]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_host_name(name: str, where: str, error: type[ConfigError] = ConfigError) -> str:
    """``name`` when it is a DNS host name or an IPv4/IPv6 address, else ``error`` naming ``where``."""
    if "%" not in name:  # a scoped IPv6 address (fe80::1%eth0) would be read as an ssh token
        try:
            ipaddress.ip_address(name)
            return name
        except ValueError:
            pass
    if len(name) <= 253 and _HOST_NAME.fullmatch(name):
        return name
    raise error(f"{where}: host {quote(name)} is not a host name or IP address; a name is letters, digits, "
                "'-' and '_' in dot-separated parts (node1, gpu-07.cluster), an address is like 10.0.0.5")


def check_user(user: str, where: str, error: type[ConfigError] = ConfigError) -> str:
    """An ssh login name: letters, digits, ``_ . @ -`` (not first), at most 64 characters."""
    if _USER.fullmatch(user):
        return user
    raise error(f"{where}: user {quote(user)} is not a login name; use letters, digits, '_', '.', '@' and '-' "
                "(not first), at most 64 characters")


def check_count(value: Any, where: str, what: str, error: type[ConfigError] = ConfigError,
                maximum: int = MAX_SLOTS) -> int:
    """A whole number from 1 to ``maximum`` (YAML's true/false are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise error(f"{where}: {what} must be a whole number from 1 to {maximum}, got {quote(value)}")
    return value


def check_port(value: Any, where: str, error: type[ConfigError] = ConfigError) -> int:
    """A TCP port, 1 to 65535."""
    return check_count(value, where, "an ssh port", error, 65535)


def check_ssh_path(path: str, where: str, error: type[ConfigError] = ConfigError) -> str:
    """A file path written into ssh_config (``IdentityFile``, ``UserKnownHostsFile``).

    ssh_config splits its arguments on blanks, strips quotes and expands ``%`` tokens, so a path
    holding any of these would silently name another file: refuse it rather than guess.
    """
    bad = sorted({char for char in path if char.isspace() or char in '"\'%' or _CONTROL.match(char)})
    if not path or bad:
        shown = " ".join(repr(char) for char in bad) or "nothing"
        raise error(f"{where}: path {quote(path)} holds {shown}, which ssh_config cannot take; "
                    "move or link the file to a path without blanks, quotes or '%'")
    return path


def check_text(text: str, where: str, error: type[ConfigError] = ConfigError, *, allow_newlines: bool = False) -> str:
    """Text that goes into an argv or the environment: no control characters (a NUL never fits),
    except newlines and tabs where ``allow_newlines`` (environment values may span lines)."""
    for char in text:
        if _CONTROL.match(char) and not (allow_newlines and char in "\n\t\r"):
            raise error(f"{where}: {quote(text)} holds the control character {char!r}; remove it")
    return text


def check_env_name(name: str, where: str, *, allow_glob: bool = False,
                   error: type[ConfigError] = ConfigError) -> str:
    """An environment variable name (``[A-Za-z_][A-Za-z0-9_]*``), or a glob like ``NCCL_*`` where allowed."""
    if _ENV_NAME.fullmatch(name):
        return name
    if allow_glob and any(char in name for char in "*?[") and _ENV_GLOB.fullmatch(name) and not name[0].isdigit():
        return name
    kinds = "a NAME, NAME=value or a glob like NCCL_*" if allow_glob else "a NAME"
    raise error(f"{where}: {quote(name)} is not a variable name; write {kinds}, a name being letters, digits "
                "and '_', not starting with a digit")


def check_seconds(value: Any, flag: str, error: type[ConfigError] = ConfigError) -> float:
    """A positive, finite number of seconds up to ``MAX_SECONDS`` (nan, inf, 0 and below are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= MAX_SECONDS:
        shown = f"{value:g}" if isinstance(value, (int, float)) else quote(value)
        raise error(f"{flag} {shown}: give a positive number of seconds, at most {MAX_SECONDS:.0f}")
    return float(value)


def as_operand(path: str) -> str:
    """``path`` spelled so that no option parser takes it for an option: a script named ``-dash.py``
    would be read as a flag by python and by mpirun (``Unknown option``); ``./-dash.py`` is the same
    file to every one of them."""
    return os.path.join(".", path) if path.startswith("-") else path


def check_script(path: Path, shown: str, folder: str) -> None:
    """Refuse a script that is missing or not a file (a directory, a FIFO), naming which."""
    from asyncddp.launcher.input_files import file_kind

    try:
        mode = path.stat().st_mode
    except OSError:
        raise LaunchError(f"script {shown} not found (looked in {folder}); check the path") from None
    if not stat.S_ISREG(mode):
        raise LaunchError(f"script {shown} is {file_kind(mode)}, not a file (looked in {folder}); give the script's path")


def check_output_file(path: str, flag: str, error: type[ConfigError] = ConfigError) -> str:
    """``path`` made absolute, refused when the job could not write it there: a folder or another
    non-file in its place, a folder that does not exist, or one this user cannot write. A rank
    writes it when the job ends, too late to learn that it cannot."""
    from asyncddp.launcher.input_files import file_kind

    target = Path(os.path.abspath(path))
    if target.is_dir():
        raise error(f"{flag} {path}: is a folder; give a file name such as {target / 'timeline.json'}")
    if target.exists() and not target.is_file():
        raise error(f"{flag} {path}: is {file_kind(target.stat().st_mode)}; give the path of a file to write")
    folder = target.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise error(f"{flag} {path}: the folder {folder} {what}; create it first or give another path")
    try:  # a real file, not os.access: root passes access checks on read-only and virtual filesystems
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as problem:
        raise error(f"{flag} {path}: cannot write in {folder} ({problem.strerror or problem}); "
                    "give a path you can write") from None
    return str(target)


# Linux interface names: at most 15 bytes (IFNAMSIZ 16), no '/', blanks or ':' (alias labels are
# not interfaces MPI or NCCL can bind to).
_INTERFACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,14}")


def check_network(value: str, where: str, error: type[ConfigError] = ConfigError) -> str:
    """``--network-interface`` / ``network:``: one subnet in CIDR form (10.0.0.0/24, fd00::/64) or
    one or more interface names separated by commas (eth0, ib0,eth1)."""
    check_text(value, where, error)
    if "/" in value:
        try:
            ipaddress.ip_network(value, strict=False)
            return value
        except ValueError as problem:
            raise error(f"{where} {quote(value)}: not a subnet ({problem}); write one like 10.0.0.0/24") from None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        raise error(f"{where} {quote(value)}: an address, not an interface or subnet; write the subnet it is "
                    "in (like 10.0.0.0/24) or the interface's name")
    bad = [name for name in value.split(",") if not _INTERFACE.fullmatch(name) or set(name) <= {"."}]
    if bad:
        raise error(f"{where} {quote(value)}: {quote(bad[0])} is not an interface name (letters, digits, '_', '.', "
                    "'@', '-', at most 15); give names like eth0 or ib0,eth1, or a subnet like 10.0.0.0/24")
    return value
