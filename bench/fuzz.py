"""``make fuzz``: every file and stream the device reads, mutated by hypothesis and run through the kit's
own commands in process, with counts per target.

Each input is a small case (files, command-line arguments, stdin bytes) built by a hypothesis strategy
from real seeds: a 1.5-s fan id_00 clip (as WAV, FLAC, raw s16le and framed PCM), a sealed int8 model
file, the phi store edge-calibrate wrote for it, ``examples/service/monitor.toml`` and an ``events.jsonl``
that edge-monitor wrote. The strategies mutate structure (WAV and FLAC header fields, JSON and TOML
values, event lines, model metadata re-sealed) and bytes (flips, interesting integers, inserts, deletes,
truncation); hypothesis draws every choice, so a seed replays the same inputs.

A case runs in a forked worker through click's CliRunner (edge-monitor, edge-report): an exception other
than SystemExit is a traceback, a nonzero exit a clean error, a worker killed by a signal a crash, a case
over ``--timeout`` seconds a hang (the worker is killed and a fresh one forked). A model whose bytes differ
from the seed's and which was not re-sealed must never load and score (``corrupted_model_accepted``).

    python bench/fuzz.py                      # 10 000 inputs per target (make fuzz)
    python bench/fuzz.py --inputs 200 --targets model,phi_store --json out/fuzz.json
    python bench/fuzz.py --replay out/fuzz/repro/phi_store/0   # rerun one saved reproducer in process

Targets live in :data:`TARGETS` (name -> strategy builder and command): add release documents, signed
commands or MQTT payloads there when they land (issue 18).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import multiprocessing as mp
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUTS = 10_000
"""Inputs per target of ``make fuzz`` (issue 19)."""
TIMEOUT_S = 10.0
"""A case running longer than this is a hang, s."""
CLIP_S = 1.5
"""Seconds of the real fan clip in the audio seeds (enough for 70 context vectors of koizumi2019)."""
WORKER_MEMORY_BYTES = 4 << 30
"""Address-space limit of the worker: a case that wants more gets MemoryError (a traceback), not the host's RAM."""
OUTCOMES = ("clean_errors", "exit0", "tracebacks", "hangs", "crashes")


# ---- seeds -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Seeds:
    """The real files the inputs are mutated from (paths) and their bytes, as the strategies use them."""

    model: Path
    """A sealed .tflite model file (edge-convert)."""
    store: Path
    """The phi store edge-calibrate wrote for ``model`` (machine ID id_00)."""
    clip: Path
    """A real fan id_00 recording (FLAC)."""
    events: Path
    """An events.jsonl edge-monitor wrote."""
    signed: Path | None = None
    """A folder with a trusted root (root.json, root key threshold 1), a release of ``model`` signed by the
    release key (release.json), a device trust directory (trust/) and a signed set-phi command (cmd.json)."""
    config: Path = REPO / "examples" / "service" / "monitor.toml"
    blobs: dict = field(default_factory=dict)

    @property
    def short_clip(self) -> Path:
        """The clip's first CLIP_S seconds as a WAV file (what the model, store and config targets score)."""
        import hashlib

        wav = self.blobs["wav"]
        path = Path(tempfile.gettempdir()) / f"edge-asd-fuzz-{hashlib.sha256(wav).hexdigest()[:12]}.wav"
        if not path.exists():
            path.write_bytes(wav)
        return path

    def load(self) -> Seeds:
        """Fill ``blobs``: wav, flac, pcm, framed (the clip's first CLIP_S seconds), model, store, events, toml, phi."""
        from edge_asd.firmware_io.pcm_framing import encode_frames

        samples, rate = sf.read(self.clip, dtype="int16", frames=int(CLIP_S * 16000))
        wav, flac = io.BytesIO(), io.BytesIO()
        sf.write(wav, samples, rate, format="WAV", subtype="PCM_16")
        sf.write(flac, samples, rate, format="FLAC", subtype="PCM_16")
        store = json.loads(self.store.read_text())
        self.blobs.update(wav=wav.getvalue(), flac=flac.getvalue(), pcm=samples.astype("<i2").tobytes(),
                          framed=encode_frames(samples), model=self.model.read_bytes(), store=self.store.read_text(),
                          events=self.events.read_text(), toml=self.config.read_text(),
                          phi=next(iter(store["machines"].values()))["phi"])
        return self


