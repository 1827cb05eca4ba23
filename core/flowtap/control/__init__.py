"""Live control of a running ``flowtap run`` from another terminal.

Each run listens on a Unix socket of its own, ``<control dir>/ctl-<pid>.sock``
(the directory owner-only, the socket too), speaking line-delimited JSON::

    → {"op": "pause"}
    ← {"ok": true, "changed": true, "session": {"id": ..., "state": "paused", ...}}

Operations: ``status``, ``pause``, ``resume``, ``clear``, ``stop``, and
``mark`` (``"text"``: a marker kept in the session store).

The modules, by role:

- :mod:`flowtap.control.server`: the control server inside ``flowtap run``;
- :mod:`flowtap.control.client`: talking to a run: :func:`~flowtap.control.client.request`,
  ``flowtap ctl``, and naming the flowtap that holds a port;
- :mod:`flowtap.control.runs`: finding runs without talking to them: the control
  directory, the sockets of running processes, who listens on a port (``/proc``).
"""

#: The operations a run answers.
OPS = ("status", "pause", "resume", "clear", "stop", "mark")
#: Seconds a request waits for its reply by default.
TIMEOUT = 10.0
