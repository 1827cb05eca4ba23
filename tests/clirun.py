"""Run the real ``flowtap`` command line in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys


def flowtap(*args: str, env: dict[str, str] | None = None, cwd=None, timeout: float = 60,
            pythonpath: list[str] | None = None) -> subprocess.CompletedProcess:
    """``python -m flowtap ARGS``; returns the completed process (text output)."""
    full_env = dict(os.environ)
    if pythonpath:
        full_env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "flowtap", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)
