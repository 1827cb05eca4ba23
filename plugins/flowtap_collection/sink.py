"""Placeholder until this plugin's own issue lands: refuses to run, plainly."""

import flowtap


class CollectionSink(flowtap.Sink):
    def __init__(self, options):
        raise flowtap.SinkError("the collection plugin is not implemented yet")
