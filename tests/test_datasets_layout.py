"""edge_asd.datasets.layout and .locate: real data in ../shared/data plus DCASE/MIMII trees built here."""

import csv
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.core.errors import EdgeAsdError
from edge_asd.datasets import layout, locate
from edge_asd.datasets.layout import Clip, assign_mimii_split, normalize_machine_id, scan


def write_wav(path: Path, seconds: float = 0.1, seed: int = 0) -> Path:
    """A tiny real WAV: 0.1 s of 16 kHz noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).normal(0, 0.1, int(16000 * seconds)).astype(np.float32)
    sf.write(path, noise, 16000, subtype="PCM_16")
    return path


# --- the real data -------------------------------------------------------------------------------


def test_fan_id_00_counts_match_readme(data_root):
    clips = scan(data_root, machine_type="fan", machine_id="id_00")
    counts = Counter((c.split, c.label) for c in clips)
    assert counts == {("train", "normal"): 10, ("test", "normal"): 5, ("test", "anomaly"): 10}
    assert all(c.machine_type == "fan" and c.machine_id == "id_00" and c.domain is None for c in clips)
    assert all(c.path.is_file() and c.path.suffix == ".flac" for c in clips)
    assert [c.path for c in clips] == sorted(c.path for c in clips)
    for clip in clips:  # the label and split come from the name and the folder
        assert clip.path.name.startswith(clip.label + "_id_00_")
        assert clip.path.parent.name == clip.split


def test_fan_section_00_has_domains(data_root):
    clips = scan(data_root, machine_type="fan", machine_id="section_00")
    got = sorted((c.split, c.label, c.domain) for c in clips)
    assert got == [
        ("test", "anomaly", "source"),
        ("test", "normal", "target"),
        ("train", "normal", "source"),
        ("train", "normal", "source"),
    ]


def test_summary_equals_manifest(data_root):
    with open(data_root / "machines" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = Counter((r["machine_type"], r["machine_id"], r["split"], r["label"]) for r in rows)
    got = {(r.machine_type, r.machine_id, r.split, r.label): r.count for r in layout.summary(data_root)}
    assert got == dict(expected)
    assert sum(got.values()) == len(rows) == len({r["path"] for r in rows})
    for split, label in (("train", "normal"), ("test", "normal"), ("test", "anomaly")):
        expected_paths = sorted(r["path"] for r in rows if (r["split"], r["label"]) == (split, label))
        assert expected_paths, (split, label)
        got_paths = sorted(c.path.relative_to(data_root / "machines").as_posix()
                           for c in scan(data_root, split=split, label=label))
        assert got_paths == expected_paths


def test_root_may_be_data_root_machines_or_one_type(data_root):
    from_data = scan(data_root, machine_type="fan")
    from_machines = scan(data_root / "machines", machine_type="fan")
    from_fan = scan(data_root / "machines" / "fan")
    assert [c.path for c in from_data] == [c.path for c in from_machines] == [c.path for c in from_fan]
    assert len(from_fan) == 48
    assert layout.machine_types(data_root) == ["ToyCar", "ToyTrain", "bearing", "fan", "pump", "slider", "valve"]


def test_filters_that_match_nothing_say_what_exists(data_root):
    with pytest.raises(EdgeAsdError, match=r"no drill clips .*machine types found: ToyCar, ToyTrain, bearing, fan"):
        scan(data_root, machine_type="drill")
    with pytest.raises(
        EdgeAsdError, match=r"no fan id_05 clips under .*machine IDs found: id_00, id_02, id_04, id_06, section_00$"
    ):
        scan(data_root, machine_type="fan", machine_id=5)
    with pytest.raises(EdgeAsdError, match=r"no pump id_02 anomaly clips under .*labels found: normal$"):
        scan(data_root, machine_type="pump", machine_id="02", label="anomaly")
    with pytest.raises(EdgeAsdError, match="no pump id_02 train clips under .*splits found: test$"):
        scan(data_root, machine_type="pump", machine_id="id_02", split="train")


def test_machine_type_filter_ignores_case(data_root):
    assert [c.path for c in scan(data_root, machine_type="toycar")] == [
        c.path for c in scan(data_root, machine_type="ToyCar")
    ]


# --- layouts built here ------------------------------------------------------------------------------


@pytest.fixture
def dcase_dev(tmp_path):
    """dev_data/<type>/{train,test}/ as in DCASE 2020 Task 2, plus files that must be ignored."""
    root = tmp_path / "dev_data"
    for i in range(3):
        write_wav(root / "fan" / "train" / f"normal_id_00_{i:08d}.wav", seed=i)
    write_wav(root / "fan" / "train" / "normal_id_02_00000000.WAV")
    write_wav(root / "fan" / "test" / "normal_id_00_00000000.wav")
    write_wav(root / "fan" / "test" / "anomaly_id_00_00000000.wav")
    write_wav(root / "pump" / "test" / "anomaly_id_04_00000007.wav")
    (root / "fan" / "README.txt").write_text("not audio")
    write_wav(root / "fan" / "test" / "id_00_00000000.wav")  # evaluation-set style: no label
    write_wav(root / "__MACOSX" / "fan" / "train" / "normal_id_00_00000009.wav")
    write_wav(root / "fan" / ".hidden" / "train" / "normal_id_00_00000009.wav")
    return root


def test_dcase2020_dev_layout(dcase_dev):
    clips = scan(dcase_dev)
    assert [(c.machine_type, c.machine_id, c.split, c.label) for c in clips] == [
        ("fan", "id_00", "test", "anomaly"),
        ("fan", "id_00", "test", "normal"),
        ("fan", "id_00", "train", "normal"),
        ("fan", "id_00", "train", "normal"),
        ("fan", "id_00", "train", "normal"),
        ("fan", "id_02", "train", "normal"),
        ("pump", "id_04", "test", "anomaly"),
    ]
    assert all(c.domain is None for c in clips)
    # after unzipping dev_data_fan.zip the user has fan/train/...: same clips from the type folder
    assert [c.path for c in scan(dcase_dev / "fan")] == [c.path for c in clips if c.machine_type == "fan"]
    assert layout.machine_types(dcase_dev) == ["fan", "pump"]


def test_relative_root_still_knows_the_machine_type(dcase_dev, monkeypatch):
    monkeypatch.chdir(dcase_dev / "fan" / "train")
    clips = scan(".")
    assert {c.machine_type for c in clips} == {"fan"} and len(clips) == 4


def test_dcase2021_official_names(tmp_path):
    root = tmp_path / "dev_data" / "gearbox"
    write_wav(root / "train" / "section_01_target_train_normal_0003_volt_1.0.wav")
    write_wav(root / "source_test" / "section_00_source_test_anomaly_0000.wav")
    write_wav(root / "test" / "section_00_0001.wav")  # unlabelled evaluation clip
    clips = scan(tmp_path)
    assert [(c.machine_type, c.machine_id, c.split, c.label, c.domain) for c in clips] == [
        ("gearbox", "section_00", "test", "anomaly", "source"),
        ("gearbox", "section_01", "train", "normal", "target"),
    ]


@pytest.fixture
def mimii(tmp_path):
    """6_dB_fan/fan/id_XX/{normal,abnormal}/NNNNNNNN.wav as unzipped from MIMII's 6_dB_fan.zip."""
    root = tmp_path / "6_dB_fan"
    for i in range(5):
        write_wav(root / "fan" / "id_00" / "normal" / f"{i:08d}.wav", seed=i)
    for i in range(2):
        write_wav(root / "fan" / "id_00" / "abnormal" / f"{i:08d}.wav", seed=10 + i)
    for i in range(3):
        write_wav(root / "fan" / "id_02" / "normal" / f"{i:08d}.wav", seed=20 + i)
    write_wav(root / "fan" / "id_02" / "abnormal" / "00000000.wav")
    write_wav(root / "fan" / "id_02" / "other" / "00000000.wav")  # not normal/abnormal: ignored
    return root


