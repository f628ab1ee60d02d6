"""The two losses of Serial-OE (Kuroyanagi et al. 2022, sec. 2): L = L_machine + 10 L_product.

- L_machine: binary cross-entropy of "is this a normal clip of the target machine type?"; the logit is an affine
  function of ||e||^2 / E (a Linear(1, 1), so the squared norm of the embedding carries the decision).
- L_product: multi-label binary cross-entropy over the target type's machine IDs (one-hot targets for target
  clips, all-zero targets for other-type clips and everyday sounds).

With one machine ID, L_product's only class coincides with L_machine's positive class: no ID is told apart and
the method is plain binary outlier exposure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PRODUCT_WEIGHT = 10.0
"""Weight of L_product (the authors' configuration)."""


def machine_loss(logit: torch.Tensor, y_machine: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the batch; ``logit`` and ``y_machine`` (mixed labels in [0, 1]) have shape (n,)."""
    return F.binary_cross_entropy_with_logits(logit, y_machine)


def product_loss(logits: torch.Tensor, y_product: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the batch and the n_ids labels; shapes (n, n_ids)."""
    return F.binary_cross_entropy_with_logits(logits, y_product)


def total_loss(machine_logit: torch.Tensor, product_logits: torch.Tensor, y_machine: torch.Tensor,
               y_product: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_machine + 10 L_product, L_machine, L_product)."""
    lm, lp = machine_loss(machine_logit, y_machine), product_loss(product_logits, y_product)
    return lm + PRODUCT_WEIGHT * lp, lm, lp
