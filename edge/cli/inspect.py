"""``edge-inspect MODEL``: what a model file says about itself (feature preset, normalization,
architecture, loss, training-data fingerprint, versions, quantization) and what it holds (operators
with versions, tensors with shapes, dtypes and quantization scales). Runs on the device: no torch, no onnx."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from edge_asd.core.commands import CONTEXT_SETTINGS, kit_version, setup_logging, user_errors
from edge_asd.edge.cli.options import model_argument


def _summary(meta: dict) -> list[str]:
    f, arch, loss = meta["features"], meta.get("architecture", {}), meta.get("loss", {})
    norm = meta["normalization"]
    mean, std = np.asarray(norm["mean"]), np.asarray(norm["std"])
    td = meta.get("training_data") or {}
    lines = [
        f"format: {meta['format']} schema {meta['schema_version']}, target {meta.get('target')}, "
        f"kit {meta.get('kit_version')} (trained with {meta.get('trained_with_kit_version')}), created {meta.get('created_at')}",
        f"machine: {meta.get('machine_type')} {', '.join(meta.get('machine_ids') or [])}",
        f"features: preset {f.get('preset')}: " + ", ".join(f"{k}={v}" for k, v in f["config"].items()),
        f"normalization: per mel band, {len(mean)} bands; mean {mean.min():.4g}..{mean.max():.4g}, "
        f"std {std.min():.4g}..{std.max():.4g}",
        "architecture: " + ", ".join(f"{k}={v}" for k, v in arch.items()),
        f"loss: {loss.get('name')} " + json.dumps(loss.get("params", {}), sort_keys=True),
        f"training data: sha256 {td.get('sha256')} over {td.get('n_files')} files" + _listed(td),
    ]
    for ft in meta.get("fine_tuning") or []:
        lines.append(f"fine-tuned {ft.get('finetuned_at')}: machine ID {ft.get('machine_id')}, {ft.get('steps')} updates on "
                     f"{ft.get('recordings_trained', ft.get('recordings'))} recordings, {ft.get('rejected_frames')} frames "
                     f"rejected, base sha256 {str(ft.get('base_sha256'))[:12]}" + _listed(ft))
    lines += ["quantization: " + ", ".join(f"{k}={v}" for k, v in meta.get("quantization", {}).items()),
              f"content sha256 (sealed): {meta.get('content_sha256')}"]
    return lines


def _listed(entry: dict) -> str:
    """How many recordings' short digests an entry lists (edge-calibrate warns when given one of them)."""
    listed = entry.get("file_sha256_prefixes")
    return f" (short sha256 of {len(listed)} listed)" if isinstance(listed, list) else ""


@click.command(context_settings=CONTEXT_SETTINGS)
@model_argument
@click.option("--json", "as_json", is_flag=True, help="Everything as one JSON object: metadata, operators, tensors.")
@click.option("--all-scales", is_flag=True, help="Print every quantization scale, not a summary per tensor.")
@click.version_option(kit_version(), "--version")
@user_errors
def main(model_path, as_json, all_scales):
    """Print MODEL's metadata and tensor details; refuse (exit 1) a file the device would refuse."""
    setup_logging(quiet=True)
    from edge_asd.edge.model_inspect import describe_quantization, onnx_io, tflite_ops, tflite_tensors
    from edge_asd.edge.runtime.scorer import Scorer

    scorer = Scorer(model_path)  # the same checks as edge-monitor: metadata, schema, seal, tensors vs metadata
    data = Path(model_path).read_bytes()
    if scorer.kind == "tflite":
        ops, tensors = tflite_ops(data), tflite_tensors(scorer.backend._it)
    else:
        ops, tensors = None, onnx_io(scorer.backend._sess)
    if as_json:
        click.echo(json.dumps({"path": str(model_path), "kind": scorer.kind, "size_bytes": scorer.size_bytes,
                               "sha256": scorer.sha256, "backend": scorer.backend.name, "metadata": scorer.meta,
                               "operators": ops, "tensors": tensors}, indent=1, sort_keys=True))
        return
    click.echo(f"{model_path}: {scorer.kind}, {scorer.size_bytes} bytes, sha256 {scorer.sha256}, runs on {scorer.backend.name}")
    for line in _summary(scorer.meta):
        click.echo(line)
    if ops is not None:
        click.echo("operators: " + ", ".join(f"{o['op']} v{o['version']} x{o['count']}" for o in ops))
    click.echo("tensors:" if scorer.kind == "tflite" else "inputs and outputs:")
    for t in tensors:
        if scorer.kind == "onnx":
            click.echo(f"  {t['role']} {t['name']}: {t['shape']} {t['dtype']}")
            continue
        q = t["quantization"]
        quant = (f"  scales {q['scales']} zero points {q['zero_points']}" if all_scales and q
                 else ("  " + describe_quantization(q) if q else ""))
        click.echo(f"  {t['index']:>3} {t['name'][-48:]:<48} {str(t['shape']):<14} {t['dtype']:<8}{quant}")


if __name__ == "__main__":
    main()