def test_mimii_layout_has_no_split(mimii):
    clips = scan(mimii)
    assert len(clips) == 11
    assert {c.machine_type for c in clips} == {"fan"} and {c.split for c in clips} == {None}
    assert Counter((c.machine_id, c.label) for c in clips) == {
        ("id_00", "normal"): 5,
        ("id_00", "anomaly"): 2,
        ("id_02", "normal"): 3,
        ("id_02", "anomaly"): 1,
    }
    assert [c.path for c in scan(mimii / "fan" / "id_00")] == [c.path for c in clips if c.machine_id == "id_00"]
    with pytest.raises(EdgeAsdError, match="assign_mimii_split"):
        scan(mimii, split="train")


def test_assign_mimii_split_is_the_baseline_split(mimii):
    clips = scan(mimii)
    split = assign_mimii_split(clips)
    id00 = [c for c in split if c.machine_id == "id_00"]
    test_normals = sorted(c.path.name for c in id00 if c.split == "test" and c.label == "normal")
    train = sorted(c.path.name for c in id00 if c.split == "train")
    assert test_normals == ["00000000.wav", "00000001.wav"]  # as many normals as anomalies, first by name
    assert train == ["00000002.wav", "00000003.wav", "00000004.wav"]
    assert all(c.split == "test" for c in split if c.label == "anomaly")
    assert Counter((c.machine_id, c.split) for c in split) == {
        ("id_00", "train"): 3,
        ("id_00", "test"): 4,
        ("id_02", "train"): 2,
        ("id_02", "test"): 2,
    }
    shuffled = clips[:]
    random.Random(1).shuffle(shuffled)
    assert assign_mimii_split(shuffled) == split  # deterministic, whatever the input order
    # clips that already have a split keep it
    dcase = Clip(Path("x/fan/train/normal_id_00_00000000.wav"), "fan", "id_00", "train", "normal")
    assert assign_mimii_split([dcase]) == [dcase]


