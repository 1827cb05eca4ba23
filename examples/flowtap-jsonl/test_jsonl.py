"""The plugin's own test, using flowtap's pytest plugin (the fixture ``flowtap_capture``)."""

import json

import flowtap_jsonl

from flowtap.testing import make_flow


def test_writes_one_line_per_flow(flowtap_capture, tmp_path):
    cap = flowtap_capture(flowtap_jsonl, config={"sinks": {"jsonl": {"path": str(tmp_path / "f.jsonl")}}})
    cap.feed(make_flow(url="https://api.example.com/users", status=201))
    assert json.loads((tmp_path / "f.jsonl").read_text())["status"] == 201
