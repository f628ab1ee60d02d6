"""``make fuzz``'s seeds: the real files every input is mutated from (see :mod:`fuzz`).

A 1.5-s fan id_00 clip (as WAV, FLAC, raw s16le and framed PCM), a sealed int8 model file trained and
converted by the kit, the phi store edge-calibrate wrote for it, ``examples/service/monitor.toml``, an
``events.jsonl`` edge-monitor wrote, and a root, a signed release and a signed command made with edge-release.
Built once into a folder and reused.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
CLIP_S = 1.5
"""Seconds of the real fan clip in the audio seeds (enough for 70 context vectors of koizumi2019)."""


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
