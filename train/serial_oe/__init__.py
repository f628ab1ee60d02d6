"""Serial outlier exposure (Kuroyanagi et al., EUSIPCO 2022; seed 003): a classifier trained to tell the normal
clips of one machine type (and their machine IDs) from other machine types and everyday sounds; its embedding's
inlier model (fitted on normal clips the network did not train on) gives the anomaly score.

Modules: :mod:`.data` (clips, negatives and the leakage rule, crops), :mod:`.network` (backbones, embedding),
:mod:`.losses` (L_machine, L_product), :mod:`.mixup`, :mod:`.trainer` (one network), :mod:`.inlier` (Mahalanobis /
GMM inlier models), :mod:`.fit` (cross-fitting, the checkpoint), :mod:`.compare` (the comparison hook).
docs/serial-oe.md describes the method and its deviations from the paper.
"""
