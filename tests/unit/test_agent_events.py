"""The lab's event log and the workloads.json carry-over (pure file handling)."""

from __future__ import annotations

import json

from labctl.agent import events
from labctl.lab.workloads import carry_over


def test_events_append_and_read_from_an_offset(tmp_path):
    path = str(tmp_path / "events.log")
    assert events.read(path) == ([], 0)
    events.append(path, "Normal", "Created", "pod/default/a", "made")
    first, offset = events.read(path)
    assert [(e.type, e.reason, e.object, e.message) for e in first] == [
        ("Normal", "Created", "pod/default/a", "made")]
    events.append(path, "Warning", "Unhealthy", "pod/default/a", "probe failed")
    more, offset2 = events.read(path, offset)
    assert [e.reason for e in more] == ["Unhealthy"] and offset2 > offset
    assert events.read(path, offset2) == ([], offset2)


def test_events_skip_a_half_written_line_until_it_is_complete(tmp_path):
    path = tmp_path / "events.log"
    line = events.Event(1.0, "Normal", "X", "lab/l", "m").to_json()
    path.write_text(line + "\n" + line[:10])
    got, offset = events.read(str(path))
    assert len(got) == 1 and offset == len(line) + 1
    path.write_text(line + "\n" + line + "\n")
    got, _ = events.read(str(path), offset)
    assert len(got) == 1


def test_events_ignore_garbage_lines(tmp_path):
    path = tmp_path / "events.log"
    path.write_text("not json\n{\"time\": 1}\n")
    assert events.read(str(path))[0] == []


def _doc(*pods):
    return {"lab": "l", "pods": [{"namespace": "default", "name": n, "env": e}
                                 for n, e in pods]}


def test_running_pods_keep_the_environment_they_started_with():
    previous = _doc(("a", ["OLD=1"]), ("gone", ["X=1"]))
    late = "LATE_SERVICE_HOST=10.96.0.5"
    new = _doc(("a", ["OLD=1", late]), ("b", [late]))
    out = carry_over(new, previous)
    assert [p["name"] for p in out["pods"]] == ["a", "b"]
    assert out["pods"][0]["env"] == ["OLD=1"]  # started before the Service existed
    assert out["pods"][1]["env"] == [late]  # a new pod sees it
    assert carry_over(new, None) == new
    assert json.loads(json.dumps(out)) == out