# --- machine IDs and errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, expected",
    [
        ("00", "id_00"),
        ("id_00", "id_00"),
        ("section_00", "section_00"),
        ("7", "id_07"),
        (7, "id_07"),
        ("id_6", "id_06"),
        ("ID_04", "id_04"),
        (" 02 ", "id_02"),
        ("section_3", "section_03"),
    ],
)
def test_normalize_machine_id(given, expected):
    assert normalize_machine_id(given) == expected


@pytest.mark.parametrize("bad", ["", "id_", "fan", "id_123", "sec_00", "-1", "id-00", "00a", None])
def test_normalize_machine_id_rejects(bad):
    with pytest.raises(EdgeAsdError, match=r"bad machine ID .*use a number \(00, 7\), id_NN .* or section_NN"):
        normalize_machine_id(bad)


def test_scan_errors(tmp_path, dcase_dev):
    with pytest.raises(EdgeAsdError, match="no such directory"):
        scan(tmp_path / "missing")
    write_wav(tmp_path / "a.wav")
    with pytest.raises(EdgeAsdError, match="not a directory"):
        scan(tmp_path / "a.wav")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeAsdError, match="no labelled clips found"):
        scan(tmp_path / "empty")
    with pytest.raises(EdgeAsdError, match="bad split 'dev'"):
        scan(dcase_dev, split="dev")
    with pytest.raises(EdgeAsdError, match="bad label 'broken'"):
        scan(dcase_dev, label="broken")
    assert len(scan(dcase_dev, label="abnormal")) == 2  # MIMII's word is accepted


# --- locate ----------------------------------------------------------------------------------------


def test_local_data_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_ASD_DATA", str(tmp_path))
    assert locate.local_data_root() == tmp_path
    monkeypatch.setenv("EDGE_ASD_DATA", str(tmp_path / "gone"))
    with pytest.raises(EdgeAsdError, match=r"EDGE_ASD_DATA=.*gone: no such directory"):
        locate.local_data_root()


def test_local_data_root_search_order(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGE_ASD_DATA", raising=False)
    fake_checkout = tmp_path / "co" / "main" / "datasets" / "locate.py"
    monkeypatch.setattr(locate, "__file__", str(fake_checkout))
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert locate.local_data_root() is None
    with pytest.raises(EdgeAsdError, match=r"no local machine-sound data found: set EDGE_ASD_DATA=.*edge-data fetch"):
        locate.require_data_root()
    (tmp_path / "co" / "shared" / "data").mkdir(parents=True)  # next to the checkout
    assert locate.local_data_root() == (tmp_path / "co" / "shared" / "data").resolve()
    (tmp_path / "work" / "shared" / "data").mkdir(parents=True)  # ../shared/data wins
    assert locate.local_data_root() == (tmp_path / "work" / "shared" / "data").resolve()
    assert locate.require_data_root() == locate.local_data_root()


def test_this_checkout_finds_shared_data(data_root, monkeypatch, tmp_path):
    beside_checkout = Path(locate.__file__).resolve().parents[2] / "shared" / "data"
    if not beside_checkout.is_dir():
        pytest.skip("the data comes from EDGE_ASD_DATA, not from beside this checkout")
    monkeypatch.delenv("EDGE_ASD_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert locate.local_data_root() == beside_checkout.resolve()
