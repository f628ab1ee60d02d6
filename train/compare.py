"""The methods of ``examples/compare_methods.py``, each behind one function with the comparison hook's signature.

Every method is called as::

    fit_score(*, data_dir, machine_type, machine_id, train_clips, test_clips, something_else_dir, seed,
              budget="short") -> np.ndarray   # (len(test_clips),) float64, higher = more anomalous

* ``rms``: the loudness reference, each test clip's RMS level (dBFS, :func:`clip_level_dbfs`); no training.
* ``re``, ``snp``, ``bu``: the kit's FCN autoencoder (fcn-small, koizumi2019 features) trained with
  reconstruction error (eq. 7), SNP (eq. 9) or batch uniformization (eq. 16) of Koizumi et al. 2019, as
  ``edge-train`` trains it (lambda D, pseudo-anomalies at ANR -30..10 dB).
* ``dcase2020``: the DCASE 2020 Task 2 baseline AE on its own features, trained with RE.
* ``serial-oe``, ``transfer-metric``: the hooks ``fit_score`` of :data:`HOOKS`' modules, imported only when
  asked for; ``transfer-metric/<name>``: that module's ``fit_score_<name>``. A module that cannot be
  imported makes its methods "not available" (:func:`resolve_methods`), not an error.

An autoencoder's clip score is the mean of its context-vector anomaly scores (eq. 5). ``budget``:
``short`` = edge-train's default (12 x 50 updates, lr 1e-3), ``smoke`` = 2 updates (tests).
"""

from __future__ import annotations

import importlib
import logging
from functools import partial
from pathlib import Path

import numpy as np

from edge_asd.core.errors import EdgeAsdError
from edge_asd.core.features import LogMel, logmel
from edge_asd.core.loudness import clip_level_dbfs
from edge_asd.core.presets import get_preset

log = logging.getLogger("edge_asd")

REFERENCE = "rms"
BUDGETS = {"smoke": {"epochs": 1, "batches_per_epoch": 2, "lr": 1e-3},
           "short": {"epochs": 12, "batches_per_epoch": 50, "lr": 1e-3}}  # = trainer.SCHEDULES["short"]
AE_METHODS = {"re": ("fcn-small", "re"), "snp": ("fcn-small", "snp"), "bu": ("fcn-small", "bu"),
              "dcase2020": ("dcase2020", "re")}
"""Method -> (arch, loss) of the kit's autoencoders (``edge-train --arch --loss``)."""
HOOKS = {"serial-oe": "edge_asd.train.serial_oe.compare", "transfer-metric": "edge_asd.train.transfer_metric.compare"}
"""Method family -> module whose ``fit_score`` (and ``fit_score_<name>`` comparators) it calls."""
ANR_TRAIN_DB = (-30.0, 10.0)
"""ANR range of the training pseudo-anomalies, dB (edge-train's default)."""

_AUDIO: dict[Path, np.ndarray] = {}
_FRAMES: dict[tuple[Path, str], np.ndarray] = {}


def audio(path: Path) -> np.ndarray:
    """The clip as mono float32 at 16 kHz (the rate of both presets), decoded once per process."""
    from edge_asd.firmware_io.audio_file import read_audio

    path = Path(path)
    if path not in _AUDIO:
        _AUDIO[path] = read_audio(path, 16000)
    return _AUDIO[path]


def frames(path: Path, preset: str) -> np.ndarray:
    """The clip's log-mel frames (T, M) float32 for ``preset``, computed once per process."""
    key = (Path(path), preset)
    if key not in _FRAMES:
        cfg = get_preset(preset)
        _FRAMES[key] = logmel(audio(path), cfg, LogMel(cfg))
    return _FRAMES[key]


def fit_score_rms(*, test_clips: list[Path], **_) -> np.ndarray:
    """The loudness reference: each test clip's RMS level, dBFS, (n,) float64 (nothing is trained)."""
    return np.array([clip_level_dbfs(audio(p)) for p in test_clips], np.float64)


