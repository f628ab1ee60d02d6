"""``edge-monitor --config monitor.toml``: several inputs, defaults, relative paths, refused mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime.alert import AlertPolicy
from edge_asd.edge.runtime.config import load_config
from edge_asd.edge.runtime.service import alert_policy

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    path = tmp_path / "conf" / "monitor.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_inputs_take_the_defaults_and_override_them(tmp_path):
    path = write(tmp_path, """
[monitor]
store = "state/phi.json"
events = "/var/lib/edge-asd/events.jsonl"
window = "gate"
gate_db = -50
evidence_dir = "evidence"

[[input]]
name = "fan-1"
source = "mic:USB"
channel = 0
model = "fan.tflite"
machine_id = "id_00"

[[input]]
name = "pump"
source = "serial:/dev/ttyACM0"
model = "/opt/models/pump.onnx"
machine_id = "section_00"
window = 30
phi = 812.5
evidence_png = true
""")
    fan, pump = load_config(path)
    base = path.parent.resolve()
    assert (fan.name, fan.source.spec, fan.source.channel, fan.machine_id) == ("fan-1", "mic:USB", 0, "id_00")
    assert fan.model == base / "fan.tflite" and fan.store == base / "state" / "phi.json"  # relative to the file
    assert fan.events == Path("/var/lib/edge-asd/events.jsonl") and fan.evidence_dir == base / "evidence"
    assert fan.window == "gate" and fan.gate_db == -50.0 and isinstance(fan.gate_db, float) and fan.phi is None
    assert pump.model == Path("/opt/models/pump.onnx") and pump.window == "30" and pump.phi == 812.5
    assert pump.evidence_png is True and fan.evidence_png is False and pump.gate_db == -50.0


@pytest.mark.parametrize("text, words", [
    ('[[input]]\nmodel = "a.tflite"\nmodle = "b"\n', ["unknown key 'modle'", "#1"]),
    ('[monitor]\nthreshold = 3\n[[input]]\nmodel = "a.tflite"\n', ["unknown key 'threshold'", "[monitor]"]),
    ('[[input]]\nmodel = "a.tflite"\nchannel = "left"\n', ["channel", "int"]),
    ('[[input]]\nmodel = "a.tflite"\nphi = true\n', ["phi", "float"]),
    ('[[input]]\nsource = "mic"\n', ["no model"]),
    ('[monitor]\nwindow = "gate"\n', ["no [[input]]"]),
    ('[[inputs]]\nmodel = "a"\n', ["unknown table", "inputs"]),
    ('[[input]]\nmodel = "a"\nname = "x"\n[[input]]\nmodel = "b"\nname = "x"\n', ["several inputs named x"]),
    ('[[input]]\nmodel = "a"\nsource = "-"\n[[input]]\nmodel = "b"\nsource = "-"\nname = "y"\n', ["stdin"]),
    ('[[input]\nmodel = "a"\n', ["not valid TOML"]),
    # absurd values a probe found accepted (tracebacks, silent nonsense, process IDs exhausted)
    ('[[input]]\nmodel = "a"\nevidence_after_s = inf\n', ["evidence_after_s = inf should be a finite number"]),
    ('[[input]]\nmodel = "a"\nevents_max_mb = nan\n', ["events_max_mb = nan should be a finite number"]),
    ('[[input]]\nmodel = "a"\nevents_max_mb = -1\n', ["events_max_mb = -1.0 is out of range"]),
    # 0.0001 MB rotated the events file on every line: the backups kept the last 5 lines, the rest was deleted
    ('[[input]]\nmodel = "a"\nevents_max_mb = 0.0001\n', ["events_max_mb = 0.0001 is below 0.1 (0 turns it off)"]),
    ('[[input]]\nmodel = "a"\nthreads = 100000\n', ["threads = 100000 is out of range (1 to 64)"]),
    ('[[input]]\nmodel = "a"\npcm_channels = 0\n', ["pcm_channels = 0 is out of range"]),
    ('[[input]]\nmodel = "a"\nevidence_before_s = -5\n', ["evidence_before_s = -5.0 is out of range"]),
    ('[[input]]\nmodel = "a"\ngate_db = nan\n', ["gate_db = nan should be a finite number"]),
    ('[[input]]\nmodel = "a"\nphi = -1\n', ["phi = -1.0 is out of range"]),
    # make fuzz: a float key given an integer no float holds was an OverflowError traceback
    ('[monitor]\ngate_min_off_s = 1' + '0' * 400 + '\n[[input]]\nmodel = "a"\n',
     ["gate_min_off_s = 1" + "0" * 36 + "... should be a finite number"]),
    ('[[input]]\nmodel = "a"\nthreads = 1' + '0' * 400 + '\n', ["threads = 1" + "0" * 36 + "... is out of range (1 to 64)"]),
])
def test_mistakes_are_one_clear_error(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(EdgeAsdError) as e:
        load_config(path)
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(EdgeAsdError, match="no such file"):
        load_config(tmp_path / "nope.toml")


def test_the_shipped_example_config_loads():
    inputs = load_config(REPO / "examples" / "service" / "monitor.toml")
    assert len(inputs) >= 2 and len({i.label for i in inputs}) == len(inputs)
    assert all(i.model is not None and i.machine_id for i in inputs)


def test_input_health_thresholds_come_from_the_config(tmp_path):
    from edge_asd.edge.runtime.health import HOLD_S, SILENT_DBFS

    path = write(tmp_path, '[[input]]\nmodel = "m.tflite"\nsource = "mic"\nsilent_s = 5\nlevel_drift_db = 6\n'
                           '[[input]]\nmodel = "m.tflite"\nsource = "mic:1"\n')
    quiet, default = load_config(path)
    limits = quiet.health_limits()
    assert limits.hold_s["silent"] == 5.0 and limits.level_drift_db == 6.0 and limits.silent_dbfs == SILENT_DBFS
    assert default.health_limits().hold_s == HOLD_S
    bad = write(tmp_path, '[[input]]\nmodel = "m.tflite"\nsource = "mic"\nsilent_s = -1\n')
    with pytest.raises(EdgeAsdError, match="silent_s = -1.0 is out of range"):  # refused as the file is read
        load_config(bad)[0].health_limits()


def test_votes_and_hysteresis_come_from_the_config(tmp_path):
    """The alert policy per input (edge-monitor --votes / --hysteresis); a bare number of votes is K/K."""
    path = write(tmp_path, '[monitor]\nvotes = "16/31"\nhysteresis = 0.8\n\n[[input]]\nmodel = "a.tflite"\n\n'
                           '[[input]]\nname = "b"\nmodel = "b.tflite"\nvotes = 31\n')
    first, second = load_config(path)
    assert (first.votes, first.hysteresis) == ("16/31", 0.8) and (second.votes, second.hysteresis) == ("31", 0.8)
    assert alert_policy("b", None, second.votes, second.hysteresis) == AlertPolicy(31, 31, 0.8)
    with pytest.raises(EdgeAsdError, match="hysteresis"):
        alert_policy("b", None, None, 1.5)
