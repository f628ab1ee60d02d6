"""One reliability report: fuzzing, injected faults, bounded memory and 64-bit ARM, with counts.

    make reliability                      # = python bench/reliability.py
    python bench/reliability.py --fuzz-inputs 2000 --soak-hours 1 --kills 10

Runs, on real fan id_00 recordings and one small model it trains once (``out/reliability/fan.tflite``;
``--model`` to use another):

1. ``bench/fuzz.py``: mutated inputs per target (audio files, model files, phi store, TOML config, PCM on
   stdin, event logs) through the kit's own commands: clean one-line errors, tracebacks, hangs, crashes;
2. ``bench/faults.py``: SIGKILLs during heavy event logging, restarts on the same events file: recoveries,
   torn lines, events lost;
3. ``tests/test_disk_full.py``: a small tmpfs filled while logging (the events file and evidence clips);
4. ``bench/soak.py``: an accelerated 8-hour-equivalent stream with 1-s windows, events and evidence (with the
   small model, phi at the median test clip's max score, so that about half the clips raise events): RSS and
   open descriptors at start and end, events identical to a straight run;
5. ``bench/arm64_check.py``: the device commands in an emulated bookworm arm64 root against this machine's
   run, when the root is cached (``make arm64`` builds it, about 15 minutes); else its last saved result.

Each part's figures go to ``out/reliability/<part>.json``; the report (Markdown) to stdout and
``out/reliability/report.md``. Exit 1 when a target is missed (a traceback, hang or crash; an event lost;
RSS above 60 MB). Timings are this machine's, never a device's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

from edge_asd.core.commands import script_help
from edge_asd.datasets.locate import local_data_root

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RSS_TARGET_MB = 60.0


def sh(*cmd, log: Path | None = None) -> int:
    """Run a command, its output to ``log`` (or the terminal's stderr); its exit status."""
    click.echo(f"$ {' '.join(map(str, cmd))}", err=True)
    with open(log, "w") if log else open("/dev/null", "w") as out:
        return subprocess.run(list(map(str, cmd)), stdout=out if log else sys.stderr, stderr=subprocess.STDOUT,
                              cwd=REPO).returncode


def small_model(out: Path, data: Path) -> tuple[Path, Path]:
    """(model, phi store): a BU model of fan id_00 (2 x 50 updates: enough to score, not to detect), int8, and
    phi calibrated on the ID's normal training clips; made once."""
    ckpt, model, store = out / "fan.pt", out / "fan.tflite", out / "phi.json"
    steps = [(ckpt, [BIN / "edge-train", data, "--machine-type", "fan", "--machine-id", "id_00", "--epochs", "2",
                     "--batches-per-epoch", "50", "--out", ckpt, "-q"]),
             (model, [BIN / "edge-convert", ckpt, "--to", "tflite", "--int8", "--calibration", data, "--out", model, "-q"]),
             (store, [BIN / "edge-calibrate", "--model", model, "--machine-id", "id_00", "--store", store, "--votes", "1/1",
                      "-q", *sorted((data / "machines" / "fan" / "train").glob("normal_id_00_*"))])]
    for made, cmd in steps:
        if not made.exists() and sh(*cmd, log=out / f"{Path(str(cmd[0])).name}.log") != 0:
            sys.exit(f"reliability: {Path(str(cmd[0])).name} failed (its log: {out})")
    return model, store


def busy_phi(model: Path, data: Path) -> float:
    """phi at the median of the fan id_00 test clips' max frame scores: about half of the soak's clips raise
    events and evidence (the small model's calibrated phi raises none, and a soak without events measures
    nothing of the logging and evidence paths)."""
    import numpy as np

    from edge_asd.edge.runtime.scorer import Scorer
    from edge_asd.firmware_io.audio_file import read_audio

    scorer = Scorer(model)
    clips = sorted((data / "machines" / "fan" / "test").glob("*_id_00_*"))
    return float(np.median([scorer.score_audio(read_audio(c, scorer.features.sample_rate)).max() for c in clips]))


def junit_counts(path: Path) -> dict:
    """``{"tests", "passed"}`` of a pytest --junitxml file (a skipped test does not pass)."""
    import xml.etree.ElementTree as ET

    try:
        suite = ET.parse(path).getroot().find("testsuite")
    except (OSError, ET.ParseError):
        return {"tests": 1, "passed": 0}
    tests = int(suite.get("tests", 0))
    bad = sum(int(suite.get(k, 0)) for k in ("failures", "errors", "skipped"))
    return {"tests": tests, "passed": tests - bad}


def read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def service_exposure() -> dict | None:
    """``{"exposure"}``: systemd's exposure score (0 locked down .. 10) of examples/service's unit, installed
    with this environment's edge-monitor; None without systemd-analyze."""
    import re
    import shutil
    import tempfile

    if shutil.which("systemd-analyze") is None:
        return None
    unit = REPO / "examples" / "service" / "edge-asd-monitor.service"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / unit.name
        path.write_text(re.sub(r"^ExecStart=.*$", f"ExecStart={BIN / 'edge-monitor'}", unit.read_text(), flags=re.M))
        out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=100", str(path)],
                             capture_output=True, text=True).stdout
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", out)
    return {"exposure": float(found.group(1))} if found else None


