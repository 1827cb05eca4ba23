"""Placeholder until this plugin's own issue lands: refuses to run, plainly."""

import flowtap


class CookieJarSink(flowtap.Sink):
    def __init__(self, options):
        raise flowtap.SinkError("the cookiejar plugin is not implemented yet")
