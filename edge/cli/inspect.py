"""``edge-inspect MODEL``: what a model file says about itself (feature preset, normalization,
architecture, loss, training-data fingerprint, versions, quantization) and what it holds (operators
with versions, tensors with shapes, dtypes and quantization scales). Runs on the device: no torch, no onnx."""

from __future__ import annotations

import json

import click

from edge_asd.core.commands import CONTEXT_SETTINGS, setup_logging, user_errors, version_option
from edge_asd.edge.cli.options import model_argument


@click.command(context_settings=CONTEXT_SETTINGS)
@model_argument
@click.option("--json", "as_json", is_flag=True, help="Everything as one JSON object: metadata, operators, tensors.")
@click.option("--all-scales", is_flag=True, help="Print every quantization scale, not a summary per tensor.")
@version_option()
@user_errors
def main(model_path, as_json, all_scales):
    """Print MODEL's metadata and tensor details; refuse (exit 1) a file the device would refuse."""
    setup_logging(quiet=True)
    from edge_asd.edge.model_inspect import describe_quantization, inspect_model, summary_lines

    m = inspect_model(model_path)  # the same checks as edge-monitor: metadata, schema, seal, tensors vs metadata
    if as_json:
        click.echo(json.dumps({"path": str(model_path), "kind": m.kind, "size_bytes": m.size_bytes, "sha256": m.sha256,
                               "backend": m.backend, "metadata": m.meta, "operators": m.operators, "tensors": m.tensors},
                              indent=1, sort_keys=True))
        return
    click.echo(f"{model_path}: {m.kind}, {m.size_bytes} bytes, sha256 {m.sha256}, runs on {m.backend}")
    for line in summary_lines(m.meta):
        click.echo(line)
    if m.operators is not None:
        click.echo("operators: " + ", ".join(f"{o['op']} v{o['version']} x{o['count']}" for o in m.operators))
    click.echo("tensors:" if m.kind == "tflite" else "inputs and outputs:")
    for t in m.tensors:
        if m.kind == "onnx":
            click.echo(f"  {t['role']} {t['name']}: {t['shape']} {t['dtype']}")
            continue
        q = t["quantization"]
        quant = (f"  scales {q['scales']} zero points {q['zero_points']}" if all_scales and q
                 else ("  " + describe_quantization(q) if q else ""))
        click.echo(f"  {t['index']:>3} {t['name'][-48:]:<48} {str(t['shape']):<14} {t['dtype']:<8}{quant}")

if __name__ == "__main__":
    main()