def make_events(model: Path, store: Path, clip: Path, out: Path) -> Path:
    """Write ``out`` (events.jsonl) with edge-monitor on ``clip`` in 1-s windows, phi at the clip's 90th
    percentile frame score (so it holds anomaly events, verdicts, alarms and a summary whatever the model).
    ``store`` is unused (kept for callers)."""
    from click.testing import CliRunner

    from edge_asd.edge.cli.monitor import main as monitor
    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio

    scorer = Scorer(model)
    phi = float(np.quantile(scorer.score_audio(read_audio(clip, scorer.features.sample_rate)), 0.9))
    result = CliRunner().invoke(monitor, ["--model", str(model), "--phi", repr(phi), "--input", str(clip),
                                          "--window", "1", "--events", str(out), "-q"])
    if result.exit_code != 0 or '"event": "anomaly"' not in out.read_text():
        raise RuntimeError(f"edge-monitor wrote no seed event log with anomaly events: {result.output}")
    return out


def build_seeds(folder: Path, data: Path) -> Seeds:
    """Train (40 updates), convert (int8), calibrate and monitor once into ``folder``; reused when present."""
    folder, data = folder.resolve(), data.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    clips = sorted((data / "machines" / "fan" / "train").glob("normal_id_00_*.flac"))
    model, store, events = folder / "fan_int8.tflite", folder / "phi.json", folder / "events.jsonl"
    steps = [
        (folder / "fan.pt", ["edge-train", str(data), "--machine-type", "fan", "--machine-id", "00", "--epochs", "2",
                             "--batches-per-epoch", "20", "--out", str(folder / "fan.pt")]),
        (model, ["edge-convert", str(folder / "fan.pt"), "--to", "tflite", "--int8", "--calibration", str(data),
                 "--out", str(model), "--allow-degraded"]),
        (store, ["edge-calibrate", *map(str, clips), "--model", str(model), "--machine-id", "00", "--store", str(store)]),
    ]
    for made, cmd in steps:
        if not made.exists():
            print("seeds:", " ".join(cmd[:2]), "...", file=sys.stderr)
            subprocess.run([str(bin_dir / cmd[0]), *cmd[1:]], check=True, capture_output=True)
    anomaly = sorted((data / "machines" / "fan" / "test").glob("anomaly_id_00_*.flac"))[0]
    if not events.exists():
        make_events(model, store, anomaly, events)
    signed = folder / "signed"
    if not (signed / "cmd.json").exists():
        make_signed(model, store, signed)
    return Seeds(model=model, store=store, clip=clips[0], events=events, signed=signed)


def make_signed(model: Path, store: Path, out: Path) -> None:
    """The signed seeds (:attr:`Seeds.signed`), made with edge-release as docs/releases.md shows."""
    release = Path(sys.executable).parent / "edge-release"
    keys = out / "keys"
    steps = [["keygen", "root", "release", "ops", "dev", "--out", keys],
             ["root", "--root-key", keys / "root.pub", "--root-threshold", "1", "--release-key", keys / "release.pub",
              "--operations-key", keys / "ops.pub", "--device-key", keys / "dev.pub", "--sign", keys / "root.key",
              "--out", out / "root.json"],
             ["sign", model, "--key", keys / "release.key", "--version", "1", "--cohort", "all", "--out", out / "release.json"],
             ["init", "--trust-dir", out / "trust", "--root", out / "root.json", "--device", "dev"],
             ["command", "set-phi", "--device", "dev", "--seq", "1", "--key", keys / "ops.key", "--store", store,
              "--machine-id", "00", "--out", out / "cmd.json"]]
    for step in steps:
        subprocess.run([str(release), *map(str, step)], check=True, capture_output=True)


# ---- mutations (hypothesis draws every choice) ----------------------------------------------------------

INTERESTING_INTS = (0, 1, 2, 3, 4, 7, 8, 15, 16, 255, 256, 1000, 4000, 16000, 44100, 65535, 65536, 768001,
                    0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1)
INTERESTING_JSON = (None, True, False, 0, -1, 1, 0.5, -0.0, 1e-320, 1e300, -1e300, 10**400, -(10**400), 2**63,
                    float("nan"), float("inf"), float("-inf"), "", "nan", "1e999", "0", "id_00", [], {}, [1, 2], {"a": 1})


