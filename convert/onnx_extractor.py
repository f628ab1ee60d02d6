"""The model file of a transfer-metric checkpoint trained on a user's own ONNX extractor
(``edge-train --extractor onnx:PATH[:OUTPUT]``): the user's graph with the kit's input reshape, pooling and the
Deep SVDD phi (centre folded in) appended as plain ONNX nodes, float32, run by onnxruntime on the device.

Graph: ``context_vectors`` (n, 6144) float32 -> Reshape (n, 1, 96, 64) -> the user's graph -> its output OUTPUT,
(n, C) or (n, C, H, W) -> GlobalAveragePool + Flatten -> ``(e - mean) / std`` -> MatMul W1^T -> LeakyRelu(0.1)
-> MatMul W2^T -> Add(-c) -> ``embedding`` (n, Z) = phi(e) - c; the ``centre`` head (c = 0) squares its norm.

Not offered, and why: int8 and TFLite. The kit's int8 files come from torch graphs (PT2E quantization through
litert-torch); a foreign ONNX graph is not rebuilt in torch (the kit does that for YAMNet's 14 known layers only),
and onnxruntime's static int8 of an unknown graph has no parity the kit has measured.
"""

from __future__ import annotations

import numpy as np

from edge_asd.convert.onnx_export import EMBEDDING_NAME, INPUT_NAME
from edge_asd.core.errors import EdgeAsdError

MIN_OPSET = 7
"""Reshape with a shape input (5), LeakyRelu, GlobalAveragePool and Flatten as used here."""


def _phi_arrays(phi) -> dict[str, np.ndarray]:
    first, last = phi.net[0], phi.net[-1]
    return {"mean": phi.mean.numpy(), "std": phi.std.numpy(), "w1": first.weight.detach().numpy().T,
            "w2": last.weight.detach().numpy().T, "b2": last.bias.detach().numpy()}


def onnx_model_bytes(ckpt: dict, meta: dict, phi) -> bytes:
    """The float32 .onnx (unsealed) of a checkpoint with ``extractor_onnx``; ``meta`` goes into metadata_props;
    ``phi``: the head with its centre folded in (:func:`edge_asd.convert.transfer_metric.folded_phi`).
    Raises EdgeAsdError for an extractor graph below opset 7 or whose names clash with the kit's."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(ckpt["extractor_onnx"])
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise EdgeAsdError(f"extractor ONNX opset {opset}: the kit appends its head with opset >= {MIN_OPSET} operators")
    inits = {i.name for i in g.initializer}
    (inp,) = [i for i in g.input if i.name not in inits]
    names = {n for node in g.node for n in (*node.input, *node.output)} | {i.name for i in g.input}
    if names & {INPUT_NAME, EMBEDDING_NAME} or any(n.startswith("edge_asd/") for n in names):
        raise EdgeAsdError(f"extractor ONNX: rename its tensors {INPUT_NAME!r}, {EMBEDDING_NAME!r} or 'edge_asd/...'")
    a = _phi_arrays(phi)
    k = "edge_asd/"
    consts = {k + "shape": np.array([-1, 1, 96, 64], np.int64), **{k + n: v.astype(np.float32) for n, v in a.items()}}
    feature = ckpt["extractor_output"]
    pooled = [helper.make_node("GlobalAveragePool", [feature], [k + "pooled4"]),
              helper.make_node("Flatten", [k + "pooled4"], [k + "e"], axis=1)] if ckpt["extractor_rank"] == 4 else \
             [helper.make_node("Flatten", [feature], [k + "e"], axis=1)]
    nodes = [helper.make_node("Reshape", [INPUT_NAME, k + "shape"], [inp.name]), *g.node, *pooled,
             helper.make_node("Sub", [k + "e", k + "mean"], [k + "centred"]),
             helper.make_node("Div", [k + "centred", k + "std"], [k + "standard"]),
             helper.make_node("MatMul", [k + "standard", k + "w1"], [k + "hidden"]),
             helper.make_node("LeakyRelu", [k + "hidden"], [k + "act"], alpha=0.1),
             helper.make_node("MatMul", [k + "act", k + "w2"], [k + "z"]),
             helper.make_node("Add", [k + "z", k + "b2"], [EMBEDDING_NAME])]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(numpy_helper.from_array(v, n) for n, v in consts.items())
    g.input.remove(inp)
    g.input.insert(0, helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", 96 * 64]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(EMBEDDING_NAME, TensorProto.FLOAT, ["n", len(a["b2"])]))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "edge_asd", json.dumps(meta, sort_keys=True)
    onnx.checker.check_model(model)
    return model.SerializeToString()
