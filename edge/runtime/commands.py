"""Running a signed command on the device (docs/releases.md, Commands): the one place ``edge-release apply`` and
the running monitor (a command over MQTT, :mod:`.fleet.control`) verify and run it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edge_asd.core import signing
from edge_asd.core.errors import EdgeAsdError
from edge_asd.edge.runtime import phi_store
from edge_asd.edge.runtime.events import COMMAND, event_line, event_record, utc_now
from edge_asd.edge.runtime.trust import TrustDir


def run_command(device: TrustDir, envelope: signing.Envelope, where: str, store: Path,
                rollback: Callable[[], dict] | None = None, trusted_clock: bool = False) -> tuple[dict, object]:
    """Verify ``envelope`` (:meth:`TrustDir.accept_command`: operations key, this device, a sequence number above
    the last), run it and record its sequence number. set-phi stores the signed record in ``store`` and pins it;
    rollback calls ``rollback()`` (what it puts back: the fine-tune's model and phi, or a slot directory's previous
    model), whose dict joins the result; finetune-on/off switch local fine-tuning.

    Returns:
        (result fields: ``applied``, ``seq`` and the action's, the Command).
    Raises:
        EdgeAsdError: every refusal of accept_command and of the action (a phi record for another device,
            nothing to roll back); the sequence number is then not recorded.
    """
    with device.locked():  # accept, run and record as one step: two writers cannot both take a seq
        return _run(device, envelope, where, store, rollback, trusted_clock)


def _run(device: TrustDir, envelope: signing.Envelope, where: str, store: Path, rollback, trusted_clock: bool):
    cmd = device.accept_command(envelope, where, trusted_clock)
    out = {"applied": cmd.action, "seq": cmd.seq}
    if cmd.action == "set-phi":
        machine_id = cmd.args.get("machine_id")
        phi_env = signing.envelope_from_dict(cmd.args.get("phi"), f"{where}: phi")
        phi = device.verify_phi(phi_env, str(machine_id), f"{where}: phi")
        record = phi_store.PhiRecord.from_dict({**phi.record.to_dict(), "signed": phi_env.to_dict()})
        phi_store.save_phi(store, phi.machine_id, record)
        device.pin_phi(phi.machine_id, phi_env)
        out.update(machine_id=phi.machine_id, phi=record.phi, store=str(store))
    elif cmd.action == "rollback":
        if rollback is None:
            raise EdgeAsdError(f"{where}: rollback needs the model in service")
        out.update(rollback())
    device.record_command(cmd)
    return out, cmd


def command_line(seq, action, result: str, reason: str | None = None) -> dict:
    """A ``command`` line (docs/events.md): ``seq``, ``action``, ``result`` (applied or refused), ``reason``."""
    fields = {"seq": seq, "action": action, "result": result, "time": utc_now()}
    if reason is not None:
        fields["reason"] = reason
    return event_line(event_record(COMMAND, fields), "device")