def fit_score_ae(arch: str, loss: str, *, data_dir: Path, machine_type: str, machine_id: str, train_clips: list[Path],
                 test_clips: list[Path], something_else_dir: Path | None, seed: int, budget: str = "short",
                 device: str = "auto") -> np.ndarray:
    """Train the kit's autoencoder ``arch`` with ``loss`` on ``train_clips`` (trainer API, as edge-train) and
    return each test clip's mean context-vector anomaly score, (n,) float64.

    Raises:
        EdgeAsdError: unknown ``budget``.
    """
    from edge_asd.core.batches import BatchConfig
    from edge_asd.firmware_io.audio_file import audio_files
    from edge_asd.train.checkpoint import restore
    from edge_asd.train.data import band_statistics
    from edge_asd.train.experiment import ARCH_PRESET, frame_scorer
    from edge_asd.train.trainer import TrainConfig, resolve_device, train

    if budget not in BUDGETS:
        raise EdgeAsdError(f"unknown budget {budget!r}; choose {', '.join(BUDGETS)}")
    preset = ARCH_PRESET[arch]
    cfg = get_preset(preset)
    normals = [audio(p) for p in train_clips]
    mean, std = band_statistics(normals, cfg, [frames(p, preset) for p in train_clips])
    others = [audio(p) for p in audio_files(something_else_dir)] if something_else_dir else None
    tcfg = TrainConfig(machine_type=machine_type, machine_ids=[machine_id], preset=preset, arch=arch, loss=loss,
                       seed=seed, device=device, lam="D", batch=BatchConfig(anr_db=ANR_TRAIN_DB), **BUDGETS[budget])
    ckpt = train(tcfg, cfg, normals, others, mean, std, progress=False)
    dev = resolve_device(device)
    score = frame_scorer(restore(ckpt)[0].to(dev), mean, std, cfg, dev)
    return np.array([s.mean() for s in score([frames(p, preset) for p in test_clips])], np.float64)


def _hook(module_name: str, attr: str):
    """``module.attr``, or the reason it is not available (str)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        return f"not available ({module_name}: {e})"
    fn = getattr(module, attr, None)
    return fn if callable(fn) else f"not available ({module_name} has no {attr})"


def method_names(families: list[str]) -> list[str]:
    """``families`` with each hook family expanded to its module's comparators (``transfer-metric/<name>``
    for every ``fit_score_<name>`` not in the module's ``OPT_IN``; none when the module is missing)."""
    names = []
    for name in families:
        names.append(name)
        if name in HOOKS:
            try:
                module = importlib.import_module(HOOKS[name])
            except ImportError:
                continue
            opt_in = getattr(module, "OPT_IN", ())  # costly variants run only when named (serial-oe/efficientnet_lite0)
            names += [f"{name}/{a[len('fit_score_'):]}" for a in sorted(dir(module))
                      if a.startswith("fit_score_") and a[len("fit_score_"):] not in opt_in]
    return list(dict.fromkeys(names))


def resolve_methods(names: list[str], device: str = "auto") -> tuple[dict, dict[str, str]]:
    """({method: fit_score function}, {method: why it is not available}) for the methods ``names``
    (:func:`method_names` first to expand the hook families).

    Raises:
        EdgeAsdError: a name that is no method.
    """
    known = [REFERENCE, *AE_METHODS, *HOOKS]
    found, missing = {}, {}
    for name in names:
        family, _, comparator = name.partition("/")
        if name == REFERENCE:
            found[name] = fit_score_rms
        elif name in AE_METHODS:
            found[name] = partial(fit_score_ae, *AE_METHODS[name], device=device)
        elif family in HOOKS:
            fn = _hook(HOOKS[family], f"fit_score_{comparator}" if comparator else "fit_score")
            (missing if isinstance(fn, str) else found)[name] = fn
        else:
            raise EdgeAsdError(f"unknown method {name!r}; methods: {', '.join(known)} (and transfer-metric/<name>)")
    return found, missing


def few_shot_draws(machines: dict, n_train: int, draws: int, seed: int = 0) -> list[dict]:
    """``draws`` few-shot versions of ``machines`` ({(type, id): {"train", "test_normal", "test_anomaly"}}, as
    :func:`edge_asd.train.experiment.find_machines` returns): per draw and machine type one ID drawn among
    those with at least ``n_train`` normal training clips and anomalous test clips, with ``n_train`` of its
    training clips drawn without replacement (sorted); its test clips stay all of them.

    Raises:
        EdgeAsdError: no machine ID has ``n_train`` training clips and a labelled test set.
    """
    fit = {k: v for k, v in machines.items() if len(v["train"]) >= n_train and v["test_normal"] and v["test_anomaly"]}
    if not fit:
        raise EdgeAsdError(f"--few-shot {n_train}: no machine ID has {n_train} normal training clips and both kinds "
                           f"of test clips")
    out = []
    for draw in range(draws):
        rng = np.random.default_rng([seed, draw])
        chosen = {}
        for mtype in sorted({t for t, _ in fit}):
            ids = sorted(k for k in fit if k[0] == mtype)
            key = ids[int(rng.integers(len(ids)))]
            pick = sorted(int(i) for i in rng.choice(len(fit[key]["train"]), n_train, replace=False))
            chosen[key] = {**fit[key], "train": [fit[key]["train"][i] for i in pick]}
        out.append(chosen)
    return out
