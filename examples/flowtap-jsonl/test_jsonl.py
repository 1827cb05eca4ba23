"""The plugin's own tests, using flowtap's pytest plugin (the fixture ``flowtap_capture``)."""

import json

import flowtap_jsonl

from flowtap.testing import make_flow


def test_writes_one_line_per_flow(flowtap_capture, tmp_path):
    cap = flowtap_capture(flowtap_jsonl, config={"sinks": {"jsonl": {"path": str(tmp_path / "f.jsonl")}}})
    cap.feed(make_flow(url="https://api.example.com/users", status=201))
    assert json.loads((tmp_path / "f.jsonl").read_text())["status"] == 201


def test_clear_forgets_this_sessions_lines_only(flowtap_capture, tmp_path):
    path = tmp_path / "f.jsonl"
    cap = flowtap_capture(flowtap_jsonl, config={"sinks": {"jsonl": {"path": str(path)}}})
    cap.feed(make_flow(url="https://api.example.com/first"))
    cap.capture.begin(name="second")  # a new session appends to the same file
    cap.feed(make_flow(url="https://api.example.com/forgotten"))
    cap.session.clear()
    cap.feed(make_flow(url="https://api.example.com/kept"))
    cap.end()
    urls = [json.loads(line)["url"] for line in path.read_text().splitlines()]
    assert urls == ["https://api.example.com/first", "https://api.example.com/kept"]
