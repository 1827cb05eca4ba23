"""Placeholder until this plugin's own issue lands: refuses to run, plainly."""

import flowtap


class HarSink(flowtap.Sink):
    def __init__(self, options):
        raise flowtap.SinkError("the har plugin is not implemented yet")