def _apply(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op, pos, arg in ops:
        pos = pos % (len(buf) + 1)
        if op == "flip" and pos < len(buf):
            buf[pos] ^= 1 << arg
        elif op == "int":
            value, width, order = arg
            buf[pos:pos + width] = (value % (1 << 8 * width)).to_bytes(width, order)
        elif op == "insert":
            buf[pos:pos] = arg
        elif op == "delete":
            del buf[pos:pos + arg]
        elif op == "truncate":
            del buf[pos:]
        elif op == "copy":  # a slice of the input repeated elsewhere (duplicated frames, chunks, lines)
            src = arg % max(1, len(buf))
            buf[pos:pos] = buf[src:src + 256]
    return bytes(buf)


def byte_ops(header: int = 64) -> st.SearchStrategy:
    """A list of byte-level mutations: positions biased to the first ``header`` bytes, values to boundaries."""
    pos = st.one_of(st.integers(0, header), st.integers(0, 1 << 20))
    op = st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("int"), pos, st.tuples(st.sampled_from(INTERESTING_INTS) | st.integers(),
                                                  st.sampled_from([1, 2, 4, 8]), st.sampled_from(["little", "big"]))),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), pos, st.integers(1, 4096)),
        st.tuples(st.just("truncate"), pos, st.none()),
        st.tuples(st.just("copy"), pos, st.integers(0, 1 << 20)),
    )
    return st.lists(op, min_size=1, max_size=8)


def mutated(data: bytes, header: int = 64) -> st.SearchStrategy[bytes]:
    return byte_ops(header).map(lambda ops: _apply(data, ops))


def json_values() -> st.SearchStrategy:
    return st.one_of(st.sampled_from(INTERESTING_JSON), st.integers(), st.floats(), st.text(max_size=12),
                     st.lists(st.integers() | st.floats(), max_size=3))


def _paths(doc, prefix=()):
    yield prefix
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


def _edit(doc, path, action, value, key):
    import copy

    value = copy.deepcopy(value)  # a value of INTERESTING_JSON is shared: an edit must never change it
    if not path:
        return value if action == "set" else doc
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if action == "set":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif action == "add" and isinstance(parent, dict):
        parent[key] = value
    return doc


def json_edits(doc, values: st.SearchStrategy | None = None, under: tuple = ()) -> st.SearchStrategy:
    """Edits of the JSON-like ``doc``: set a value, delete a key or item, add a key (known names and others), at
    paths drawn from the document's own (those below ``under``)."""
    paths = [p for p in _paths(doc) if p[:len(under)] == under]
    keys = st.sampled_from(["phi", "schema", "machines", "event", "time_s", "score", "id_00", "features", "config",
                            "sample_rate", "hop_samples", "n_mels", "x"]) | st.text(max_size=6)
    return st.lists(st.tuples(st.sampled_from(paths), st.sampled_from(["set", "set", "delete", "add"]),
                              json_values() if values is None else values, keys), min_size=1, max_size=4)


def edit_json(doc, ops):
    import copy

    doc = copy.deepcopy(doc)
    for path, action, value, key in ops:
        try:
            doc = _edit(doc, path, action, value, key)
        except (KeyError, IndexError, TypeError):  # the path went with an earlier edit
            pass
    return doc