def report(parts: dict, skipped: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """The Markdown report and the targets missed (a part left out with ``skipped`` is said, not missed)."""
    lines, missed = ["# edge-asd reliability report", ""], []

    def absent(name: str, title: str) -> None:
        lines.extend([title, "", "left out (--skip)." if name in skipped else "no result (see its log).", ""])
        if name not in skipped:
            missed.append(f"{name}: no result")

    fuzz = parts.get("fuzz")
    if fuzz:
        lines += ["## 1. Fuzzing (bench/fuzz.py)", "",
                  "| target | inputs | clean errors | exit 0 | tracebacks | hangs | crashes | corrupted model accepted |",
                  "|---|---|---|---|---|---|---|---|"]
        for t in fuzz["targets"]:
            lines.append(f"| {t['target']} | {t['inputs']} | {t['clean_errors']} | {t['exit0']} | {t['tracebacks']} | "
                         f"{t['hangs']} | {t['crashes']} | {t.get('corrupted_model_accepted', 0)} |")
            bad = t["tracebacks"] + t["hangs"] + t["crashes"] + t.get("corrupted_model_accepted", 0)
            if bad:
                missed.append(f"fuzz {t['target']}: {bad} tracebacks, hangs, crashes or corrupted models accepted")
        lines += [f"\n{sum(t['inputs'] for t in fuzz['targets'])} inputs tried.", ""]
    else:
        absent("fuzz", "## 1. Fuzzing (bench/fuzz.py)")
    faults = parts.get("faults")
    if faults:
        lines += ["## 2. SIGKILL while logging (bench/faults.py)", "",
                  "| faults injected | recoveries | torn lines | events lost | lines |", "|---|---|---|---|---|",
                  f"| {faults['kills']} | {faults['recoveries']} | {faults['torn_lines']} | {faults['events_lost']} | "
                  f"{faults.get('lines', '')} |", ""]
        if faults["events_lost"] or faults["recoveries"] != faults["kills"]:
            missed.append(f"faults: {faults['events_lost']} events lost, {faults['recoveries']}/{faults['kills']} recovered")
    else:
        absent("faults", "## 2. SIGKILL while logging (bench/faults.py)")
    disk = parts.get("disk_full")
    if disk:
        lines += ["## 3. A full disk while logging (tests/test_disk_full.py, a 256 KiB tmpfs)", "",
                  f"{disk['passed']} of {disk['tests']} checks passed: the disk filled during logging, one-line error, "
                  "every written line whole, no partial evidence clip, the torn line moved aside and clean appends "
                  "after a restart.", ""]
        if disk["passed"] != disk["tests"] or not disk["tests"]:
            missed.append("disk full: a check failed or was skipped (disk_full.log)")
    else:
        absent("disk_full", "## 3. A full disk while logging (tests/test_disk_full.py)")
    soak = parts.get("soak")
    if soak:
        lines += ["## 4. Bounded memory (bench/soak.py)", "",
                  "| audio h | RSS start MB | RSS peak MB | RSS end MB | fds start | fds end | events | identical |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {soak['audio_hours']} | {soak['rss_start_mb']} | {soak['rss_peak_mb']} | {soak['rss_end_mb']} | "
                  f"{soak['fds_start']} | {soak['fds_end']} | {soak['events']} | {soak['events_identical']} |", ""]
        if soak["rss_peak_mb"] > RSS_TARGET_MB or not soak["events_identical"] or soak["fds_end"] > soak["fds_start"]:
            missed.append(f"soak: RSS peak {soak['rss_peak_mb']} MB (target {RSS_TARGET_MB}), fds "
                          f"{soak['fds_start']} -> {soak['fds_end']}, events identical {soak['events_identical']}")
    else:
        absent("soak", "## 4. Bounded memory (bench/soak.py)")
    arm = parts.get("arm64")
    lines += ["## 5. 64-bit ARM under qemu (bench/arm64_check.py)", ""]
    if arm:
        lines += [f"{'the last make arm64, ' + arm['saved'] if arm.get('saved') else 'run now'}: cpu {arm.get('cpu')}, "
                  f"phi x86 {arm.get('phi_x86')} / arm64 {arm.get('phi_arm')}, largest score difference "
                  f"{arm.get('max_abs_score_diff')} ({arm.get('max_ulp')} float32 ulp), events identical "
                  f"{arm.get('events_identical')} (up to float32 rounding: {arm.get('events_same_but_rounding')}), "
                  f"fine-tuned scores {arm.get('finetune_max_abs_diff')} ({arm.get('finetune_max_ulp')} ulp), "
                  f"commands failed: {arm.get('commands_failed') or 'none'}. Emulated: no timings.", ""]
        if arm.get("commands_failed") or not arm.get("events_same_but_rounding"):
            missed.append("arm64: a command failed or the events differ beyond float32 rounding")
    else:
        lines += ["left out (--skip)." if "arm64" in skipped else
                  "not run: `make arm64` builds the emulated root once (about 15 minutes), then this report runs it.", ""]
    service = parts.get("service")
    lines += ["## 6. The service (examples/service/edge-asd-monitor.service)", "",
              f"systemd's exposure score {service['exposure']} (0 locked down .. 10 unprotected; a bare unit 9.6)."
              if service else "not rated: systemd-analyze is not installed.", ""]
    lines += ["Targets: 0 tracebacks, 0 hangs, 0 crashes, 0 corrupted models accepted, 0 events lost, "
              f"RSS <= {RSS_TARGET_MB:g} MB. " + ("All met." if not missed else "Missed: " + "; ".join(missed) + ".")]
    return "\n".join(lines) + "\n", missed


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=script_help(__doc__))
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="An int8 .tflite of fan id_00 (with --store); default: a small one trained here once.")
@click.option("--store", "store_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The phi store of --model (id_00).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/reliability"), show_default=True)
@click.option("--fuzz-inputs", type=click.IntRange(min=1), default=10_000, show_default=True, help="Inputs per fuzz target.")
@click.option("--kills", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--soak-hours", type=click.FloatRange(min=0.01), default=8.0, show_default=True)
@click.option("--skip", multiple=True, type=click.Choice(["fuzz", "faults", "disk_full", "soak", "arm64"]),
              help="Leave a part out (repeatable).")
def main(model_path, store_path, out, fuzz_inputs, kills, soak_hours, skip):
    if model_path is not None and store_path is None:
        raise click.UsageError("--model needs --store (its phi for id_00)")
    out = (REPO / out) if not out.is_absolute() else out
    out.mkdir(parents=True, exist_ok=True)
    data = local_data_root()
    if data is None:
        sys.exit("reliability: no real recordings (../shared/data or EDGE_ASD_DATA)")
    model, store = (model_path, store_path) if model_path else small_model(out, data)
    py, parts, t0 = sys.executable, {}, time.monotonic()
    if "fuzz" not in skip:
        sh(py, "bench/fuzz.py", "--inputs", fuzz_inputs, "--json", out / "fuzz.json", log=out / "fuzz.log")
        parts["fuzz"] = read(out / "fuzz.json")
    if "faults" not in skip:
        sh(py, "bench/faults.py", "--model", model, "--kills", kills, "--json", out / "faults.json", log=out / "faults.log")
        parts["faults"] = read(out / "faults.json")
    if "disk_full" not in skip:
        sh(py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", out / "disk_full.xml",
           "tests/test_disk_full.py", log=out / "disk_full.log")
        parts["disk_full"] = junit_counts(out / "disk_full.xml")
    if "soak" not in skip:
        phi = ["--store", store, "--machine-id", "id_00"] if model_path else ["--phi", repr(busy_phi(model, data))]
        sh(py, "bench/soak.py", "--model", model, *phi, "--hours", soak_hours, "--json", out / "soak.json",
           log=out / "soak.log")
        parts["soak"] = read(out / "soak.json")
    if "arm64" not in skip:
        sys.path.insert(0, str(REPO / "bench"))
        import arm64_root

        root, saved = Path(arm64_root.DEFAULT_ROOT), REPO / "out" / "arm64" / "arm64.json"
        if (root / arm64_root.DEBOOTSTRAP_DONE).exists() and (root / arm64_root.DEPS_DONE).exists():
            sh(py, "bench/arm64_check.py", "--model", model, "--json", out / "arm64.json", log=out / "arm64.log")
            parts["arm64"] = read(out / "arm64.json")
        elif read(saved):  # the last `make arm64` result, said as such
            parts["arm64"] = {**read(saved), "saved": f"{saved} ({time.ctime(saved.stat().st_mtime)})"}
    parts["service"] = service_exposure()
    text, missed = report(parts, skip)
    text += f"\nWall time {time.monotonic() - t0:.0f} s on this machine; logs in {out}.\n"
    (out / "report.md").write_text(text)
    click.echo(text)
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
