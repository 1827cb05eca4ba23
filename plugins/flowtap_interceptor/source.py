"""Placeholder until this plugin's own issue lands: refuses to run, plainly."""

import flowtap


class InterceptorSource(flowtap.Source):
    def __init__(self, options):
        raise flowtap.SourceError("the interceptor plugin is not implemented yet")