def maybe_bytes(strategy: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """``strategy``, then byte mutations on top in a quarter of the cases."""
    return st.tuples(strategy, st.integers(0, 3), byte_ops()).map(lambda t: _apply(t[0], t[2]) if t[1] == 0 else t[0])


# ---- cases -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One input: the command (``monitor`` or ``report``), its arguments (``{dir}`` = the case's own folder),
    the files written into that folder first, and stdin."""

    command: str
    args: tuple[str, ...]
    files: dict = field(default_factory=dict)
    stdin: bytes | None = None
    damaged_model: bool = False
    """Must be refused: the model file's bytes differ from the seed's and were not re-sealed, or a signed
    document's payload or signature was changed without its key (counted as ``corrupted_model_accepted``)."""


def _monitor(seeds: Seeds, *args: str, phi: bool = True) -> tuple[str, ...]:
    return (*args, *(("--phi", repr(seeds.blobs["phi"])) if phi else ()), "-q")


def _wav(samples: bytes, fmt: int, channels: int, rate: int, bits: int, data_size: int | None, riff: int | None) -> bytes:
    block = channels * bits // 8
    fmt_chunk = struct.pack("<HHIIHH", fmt % 65536, channels % 65536, rate % 2**32, (rate * block) % 2**32,
                            block % 65536, bits % 65536)
    size = len(samples) if data_size is None else data_size % 2**32
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt_chunk + b"data" + struct.pack("<I", size) + samples
    return b"RIFF" + struct.pack("<I", (len(body) if riff is None else riff) % 2**32) + body


def wav_target(seeds: Seeds) -> st.SearchStrategy[Case]:
    """WAV files: header fields (format, channels, rate, bits, sizes) and bytes mutated; ``--input clip.wav``."""
    pcm = seeds.blobs["pcm"]
    ints = st.sampled_from(INTERESTING_INTS) | st.integers(0, 2**32)
    header = st.builds(_wav, st.just(pcm), st.sampled_from([1, 3, 0xFFFE, 2, 0]) | ints, st.sampled_from([1, 2]) | ints,
                       st.sampled_from([16000, 8000, 44100, 1, 4, 3999]) | ints, st.sampled_from([16, 8, 24, 32]) | ints,
                       st.none() | ints, st.none() | ints)
    data = maybe_bytes(header | mutated(seeds.blobs["wav"]))
    return data.map(lambda b: Case("monitor", _monitor(seeds, "--model", str(seeds.model), "--input", "{dir}/clip.wav"),
                                   {"clip.wav": b}))


def _flac_streaminfo(flac: bytes, rate: int, channels: int, bits: int, total: int) -> bytes:
    # fLaC, block header (4 bytes), STREAMINFO: block sizes (4), frame sizes (6), then 20 bits rate, 3 channels-1,
    # 5 bits-1, 36 total samples
    head = int.from_bytes(flac[18:26], "big")
    head &= ~(((1 << 64) - 1))
    head |= ((rate % (1 << 20)) << 44) | (((channels - 1) % 8) << 41) | (((bits - 1) % 32) << 36) | (total % (1 << 36))
    return flac[:18] + head.to_bytes(8, "big") + flac[26:]


def flac_target(seeds: Seeds) -> st.SearchStrategy[Case]:
    """FLAC files: STREAMINFO (rate, channels, bits, total samples) and bytes mutated; ``--input clip.flac``."""
    flac = seeds.blobs["flac"]
    info = st.builds(_flac_streaminfo, st.just(flac), st.sampled_from([16000, 1, 4, 3999, 8000, 655350, 0]) | st.integers(0, 2**20),
                     st.integers(1, 8), st.sampled_from([16, 8, 24, 4, 32]), st.sampled_from([24000, 0, 1, 2**36 - 1]) | st.integers(0, 2**36))
    data = maybe_bytes(info | mutated(flac, header=128))
    return data.map(lambda b: Case("monitor", _monitor(seeds, "--model", str(seeds.model), "--input", "{dir}/clip.flac"),
                                   {"clip.flac": b}))


def raw_file_target(seeds: Seeds) -> st.SearchStrategy[Case]:
    """Any of the seeds' bytes under a name that lies or says nothing (``.raw``, no suffix, ``.ogg``, ...)."""
    names = st.sampled_from(["clip.raw", "clip.RAW", "clip", "clip.ogg", "clip.aiff", "clip.wav", "clip.flac", "clip.pcm"])
    content = st.sampled_from(["pcm", "wav", "flac", "framed", "events", "toml"]).flatmap(
        lambda k: maybe_bytes(st.just(seeds.blobs[k] if isinstance(seeds.blobs[k], bytes) else seeds.blobs[k].encode())))
    return st.tuples(names, content).map(lambda t: Case(
        "monitor", _monitor(seeds, "--model", str(seeds.model), "--input", "{dir}/" + t[0]), {t[0]: t[1]}))


def _reseal(model: bytes, meta: dict) -> bytes:
    from edge_asd.core.model_file import DIGEST_KEY, seal, unsealed_digest, write_tflite_metadata

    return seal(write_tflite_metadata(model, {**meta, DIGEST_KEY: unsealed_digest()}))


def model_target(seeds: Seeds) -> st.SearchStrategy[Case]:
    """Model files: damaged bytes (not re-sealed: must be refused) and metadata values edited and re-sealed
    (a converter bug or a hand edit: must be refused unless valid); run on the clip."""
    from edge_asd.core.model_file import read_tflite_metadata

    model = seeds.blobs["model"]
    meta = read_tflite_metadata(model, "seed")
    args = _monitor(seeds, "--model", "{dir}/fan.tflite", "--input", str(seeds.short_clip))
    feature_values = st.sampled_from([0, -1, 0.5, 128.0, 1e9, 2**63, float("nan"), float("inf"), "16000", None, True])
    edits = st.one_of(json_edits(meta), json_edits(meta, feature_values, under=("features", "config")))

    def damaged(b):
        return Case("monitor", args, {"fan.tflite": b}, damaged_model=b != model)

    def resealed(ops):
        try:
            return Case("monitor", args, {"fan.tflite": _reseal(model, edit_json(meta, ops))})
        except (ValueError, TypeError):  # metadata json cannot hold (a NaN key ...): the file as it was
            return Case("monitor", args, {"fan.tflite": model})
    return st.one_of(mutated(model, header=4096).map(damaged), edits.map(resealed))


def phi_store_target(seeds: Seeds) -> st.SearchStrategy[Case]:
    """The phi store: JSON values edited (NaN, huge, wrong types, missing keys) and bytes mutated; edge-monitor
    looks phi up for the model (no --phi)."""
    store = json.loads(seeds.blobs["store"])
    edited = json_edits(store).map(lambda ops: json.dumps(edit_json(store, ops)).encode())
    data = maybe_bytes(edited | mutated(seeds.blobs["store"].encode()))
    args = _monitor(seeds, "--model", str(seeds.model), "--store", "{dir}/phi.json", "--input", str(seeds.short_clip), phi=False)
    return data.map(lambda b: Case("monitor", args, {"phi.json": b}))


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


def to_toml(doc: dict) -> str:
    """A minimal TOML writer: [monitor] and [[input]] tables of scalars, arrays and inline tables."""
    if not isinstance(doc, dict):
        return f"value = {_toml_value(doc)}\n"
    lines = []
    for name, table in doc.items():
        tables = table if isinstance(table, list) and all(isinstance(t, dict) for t in table) else [table]
        for t in tables:
            if not isinstance(t, dict):
                lines.append(f"{json.dumps(str(name))} = {_toml_value(t)}")
                continue
            lines.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
            lines += [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in t.items() if v is not None]
    return "\n".join(lines) + "\n"


def seed_config(seeds: Seeds) -> dict:
    """examples/service/monitor.toml with its paths on the seeds: two inputs on the clip, events and evidence in
    the case's folder (relative paths)."""
    import tomllib

    doc = tomllib.loads(seeds.blobs["toml"])
    doc["monitor"].update(store=str(seeds.store), events="events.jsonl", evidence_dir="evidence")
    inputs = [t for t in doc["input"] if t["name"] in ("fan-1", "pump-1")]
    for t in inputs:
        t.update(source=str(seeds.short_clip), model=str(seeds.model), machine_id="id_00")
        t.pop("channel", None)
    doc["input"] = inputs
    return doc


def toml_target(seeds: Seeds) -> st.SearchStrategy[Case]:
    """monitor.toml: values edited (NaN, inf, huge, negative, wrong types, unknown keys) and text mutated; ``--config``."""
    doc = seed_config(seeds)
    values = st.one_of(json_values().filter(lambda v: v is not None), st.sampled_from([100000, 2**40, -1, 0]))
    edited = json_edits(doc, values).map(lambda ops: to_toml(edit_json(doc, ops)).encode())
    data = maybe_bytes(edited | mutated(to_toml(doc).encode(), header=4096))
    return data.map(lambda b: Case("monitor", ("--config", "{dir}/monitor.toml", "-q"), {"monitor.toml": b}))


def stdin_target(seeds: Seeds, framing: str) -> st.SearchStrategy[Case]:
    """Raw or framed PCM on stdin (``--input -``): the PCM, WAV, FLAC and framed seeds and text, mutated, with
    --pcm-channels and --channel drawn."""
    kinds = ["framed", "pcm"] if framing == "framed" else ["pcm", "wav", "flac", "framed", "toml"]
    data = st.sampled_from(kinds).flatmap(
        lambda k: maybe_bytes(mutated(seeds.blobs[k] if isinstance(seeds.blobs[k], bytes) else seeds.blobs[k].encode())))
    channels = st.sampled_from([1, 1, 1, 2, 3, 64])
    channel = st.none() | st.integers(0, 4)

    def case(t):
        b, n, c = t
        args = ["--model", str(seeds.model), "--input", "-", "--pcm-framing", framing, "--pcm-channels", str(n)]
        return Case("monitor", _monitor(seeds, *args, *(("--channel", str(c)) if c is not None else ())), stdin=b)
    return st.tuples(data, channels, channel).map(case)


def events_target(seeds: Seeds) -> st.SearchStrategy[Case]:
    """The event log edge-report reads: lines dropped, repeated, cut, edited (JSON values) and bytes mutated."""
    lines = seeds.blobs["events"].splitlines()

    def edit_lines(k, ops, cut, repeat):
        out = list(lines)
        out[k] = json.dumps(edit_json(json.loads(out[k]), ops))
        if cut:
            out[k] = out[k][:cut % max(1, len(out[k]))]
        return "\n".join(out[:k] + [out[k]] * repeat + out[k + 1:]).encode() + b"\n"
    edited = st.integers(0, len(lines) - 1).flatmap(lambda k: st.builds(
        edit_lines, st.just(k), json_edits(json.loads(lines[k])), st.none() | st.integers(0, 1 << 16), st.integers(0, 2)))
    data = maybe_bytes(edited | mutated(seeds.blobs["events"].encode(), header=4096))
    return data.map(lambda b: Case("report", ("--events", "{dir}/events.jsonl", "--out", "{dir}/report", "-q"),
                                   {"events.jsonl": b}))


def _envelope_edits(envelope: dict) -> st.SearchStrategy[tuple[bytes, bool]]:
    """(file bytes, must be refused): the envelope's JSON edited (any change to the payload or a signature
    without the key: refused), its payload decoded, edited and re-encoded unsigned (refused), or its bytes
    mutated (whitespace may survive: not marked)."""
    import base64

    payload = json.loads(base64.b64decode(envelope["payload"]))
    text = json.dumps(envelope).encode()

    def forged(ops):
        changed = edit_json(payload, ops)
        doc = {**envelope, "payload": base64.b64encode(json.dumps(changed).encode()).decode()}
        return json.dumps(doc).encode(), changed != payload

    def edited(ops):
        doc = edit_json(envelope, ops)
        signed = {k: envelope[k] for k in ("payload", "signatures")}
        same = isinstance(doc, dict) and {k: doc.get(k) for k in signed} == signed
        return json.dumps(doc).encode(), not same and isinstance(doc, dict) and doc.get("payload") != envelope["payload"]
    return st.one_of(json_edits(payload).map(forged), json_edits(envelope).map(edited),
                     mutated(text, header=len(text)).map(lambda b: (b, False)))


def release_target(seeds: Seeds) -> st.SearchStrategy[Case]:
    """A release document (DSSE envelope): edge-release verify of the seed model against the trusted root."""
    envelope = json.loads((seeds.signed / "release.json").read_text())
    args = ("verify", str(seeds.model), "{dir}/release.json", "--root", str(seeds.signed / "root.json"))
    return _envelope_edits(envelope).map(lambda t: Case("release", args, {"release.json": t[0]}, damaged_model=t[1]))


def command_target(seeds: Seeds) -> st.SearchStrategy[Case]:
    """A signed command (set-phi): edge-release apply on a fresh copy of the device's trust directory and store."""
    envelope = json.loads((seeds.signed / "cmd.json").read_text())
    trust = {f"trust/{p.relative_to(seeds.signed / 'trust')}": p.read_bytes()
             for p in (seeds.signed / "trust").rglob("*") if p.is_file()}
    args = ("apply", "{dir}/cmd.json", "--trust-dir", "{dir}/trust", "--store", "{dir}/phi.json")
    return _envelope_edits(envelope).map(lambda t: Case(
        "release", args, {**trust, "phi.json": seeds.blobs["store"].encode(), "cmd.json": t[0]}, damaged_model=t[1]))


@dataclass(frozen=True)
class Target:
    strategy: Callable[[Seeds], st.SearchStrategy[Case]]
    what: str


TARGETS: dict[str, Target] = {
    "audio_wav": Target(wav_target, "audio file, WAV (edge-monitor --input FILE.wav)"),
    "audio_flac": Target(flac_target, "audio file, FLAC (edge-monitor --input FILE.flac)"),
    "audio_raw": Target(raw_file_target, "audio file named .raw / no suffix / lying suffix"),
    "model": Target(model_target, "model file and metadata (edge-monitor --model)"),
    "phi_store": Target(phi_store_target, "phi store JSON (edge-monitor --store)"),
    "monitor_toml": Target(toml_target, "monitor TOML (edge-monitor --config)"),
    "stdin_raw": Target(lambda s: stdin_target(s, "raw"), "raw PCM / WAV / other bytes on stdin (--input -)"),
    "stdin_framed": Target(lambda s: stdin_target(s, "framed"), "framed PCM on stdin (--pcm-framing framed)"),
    "event_log": Target(events_target, "event log (edge-report --events)"),
    "release_doc": Target(release_target, "signed release document (edge-release verify)"),
    "signed_command": Target(command_target, "signed command (edge-release apply)"),
}
"""Name -> what it fuzzes. MQTT payloads (issue 18) go here when they land."""


# ---- running a case ------------------------------------------------------------------------------------

PRELOAD = ["matplotlib.pyplot", "soxr", "edge_asd.edge.report.build", "edge_asd.edge.runtime.service",
           "edge_asd.firmware_io.pcm", "edge_asd.edge.cli.monitor", "edge_asd.edge.cli.report",
           "edge_asd.edge.cli.release"]
"""Modules the cases import, loaded once by the fork server: each worker starts warm."""


def _commands():
    from edge_asd.edge.cli.monitor import main as monitor
    from edge_asd.edge.cli.release import main as release
    from edge_asd.edge.cli.report import main as report

    return {"monitor": monitor, "report": report, "release": release}


def run_case(case: Case, folder: Path) -> tuple[str, str]:
    """Run ``case`` in process with its files in ``folder``: (outcome, detail), outcome one of clean_errors
    (nonzero exit, click's one-line error), exit0, tracebacks (detail: the formatted traceback)."""
    from click.testing import CliRunner

    for name, data in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    args = [a.replace("{dir}", str(folder)) for a in case.args]
    result = CliRunner().invoke(_commands()[case.command], args, input=case.stdin, catch_exceptions=True)
    if result.exception is None or isinstance(result.exception, SystemExit):
        return ("exit0", "") if result.exit_code == 0 else ("clean_errors", result.output.strip().splitlines()[-1:][0]
                                                              if result.output.strip() else "")
    return "tracebacks", "".join(traceback.format_exception(*result.exc_info))


def _worker(conn, scratch: str) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    logging.basicConfig(stream=open(os.devnull, "w"))  # before setup_logging, whose basicConfig is then a no-op
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    while (case := _receive(conn)) is not None:
        folder = Path(tempfile.mkdtemp(dir=scratch))
        try:
            conn.send(run_case(case, folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _receive(conn):
    try:
        return conn.recv()
    except EOFError:  # the parent is gone
        return None


class Worker:
    """A forked process that runs cases; restarted after a crash or a hang."""

    def __init__(self, scratch: str):
        self.scratch, self.proc = scratch, None

    def _start(self):
        # forkserver, not fork: the caller may hold threads (pytest's session imports JAX), and a fork of a
        # multithreaded process can deadlock; the server preloads the commands, so a new worker starts warm
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, self.scratch), daemon=True)
        self.proc.start()
        child.close()

    def run(self, case: Case, timeout_s: float) -> tuple[str, str]:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(case)
        if not self.conn.poll(timeout_s):
            self.close(kill=True)
            return "hangs", f"no result after {timeout_s:g} s"
        try:
            return self.conn.recv()
        except (EOFError, ConnectionError):
            self.proc.join()
            code, self.proc = self.proc.exitcode, None
            return "crashes", f"worker exit code {code}" + (f" (signal {-code})" if code and code < 0 else "")

    def close(self, kill: bool = False):
        if self.proc is not None:
            if kill:
                self.proc.kill()
            else:
                self.conn.send(None)
            self.proc.join(5)
            self.proc = None


def save_reproducer(folder: Path, case: Case, outcome: str, detail: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    if case.stdin is not None:
        (folder / "stdin.bin").write_bytes(case.stdin)
    (folder / "case.json").write_text(json.dumps({"command": case.command, "args": list(case.args),
                                                  "files": sorted(case.files), "stdin": case.stdin is not None,
                                                  "outcome": outcome}, indent=1) + "\n")
    (folder / "detail.txt").write_text(detail)
    return folder


def replay(folder: Path) -> tuple[str, str]:
    """Rerun a saved reproducer in this process (its files copied to a scratch folder)."""
    meta = json.loads((folder / "case.json").read_text())
    stdin = (folder / "stdin.bin").read_bytes() if meta["stdin"] else None
    case = Case(meta["command"], tuple(meta["args"]), {n: (folder / n).read_bytes() for n in meta["files"]}, stdin)
    with tempfile.TemporaryDirectory() as scratch:
        return run_case(case, Path(scratch))


def _signature(detail: str) -> str:
    """The last frame and the exception line of a traceback: same signature, same defect (most likely)."""
    lines = [x for x in detail.strip().splitlines() if x.strip()]
    frames = [x.strip() for x in lines if x.strip().startswith("File ")]
    return f"{frames[-1] if frames else '?'} | {lines[-1] if lines else '?'}"


def fuzz_target(name: str, seeds: Seeds, inputs: int, seed: int, timeout_s: float = TIMEOUT_S,
                repro_dir: Path | None = None) -> dict:
    """Run ``inputs`` cases of target ``name``; the counts as ``make fuzz``'s JSON holds them, and ``signatures``
    (traceback / hang / crash kind -> count and the first reproducer's folder)."""
    counts = Counter({k: 0 for k in OUTCOMES}, corrupted_model_accepted=0, inputs=0)
    signatures: dict[str, dict] = {}
    scratch = tempfile.mkdtemp(prefix="edge-asd-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    worker = Worker(scratch)
    started = time.monotonic()

    @settings(max_examples=inputs, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(TARGETS[name].strategy(seeds))
    def one(case):
        outcome, detail = worker.run(case, timeout_s)
        counts["inputs"] += 1
        counts[outcome] += 1
        if case.damaged_model and outcome == "exit0":
            counts["corrupted_model_accepted"] += 1
            outcome, detail = "corrupted_model_accepted", "a damaged model file loaded and scored"
        if outcome in ("tracebacks", "hangs", "crashes", "corrupted_model_accepted"):
            sig = f"{outcome}: " + (_signature(detail) if outcome == "tracebacks" else detail)
            entry = signatures.setdefault(sig, {"count": 0, "reproducer": None})
            entry["count"] += 1
            if entry["reproducer"] is None and repro_dir is not None:
                entry["reproducer"] = str(save_reproducer(repro_dir / name / str(len(signatures) - 1), case, outcome, detail))

    try:
        hypothesis_seed(seed)(one)()
    finally:
        worker.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return {"target": name, **{k: counts[k] for k in ("inputs", *OUTCOMES, "corrupted_model_accepted")},
            "seconds": round(time.monotonic() - started, 1), "signatures": signatures}


def table(rows: list[dict]) -> str:
    cols = ["inputs", "clean_errors", "exit0", "tracebacks", "hangs", "crashes", "corrupted_model_accepted"]
    head = "| target | " + " | ".join(c.replace("_", " ") for c in cols) + " | inputs/s |"
    out = [head, "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        rate = r["inputs"] / r["seconds"] if r["seconds"] else 0.0
        out.append(f"| {r['target']} | " + " | ".join(str(r[c]) for c in cols) + f" | {rate:.1f} |")
    return "\n".join(out)


def _commit() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_json(path: Path, rows: list[dict], seed: int, commit: str) -> None:
    """``{"targets": [{"target", "inputs", "clean_errors", "exit0", "tracebacks", "hangs", "crashes",
    "corrupted_model_accepted", "seconds"}], "seed", "commit"}`` (read by ``make reliability``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"targets": [{k: v for k, v in r.items() if k != "signatures"} for r in rows],
                                "seed": seed, "commit": commit}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=DEFAULT_INPUTS, help="inputs per target (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed: the same seed, the same inputs (default 0)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, of: " + ", ".join(TARGETS))
    ap.add_argument("--json", type=Path, default=None, help="write the counts here as JSON")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds after which a case is a hang (default %(default)s)")
    ap.add_argument("--seeds", type=Path, default=REPO / "out" / "fuzz" / "seeds",
                    help="folder of the seed model, phi store and event log (built once if missing)")
    ap.add_argument("--data", type=Path, default=None, help="real recordings (default ../shared/data or $EDGE_ASD_DATA)")
    ap.add_argument("--repro", type=Path, default=REPO / "out" / "fuzz" / "repro", help="where reproducers are saved")
    ap.add_argument("--replay", type=Path, default=None, help="rerun one saved reproducer folder and print its outcome")
    a = ap.parse_args(argv)
    if a.replay:
        if not (a.replay / "case.json").is_file():
            ap.error(f"{a.replay}: not a saved reproducer (no case.json); make fuzz saves them under out/fuzz/repro "
                     "only when an input fails")
        outcome, detail = replay(a.replay)
        print(outcome, detail, sep="\n")
        return 0 if outcome in ("exit0", "clean_errors") else 1
    names = [t.strip() for t in a.targets.split(",") if t.strip()]
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    from edge_asd.datasets.locate import local_data_root

    data = a.data or local_data_root()
    if data is None:
        ap.error("no real recordings found: pass --data or set EDGE_ASD_DATA")
    commit = _commit()
    seeds = build_seeds(a.seeds, Path(data)).load()
    if a.repro.exists():
        shutil.rmtree(a.repro)
    rows = []
    for name in names:
        row = fuzz_target(name, seeds, a.inputs, a.seed, a.timeout, a.repro)
        rows.append(row)
        print(f"{name}: {row['inputs']} inputs in {row['seconds']} s", file=sys.stderr, flush=True)
        if a.json:  # after each target: a long run stopped early keeps what it measured
            write_json(a.json, rows, a.seed, commit)
    print(table(rows))
    found = [(r["target"], sig, s) for r in rows for sig, s in r["signatures"].items()]
    for target, sig, s in found:
        print(f"{target}: {s['count']} x {sig}\n    reproducer: {s['reproducer']}")
    if found:
        print(f"reproducers under {a.repro} (rerun one: python bench/fuzz.py --replay FOLDER)")
    bad = sum(r[k] for r in rows for k in ("tracebacks", "hangs", "crashes", "corrupted_model_accepted"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
