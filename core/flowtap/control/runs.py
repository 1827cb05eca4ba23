"""Finding flowtap runs without talking to them: their control sockets, and who listens on a port.

The control directory is ``$FLOWTAP_DATA_DIR/run`` when that is set, else the
user runtime dir (``$XDG_RUNTIME_DIR/flowtap``), else ``run`` in the user data
dir. Ports are looked up in ``/proc`` (Linux; elsewhere nothing is found).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path


def control_dir() -> Path:
    """Where the control sockets of running flowtap processes are."""
    if os.environ.get("FLOWTAP_DATA_DIR"):
        return Path(os.environ["FLOWTAP_DATA_DIR"]).expanduser() / "run"
    import platformdirs

    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(platformdirs.user_runtime_dir("flowtap"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_data_dir("flowtap")) / "run"


def socket_path(pid: int) -> Path:
    """The control socket of the run with process id ``pid``."""
    return control_dir() / f"ctl-{pid}.sock"


def running() -> dict[int, Path]:
    """The flowtap runs with a control socket, by pid; sockets of dead processes are removed."""
    found: dict[int, Path] = {}
    directory = control_dir()
    for path in sorted(directory.glob("ctl-*.sock")) if directory.is_dir() else ():
        match = re.fullmatch(r"ctl-(\d+)\.sock", path.name)
        if not match:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            continue
        except OSError:
            pass
        found[pid] = path
    return found


# -- who holds a port -------------------------------------------------------------------------


def _tcp_listeners() -> dict[int, list[tuple[str, int]]]:
    """Socket inode -> (address, port) of every listening TCP socket, from /proc/net."""
    import ipaddress

    found: dict[int, list[tuple[str, int]]] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path("/proc/net", name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc shows each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.setdefault(int(fields[9]), []).append((str(ipaddress.ip_address(raw)), int(port, 16)))
    return found


def _socket_inodes(pid: int | str) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listening(pid: int) -> list[tuple[str, int]]:
    """The TCP addresses process ``pid`` listens on (Linux; empty elsewhere)."""
    listeners = _tcp_listeners()
    return sorted(address for inode in _socket_inodes(pid) for address in listeners.get(inode, ()))


def port_holder(port: int) -> int | None:
    """The pid of a process listening on TCP ``port``, if /proc tells."""
    inodes = {inode for inode, addresses in _tcp_listeners().items() if any(p == port for _, p in addresses)}
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _socket_inodes(entry) & inodes:
            return int(entry)
    return None


def command_line(pid: int) -> str:
    """The command line of process ``pid``, or ``?``."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
