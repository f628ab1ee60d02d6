"""Desktop trainer (PyTorch): the paper's autoencoders and the RE, SNP and BU losses.

Koizumi et al. 2019, "Batch Uniformization for Minimizing Maximum Anomaly Score of DNN-based Anomaly
Detection in Sounds", arXiv 1907.08338. Features come from ``edge_asd.core.features``, the same code
the device runs.

Modules, from the command down:

- ``cli``: ``edge-train``; parses options into ``run.TrainOptions`` and calls ``run.train_checkpoint``.
- ``run``: the whole job as a Python function (recordings -> split -> training -> checkpoint file).
- ``oof``: ``--oof-folds K``: K fold models, each scoring the clips it did not train on (out-of-fold scores).
- ``trainer``: the training loop; ``pipeline``: mini-batches prepared in a background thread;
  ``validation``: the validation split and pseudo-anomaly AUC; ``losses``, ``context_kde``: RE, SNP, BU;
  ``model``: the autoencoders; ``checkpoint``: the checkpoint file.
- ``data``, ``feature_cache``: training audio, normalization statistics, a disk cache of decoded audio.
- ``evaluate``, ``plots``: the float model's frame scores and training curves.
- ``experiment``, ``objective_report``, ``verification``, ``mixtures``, ``bootstrap``: the paper's
  experiments and their statistics.
"""
