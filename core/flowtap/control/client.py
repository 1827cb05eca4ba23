"""Talking to a running ``flowtap run``: :func:`request`, the ``flowtap ctl`` command, and
naming the flowtap that holds a port another run wants."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import attrs

from flowtap.commandline import UsageError, describe
from flowtap.control import OPS, TIMEOUT
from flowtap.control.runs import command_line, control_dir, port_holder, running
from flowtap.health import SinkHealth
from flowtap.view import VIEW_PLUGIN, health_table


class ControlError(Exception):
    """No run to control, or it did not answer: a one-line message."""


def request(path: Path, message: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send one message (``{"op": "mark", "text": "login"}``) to the run listening on ``path``; its reply.

    :raises ControlError: it cannot be reached or gave no answer.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(message).encode() + b"\n")
            with sock.makefile("rb") as reader:
                line = reader.readline()
    except OSError as exc:
        raise ControlError(f"{path}: no answer: {exc.strerror or exc}") from None
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError(f"{path}: no answer (the run ended?)") from None
    if not isinstance(reply, dict):
        raise ControlError(f"{path}: not a flowtap control reply: {line[:80]!r}")
    return reply


def _health(item: dict[str, Any]) -> SinkHealth:
    """A sink's health from a status reply."""
    fields = {field.name for field in attrs.fields(SinkHealth)}
    return SinkHealth(**{key: value for key, value in item.items() if key in fields})


def choose(pid: int | None) -> tuple[int, Path]:
    """The run ``flowtap ctl`` talks to: ``pid``, or the only one running.

    :raises ControlError: no such run, none, or several and no ``pid``.
    """
    runs = running()
    if pid is not None:
        if pid not in runs:
            raise ControlError(f"no flowtap run with pid {pid} (running: {_list(runs) or 'none'})")
        return pid, runs[pid]
    if not runs:
        raise ControlError(f"no running flowtap to control (no control socket in {control_dir()})")
    if len(runs) > 1:
        raise ControlError(f"{len(runs)} flowtap runs: {_list(runs)}; choose one with --pid")
    return next(iter(runs.items()))


def _list(runs: dict[int, Path]) -> str:
    described = []
    for pid, path in runs.items():
        try:
            session = request(path, {"op": "status"}, timeout=2).get("session") or {}
            described.append(f"pid {pid} (session {session.get('name')!r})")
        except ControlError:
            described.append(f"pid {pid}")
    return ", ".join(described)


# -- flowtap ctl ------------------------------------------------------------------------------


def setup_ctl(parser: argparse.ArgumentParser) -> None:
    describe(parser, "Drive a running `flowtap run` from another terminal or a script: its status (sessions, "
                     "sources, each sink's health), pause, resume, clear (forget the flows so far), mark "
                     "(a marker with text), stop.",
             "flowtap ctl status", "flowtap ctl mark 'clicked checkout'", "flowtap ctl pause --pid 4242",
             "flowtap ctl status --json")
    parser.add_argument("op", choices=OPS, metavar="ACTION",
                        help="status, pause, resume, clear (forget the flows so far), stop, or mark")
    parser.add_argument("text", nargs="*", help="the marker's text (mark)")
    parser.add_argument("--pid", type=int, help="the run to control when several are running")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")


def cmd_ctl(args: argparse.Namespace) -> int:
    """Drive a running ``flowtap run``: status, pause, resume, clear, stop, mark."""
    text = " ".join(args.text)
    if text and args.op != "mark":
        raise UsageError(f"flowtap ctl {args.op}: takes no text (only mark does)")
    try:
        pid, path = choose(args.pid)
        reply = request(path, {"op": args.op, **({"text": text} if text else {})})
    except ControlError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0 if reply.get("ok") else 1
    if not reply.get("ok"):
        print(f"flowtap: error: pid {pid}: {reply.get('error')}", file=sys.stderr)
        return 1
    if args.op == "stop":
        print(f"pid {pid}: stopping")
        return 0
    session = reply.get("session") or {}
    name = f"session {session.get('name')!r} ({session.get('id')})"
    if args.op == "status":
        print(f"pid {pid}: {name}: {session.get('state')}, {session.get('elapsed', 0):.0f}s, "
              f"{session.get('recorded')} recorded, {session.get('filtered')} filtered out, "
              f"{session.get('paused')} while paused")
        for source, lines in (reply.get("sources") or {}).items():
            for line in lines:
                print(f"  [{source}] {line}")
        if reply.get("store"):
            print(f"  store: {reply['store']}")
        sinks = [_health(item) for item in reply.get("sinks") or ()]
        for line in health_table(h for h in sinks if h.plugin != VIEW_PLUGIN or not h.clean):
            print(f"  {line}")
        if reply.get("clean") is False:
            print("  not clean: a sink or plugin failed (the run will exit with code 1)")
        return 0
    done = {"pause": "paused", "resume": "recording again", "clear": "cleared", "mark": "marked"}[args.op]
    if reply.get("changed") is False:
        done = {"pause": "not running (already paused?)", "resume": "not paused",
                "clear": "ended: nothing to clear"}[args.op]
    print(f"pid {pid}: {name}: {done}" + (f" {text!r}" if text else ""))
    return 0


# -- who holds a port -------------------------------------------------------------------------

_IN_USE = re.compile(r"\bin use\b", re.I)
_PORT = re.compile(r":(\d{1,5})(?!\d)")


def explain_in_use(message: str) -> str:
    """A source's "address in use" error, with which process holds the port.

    Asks the control socket of every running flowtap which ports it
    listens on; failing that, looks the port up in /proc.
    """
    if not _IN_USE.search(message):
        return message
    ports = [int(p) for p in _PORT.findall(message) if 0 < int(p) < 65536]
    for pid, path in running().items():
        if pid == os.getpid():
            continue
        try:
            status = request(path, {"op": "status"}, timeout=2)
        except ControlError:
            continue
        if any(port in ports for _, port in status.get("listening") or ()):
            session = status.get("session") or {}
            return (f"{message} (held by flowtap pid {pid}, session {session.get('name')!r}; "
                    f"`flowtap ctl stop --pid {pid}` ends it)")
    for port in ports:
        holder = port_holder(port)
        if holder is not None and holder != os.getpid():
            return f"{message} (held by pid {holder}: {command_line(holder)})"
    return message
