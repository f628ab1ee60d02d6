"""``make fuzz``'s targets: hypothesis strategies that mutate the seeds (:mod:`fuzz_seeds`) into cases,
one per file or stream the device reads (see :mod:`fuzz`). Add a target with one strategy and one entry in
:data:`TARGETS`.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from fuzz_seeds import Seeds
from hypothesis import strategies as st

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
    head &= ~((1 << 64) - 1)
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
