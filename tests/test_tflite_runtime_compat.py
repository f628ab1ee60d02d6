"""The .tflite files load and score in tflite-runtime 2.14, the last standalone wheel (numpy<2, Python <= 3.11),
in a separate virtual environment cached between runs (it needs pip access the first time)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge_asd.convert.pipeline import convert_checkpoint
from edge_asd.core.features import extract
from edge_asd.edge.runtime.scorer import Scorer

SCRIPT = """
import json, sys, numpy as np
from tflite_runtime.interpreter import Interpreter
x = np.load(sys.argv[1])
out = {}
for path in sys.argv[2:]:
    it = Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    scores = []
    for v in x:
        it.set_tensor(i, v[None])
        it.invoke()
        scores.append(float(it.get_tensor(o).reshape(-1)[0]))
    out[path] = scores
print(json.dumps(out))
"""


def _python311() -> str | None:
    for exe in ("python3.11", "python3.10"):
        found = shutil.which(exe)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def tflite_runtime_python(request) -> Path:
    venv = Path(request.config.cache.mkdir("tflite-runtime-2.14")) / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        base = _python311()
        if base is None:
            pytest.skip("tflite-runtime 2.14 needs Python <= 3.11; none found")
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "tflite-runtime==2.14.0", "numpy<2"],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            shutil.rmtree(venv)
            pytest.skip(f"cannot install tflite-runtime 2.14: {proc.stderr.strip().splitlines()[-1:]}")
    return python


@pytest.mark.slow
def test_float_and_full_int8_run_in_tflite_runtime_2_14(tflite_runtime_python, checkpoint, int8_model, fan_audio,
                                                          tmp_path):
    # Not int8-dynamic: tflite-runtime 2.14 runs that file but computes its per-channel hybrid
    # FULLY_CONNECTED wrongly (scores ~1.4x LiteRT's), see docs/convert/README.md
    paths = [Path(int8_model[0])]
    for q in ("float32",):
        paths.append(tmp_path / f"{q}.tflite")
        convert_checkpoint(checkpoint, "tflite", paths[-1], quantization=q)
    scorers = [Scorer(p) for p in paths]
    x = scorers[0].info.standardize(extract(fan_audio, scorers[0].features))[:50]
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([str(tflite_runtime_python), "-c", SCRIPT, str(tmp_path / "x.npy"), *map(str, paths)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for path, scorer in zip(paths, scorers):
        # int8 kernels of the two runtimes may round an activation 1 LSB apart: ~0.2 % of a score
        rtol = 1e-4 if scorer.meta["quantization"]["mode"] == "float32" else 5e-3
        np.testing.assert_allclose(got[str(path)], scorer.backend.score(x), rtol=rtol, err_msg=path.name)
