"""``edge-monitor``: score live or recorded streams frame by frame; print events, verdicts and a summary."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from edge_asd.core.commands import CONTEXT_SETTINGS, kit_version, setup_logging, user_errors, version_option
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.cli.options import (
    config_range,
    gate_options,
    model_option,
    phi_option,
    store_option,
    threads_option,
    trust_options,
)
from edge_asd.edge.runtime.health import HOLD_S, LEVEL_DRIFT_DB, SILENT_DBFS
from edge_asd.firmware_io.sources import DEFAULT_BAUD, PCM_FRAMINGS, SourceSpec

log = logging.getLogger("edge_asd")
FILE = click.Path(dir_okay=False, path_type=Path)


def mqtt_options(fn):
    """The fleet link's options (docs/fleet.md); each also from EDGE_ASD_MQTT* or monitor.toml's [fleet]."""
    options = [
        click.option("--mqtt", "mqtt", envvar="EDGE_ASD_MQTT", metavar="URL", default=None,
                     help="Also send every line to the fleet through this MQTT 5 broker: mqtt://HOST[:PORT] or "
                          "mqtts://HOST[:PORT] (TLS); lines wait in an outbox while it is down (docs/fleet.md)."),
        click.option("--mqtt-site", envvar="EDGE_ASD_MQTT_SITE", default=None,
                     help="Site in the topics asd/v1/SITE/DEVICE/... [default: default]."),
        click.option("--mqtt-device", envvar="EDGE_ASD_MQTT_DEVICE", default=None,
                     help="Device name in the topics [default: the host name]."),
        click.option("--mqtt-username", envvar="EDGE_ASD_MQTT_USERNAME", default=None,
                     help="Broker user name (the password: $EDGE_ASD_MQTT_PASSWORD or --mqtt-password-file)."),
        click.option("--mqtt-password-file", envvar="EDGE_ASD_MQTT_PASSWORD_FILE", type=FILE, default=None,
                     help="File holding the broker password."),
        click.option("--mqtt-ca", envvar="EDGE_ASD_MQTT_CA", type=FILE, default=None,
                     help="CA certificates of the broker (mqtts) [default: the system's]."),
        click.option("--mqtt-cert", envvar="EDGE_ASD_MQTT_CERT", type=FILE, default=None,
                     help="Client certificate for mutual TLS (with --mqtt-key)."),
        click.option("--mqtt-key", envvar="EDGE_ASD_MQTT_KEY", type=FILE, default=None, help="Client key for mutual TLS."),
        click.option("--mqtt-outbox", envvar="EDGE_ASD_MQTT_OUTBOX", type=FILE, default=None,
                     help="Outbox file (SQLite) [default: outbox-SITE-DEVICE.sqlite in the user data dir]."),
        click.option("--mqtt-keepalive", envvar="EDGE_ASD_MQTT_KEEPALIVE", type=click.IntRange(1, 65535), default=None,
                     help="MQTT keep-alive, s: the broker marks the device offline after 1.5 times it [default: 30]."),
        click.option("--mqtt-ha-discovery/--no-mqtt-ha-discovery", envvar="EDGE_ASD_MQTT_HA_DISCOVERY", default=None,
                     help="Publish Home Assistant MQTT discovery configs (retained) so the device shows up there "
                          "[default: off]."),
        click.option("--mqtt-ha-prefix", envvar="EDGE_ASD_MQTT_HA_PREFIX", default=None,
                     help="Home Assistant's discovery prefix [default: homeassistant]."),
        click.option("--heartbeat-s", envvar="EDGE_ASD_HEARTBEAT_S", type=click.FloatRange(0.1, 86400), default=None,
                     help="Seconds between heartbeats to the fleet [default: half the keep-alive, 15]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _list_devices(ctx, param, value):
    if not value or ctx.resilient_parsing:
        return
    from edge_asd.firmware_io.mic import input_devices

    @user_errors
    def show():
        devices = input_devices()
        if not devices:
            click.echo("no input devices found", err=True)
        for d in devices:
            click.echo(f"{d['index']:>3}  {d['name']}  ({d['channels']} ch, default {d['rate']} Hz)")

    show()
    ctx.exit(0)


def _gate_range(key: str):
    """The option type of a health-gate setting: the range monitor.toml's [rollout] takes (finite; ``--trial-factor
    nan`` and ``--trial-minutes inf`` switched the gate off)."""
    from edge_asd.edge.cli.options import FiniteRange
    from edge_asd.edge.runtime.gate import GATE_RANGES

    kind, lo, hi = GATE_RANGES[key]
    return click.IntRange(lo, hi) if kind is int else FiniteRange(lo, hi)


def trial_options(fn):
    """The health gate's options of a slot directory (docs/releases.md); each also from monitor.toml's [rollout]."""
    options = [
        click.option("--trial-windows", type=_gate_range("trial_windows"), default=None,
                     help="Health gate: context windows a release on trial must score before it is marked good "
                          "[default: 200]."),
        click.option("--trial-minutes", type=_gate_range("trial_minutes"), default=None,
                     help="Health gate: minutes of audio a release on trial must score before it is marked good "
                          "[default: 10]."),
        click.option("--trial-factor", type=_gate_range("factor"), default=None,
                     help="Health gate: a trial fails when its alarms per hour exceed this many times the good "
                          "model's (plus --trial-extra alarms) [default: 3]."),
        click.option("--trial-extra", type=_gate_range("extra"), default=None,
                     help="Health gate: alarms a trial may raise beyond the factor's allowance [default: 1]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command(context_settings=CONTEXT_SETTINGS)
@model_option(envvar="EDGE_ASD_MODEL", dir_okay=True,
              help="Model file (.tflite or .onnx), or a slot directory (edge-release install --slots): its release "
                   "on trial under the health gate, else its good one.")
@click.option("--machine-id", default=None, help="Machine ID whose phi to use (default: the only one calibrated for this model).")
@store_option("phi store written by edge-calibrate")
@phi_option("Use this threshold instead of the store's.")
@click.option("--input", "input_spec", envvar="EDGE_ASD_INPUT", default="mic", show_default=True,
              help="mic, mic:INDEX, mic:NAME (part of a device name), serial:PORT (raw PCM from a microcontroller), "
                   "- (raw s16le PCM or WAV on stdin), or an audio file.")
@click.option("--channel", type=click.IntRange(min=0), default=None,
              help="Channel to score (0-based) of a multichannel input (default: mono, or the mean of a file's channels).")
@click.option("--pcm-rate", type=int, default=None, help="Sample rate (Hz) of raw PCM; must equal the model's.")
@click.option("--pcm-channels", type=click.IntRange(min=1), default=1, show_default=True,
              help="Interleaved channels in raw PCM (stdin, serial).")
@click.option("--pcm-framing", type=click.Choice(PCM_FRAMINGS), default="raw", show_default=True,
              help="Raw PCM (stdin, serial): bare s16le samples, or framed (sync word, sequence number, CRC-32: "
                   "damaged bytes are skipped, lost frames restart the features; see README).")
@click.option("--baud", type=int, default=DEFAULT_BAUD, show_default=True, help="Serial port speed (ignored by USB CDC).")
@click.option("--window", default="whole", show_default=True,
              help="Operation window resetting the running max: whole (the stream), SECONDS (fixed length), "
                   "or gate (one window per machine-on segment, energy gate).")
@gate_options
@click.option("--votes", default=None, metavar="K/N",
              help="Alert policy: a frame's policy score is the K-th largest score of the last N frames (K of N reach "
                   "phi; K=N: N hops above phi) [default: the phi record's, else 1/1, eq. 11].")
@click.option("--hysteresis", type=float, default=None,
              help="The alarm (alarm lines) stays on until the policy score falls below HYSTERESIS x phi, in (0, 1] "
                   "[default: the phi record's, else 1].")
@click.option("--events", "events_path", envvar="EDGE_ASD_EVENTS", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also append every line to this JSONL file (flushed and fsynced per line).")
@click.option("--events-max-mb", type=config_range("events_max_mb"), default=0.0, show_default=True,
              help="Rotate the events file beyond this size (MB; 0 = never): events.jsonl.1, .2, ...")
@click.option("--evidence-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the audio around each event here (FLAC); its path goes into the event line.")
@click.option("--evidence-seconds", type=config_range("evidence_before_s"), default=5.0, show_default=True,
              help="Seconds of evidence audio before and after each event.")
@click.option("--evidence-png", is_flag=True, help="Also a log-mel PNG per evidence clip (needs matplotlib).")
@click.option("--config", "config_path", envvar="EDGE_ASD_CONFIG", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML file listing several inputs, each with its model, machine ID and phi store (see README).")
@click.option("--list-devices", is_flag=True, expose_value=False, is_eager=True, callback=_list_devices,
              help="List the microphone input devices and exit.")
@click.option("--silent-dbfs", type=config_range("silent_dbfs"), default=SILENT_DBFS, show_default=True,
              help="Input health: audio below this level is a dead input (not scored; a 'silent' health line), dBFS.")
@click.option("--silent-s", type=config_range("silent_s"), default=HOLD_S["silent"], show_default=True,
              help="Input health: seconds of silence before the 'silent' health line.")
@click.option("--level-drift-db", type=config_range("level_drift_db"), default=LEVEL_DRIFT_DB, show_default=True,
              help="Input health: a 'level_drift' health line when the level leaves the calibrated range by this much, dB.")
@mqtt_options
@trial_options
@trust_options
@click.option("--allow-unsigned", is_flag=True,
              help="Development mode: with --trust-dir, run an unsigned model or phi after a warning instead of refusing.")
@threads_option("Inference threads per model.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@version_option()
@user_errors
def main(model_path, machine_id, store, phi, input_spec, channel, pcm_rate, pcm_channels, pcm_framing, baud, window, gate_db,
         gate_min_on_s, gate_min_off_s, votes, hysteresis, events_path, events_max_mb, evidence_dir, evidence_seconds,
         evidence_png, config_path, silent_dbfs, silent_s, level_drift_db, mqtt, mqtt_site, mqtt_device, mqtt_username,
         mqtt_password_file, mqtt_ca, mqtt_cert, mqtt_key, mqtt_outbox, mqtt_keepalive, mqtt_ha_discovery, mqtt_ha_prefix,
         heartbeat_s, trial_windows,
         trial_minutes, trial_factor, trial_extra, trust_dir, trusted_clock, allow_unsigned, threads, quiet):
    """Stream audio through the model; print one JSON line per frame that pushes the running max over phi,
    one verdict line per closed operation window (eq. 11), an alarm line when the alarm goes on or off, and a
    summary line. With --votes K/N (or the phi record's policy) all of them judge the K-th largest score of
    the last N frames instead of each frame's score. Input health (a dead
    microphone, clipping, DC offset, an upsampled recording, level drift, lost samples) gets its own
    health lines; audio that fails it is not scored (docs/device.md, Input health).

    Lines (schema in docs/events.md) go to stdout, logs and the summary to stderr. SIGTERM or Ctrl-C end
    it cleanly (verdict and summary written). Exit status: 0 after a clean end of input or a stop, 1 on
    bad input. Every option can come from the environment: EDGE_ASD_MODEL, EDGE_ASD_CONFIG, ...

    With --trust-dir (docs/releases.md) the model must have a signed release installed there and phi must
    be the signed record last accepted; --allow-unsigned turns those refusals into warnings.

    With --mqtt (or monitor.toml's [fleet] table) every line also goes to the fleet over MQTT 5 (docs/fleet.md):
    stored in an outbox first, sent in batches, removed when the fleet's ingest acknowledges it; a retained
    state, heartbeats and a last will tell the fleet whether the device is online. The device then takes its
    cohort's desired release (into the trial slot of a --model DIR) and signed commands (set-phi, rollback,
    finetune-on/off) while it runs.

    With --model DIR (a slot directory, docs/releases.md) a release on trial runs under the health gate
    (--trial-*, monitor.toml's [rollout]): marked good after enough windows and minutes within the alarm rate
    allowed, else the monitor goes back to the good model without a restart; rollout lines report it.
    """
    setup_logging(quiet=quiet)
    from edge_asd.edge.runtime.config import InputConfig, load_config
    from edge_asd.edge.runtime.service import Shutdown, build_monitors, run_monitors, use_journald_format_if_under_systemd

    use_journald_format_if_under_systemd()
    from edge_asd.edge.runtime.memory import tune_malloc

    tune_malloc()  # before any monitor thread allocates: one arena, fixed mmap threshold (flat RSS for hours)
    if config_path is not None:
        configs = load_config(config_path)
        for cfg in configs:  # the command line's trust options apply to every input of the file too
            cfg.trust_dir = cfg.trust_dir or trust_dir
            cfg.allow_unsigned = cfg.allow_unsigned or allow_unsigned
            cfg.trusted_clock = cfg.trusted_clock or trusted_clock
    else:
        if model_path is None:
            raise EdgeAsdError("missing --model (or --config FILE listing the inputs)")
        source = SourceSpec(str(input_spec), channel=channel, pcm_channels=pcm_channels, pcm_rate=pcm_rate,
                            pcm_framing=pcm_framing, baud=baud)
        configs = [InputConfig(source=source, model=Path(model_path), name=str(input_spec),
                               machine_id=machine_id, store=store, phi=phi, window=window, gate_db=gate_db,
                               gate_min_on_s=gate_min_on_s, gate_min_off_s=gate_min_off_s, votes=votes,
                               hysteresis=hysteresis, events=events_path, events_max_mb=events_max_mb,
                               evidence_dir=evidence_dir, evidence_before_s=evidence_seconds, evidence_after_s=evidence_seconds, evidence_png=evidence_png, threads=threads,
                               silent_dbfs=silent_dbfs, silent_s=silent_s, level_drift_db=level_drift_db,
                               trust_dir=trust_dir, allow_unsigned=allow_unsigned, trusted_clock=trusted_clock)]
    from edge_asd.edge.runtime.config import load_rollout_table
    from edge_asd.edge.runtime.gate import GateSettings
    from edge_asd.firmware_io.sinks import StdoutSink

    gate = load_rollout_table(config_path) if config_path is not None else {}
    gate.update({k: v for k, v in dict(trial_windows=trial_windows, trial_minutes=trial_minutes, factor=trial_factor,
                                       extra=trial_extra).items() if v is not None})

    fleet = _open_fleet(config_path, configs, dict(
        broker=mqtt, site=mqtt_site, device=mqtt_device, username=mqtt_username, password_file=mqtt_password_file,
        ca=mqtt_ca, cert=mqtt_cert, key=mqtt_key, outbox=mqtt_outbox, keepalive_s=mqtt_keepalive, heartbeat_s=heartbeat_s,
        ha_discovery=mqtt_ha_discovery, ha_prefix=mqtt_ha_prefix))
    shutdown = Shutdown()
    try:
        monitors, file_sinks = build_monitors(configs, StdoutSink(sys.stdout, on_closed=shutdown.reader_gone),
                                              extra_sinks=[fleet] if fleet else [], gate=GateSettings(**gate))
    except BaseException:
        if fleet is not None:
            fleet.link.outbox.close()
        raise
    if fleet is not None:
        from edge_asd.edge.runtime.fleet.control import DeviceControl

        control = DeviceControl(monitors, _finetune_rollback)
        fleet.link.on_release, fleet.link.on_command = control.release, control.command
        fleet.frames = lambda: {m.name: m.frames for m in monitors}
        fleet.releases = lambda: {m.name: m.rollout.release_info() for m in monitors if m.rollout is not None}
        fleet.link.start()
    try:
        with shutdown:
            summaries, error = run_monitors(monitors, shutdown)
    finally:
        for s in file_sinks:
            s.close()
        if fleet is not None:
            fleet.link.stop()
    for m, s in zip(monitors, summaries):
        prefix = "" if len(monitors) == 1 else f"{m.name}: "
        click.echo(f"edge-monitor: {prefix}{s.line(m.detector.phi)}", err=True)
    if error is not None:
        raise error
    for m, s in zip(monitors, summaries):
        if s.silent:
            raise EdgeAsdError(f"{m.name}: the input was digital silence (all samples 0); check the microphone or file")
        if s.frames == 0 and s.reason == "end of input":
            raise EdgeAsdError(f"{m.name}: too short to score (needs {m.cfg.samples_per_vector} samples)")


def _finetune_rollback(device, model_path, store) -> dict:
    """A rollback command on a fine-tuned model file (edge.finetune, imported only when one comes)."""
    from edge_asd.edge.finetune.adapt import rollback_signed

    return rollback_signed(device, model_path, store)


def _open_fleet(config_path: Path | None, configs: list, options: dict):
    """The fleet sink (:mod:`edge_asd.edge.runtime.fleet`) when a broker is given by an option, the environment
    or the config's [fleet] table (options win), else None."""
    import os

    from edge_asd.edge.runtime.config import load_fleet_table

    values = load_fleet_table(config_path) if config_path is not None else {}
    values.update({k: v for k, v in options.items() if v is not None})
    if values.get("broker") is None:
        return None
    from platformdirs import user_data_dir

    from edge_asd.edge.runtime.fleet.settings import settings
    from edge_asd.edge.runtime.fleet.sink import open_fleet
    from edge_asd.edge.runtime.trust import TrustDir

    inputs, cohort, names = {}, "all", set()
    for cfg in configs:
        state = TrustDir(cfg.trust_dir).state() if cfg.trust_dir else {}
        version, cohort = state.get("release_version"), state.get("cohort", cohort)
        names |= {state["device"]} if "device" in state else set()
        source = "option" if cfg.phi is not None else "signed" if cfg.trust_dir else "store"
        inputs[cfg.label] = {"model_version": version, "phi_source": source}
    if len(names) > 1:
        raise EdgeAsdError(f"the inputs' trust directories name different devices ({', '.join(sorted(names))}); "
                           "one monitor is one device")
    if names:  # signed commands name the trust directory's device: the link must listen under that name
        device = names.pop()
        if values.get("device") not in (None, device):
            raise EdgeAsdError(f"--mqtt-device {values['device']} differs from the trust directory's device {device}: "
                               f"signed commands for {device} would never reach this monitor (leave --mqtt-device out)")
        values["device"] = device
    link_settings = settings(values, Path(user_data_dir("edge-asd")) / "outbox.sqlite",
                             os.environ.get("EDGE_ASD_MQTT_PASSWORD"))
    sink = open_fleet(link_settings, inputs, cohort)
    sink.kit_version = kit_version()  # importlib.metadata: loaded only with --mqtt
    return sink


if __name__ == "__main__":
    main()
