"""Placeholder until this plugin's own issue lands: refuses to run, plainly."""

import flowtap


class ProxySource(flowtap.Source):
    def __init__(self, options):
        raise flowtap.SourceError("the proxy plugin is not implemented yet")
