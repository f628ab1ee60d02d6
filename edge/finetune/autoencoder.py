"""The BU trainer in numpy: the FCN autoencoder's forward and backward pass, the loss, AMSGrad.

On the device there is no torch. This module is the paper's training step written out by hand for the
one architecture the kit ships (Linear layers, ReLU after every layer except the last, as
``train/model.py``), so a Raspberry Pi can continue training from the shipped weights with numpy
alone. ``tests/test_finetune_ae.py`` checks its loss and gradients against ``train/losses.py`` and
``torch.autograd`` on the same weights and batch.

Shapes: ``layers`` is a list of ``(W, b)``, ``W`` (out, in) float32, ``b`` (out,) float32, as
``torch.nn.Linear`` stores them; ``x`` is (n, D) standardized context vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Layers = list[tuple[np.ndarray, np.ndarray]]


def forward(layers: Layers, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(reconstruction (n, D), the input of every layer), ReLU after all but the last layer."""
    h, inputs = x, []
    for i, (w, b) in enumerate(layers):
        inputs.append(h)
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h, inputs


def anomaly_score(layers: Layers, x: np.ndarray) -> np.ndarray:
    """A(x) = ||x - D(E(x))||_2^2 (Koizumi et al. 2019, eq. 5), (n, D) -> (n,) float32."""
    y, _ = forward(layers, x)
    return ((x - y) ** 2).sum(-1)


def kde_weights(x_u: np.ndarray, sigma: float, eps: float) -> np.ndarray:
    """w_i = 1 / (K(x_i) + eps), K the Gaussian KDE of eq. (15) on the mini-batch standardized per
    dimension (sec. 4.2.2); (M_u, D) -> (M_u,) float64. Same definition as ``train.losses.kde_weights``,
    in float32 as there (the M_u x M_u distance matrix is the costliest product of an update)."""
    x = x_u.astype(np.float32)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    sq = (x * x).sum(1)
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(dist2, 0.0)
    return 1.0 / (np.exp(-sigma * dist2).mean(1, dtype=np.float64) + eps)


def score_gradients(loss: str, a_u: np.ndarray, a_a: np.ndarray, w: np.ndarray | None, lam: float
                    ) -> tuple[float, np.ndarray, np.ndarray]:
    """(J, dJ/dA(x^(u)), dJ/dA(x^(a))) of J^RE (eq. 7), J^SNP (eqs. 9-10) or J^BU (eq. 16).

    J^BU = sum_i w_i A_i / sum_i w_i - (1/M_a) sum_j lambda tanh(A_j / lambda); the weights are
    constants (no gradient flows through the KDE, as in the torch trainer).
    """
    if loss == "bu":
        g_u = w / w.sum()
    else:
        g_u = np.full(len(a_u), 1.0 / len(a_u))
    j = float((g_u * a_u).sum())
    g_a = np.zeros(len(a_a))
    if loss != "re" and len(a_a):
        t = np.tanh(a_a / lam)
        j -= float((lam * t).mean())
        g_a = -(1.0 - t * t) / len(a_a)
    return j, g_u, g_a


def loss_and_grads(layers: Layers, x_u: np.ndarray, x_a: np.ndarray, loss: str, sigma: float, lam: float,
                   eps: float) -> tuple[float, list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """(J, [(dJ/dW, dJ/db) per layer], A(x^(u)), A(x^(a))) for one mini-batch, by backpropagation."""
    x = np.concatenate([x_u, x_a]).astype(np.float32)
    y, inputs = forward(layers, x)
    diff = x - y
    a = (diff * diff).sum(-1)
    a_u, a_a = a[:len(x_u)], a[len(x_u):]
    w = kde_weights(x_u, sigma, eps) if loss == "bu" else None
    j, g_u, g_a = score_gradients(loss, a_u.astype(np.float64), a_a.astype(np.float64), w, lam)
    g = np.concatenate([g_u, g_a]).astype(np.float32)
    dz = -2.0 * g[:, None] * diff  # dJ/dy, then dJ/dz of each layer going back
    grads = []
    for i in range(len(layers) - 1, -1, -1):
        w_i, _ = layers[i]
        h = inputs[i]
        grads.append((dz.T @ h, dz.sum(0)))
        if i:
            dz = (dz @ w_i) * (h > 0)  # h = relu(z) of the layer before
    return j, grads[::-1], a_u, a_a


@dataclass
class AMSGrad:
    """Adam with the AMSGrad max (Reddi et al. 2018; the paper's optimizer, sec. 4.2.2), as torch.optim.Adam
    with ``amsgrad=True``: the update is lr * m_hat / (sqrt(max v / (1 - beta2^t)) + eps)."""

    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    t: int = 0
    state: list | None = None

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        """Update ``params`` in place with ``grads`` (same shapes)."""
        if self.state is None:
            self.state = [(np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)) for p in params]
        self.t += 1
        c1, c2 = 1.0 - self.beta1 ** self.t, 1.0 - self.beta2 ** self.t
        for p, g, (m, v, vmax) in zip(params, grads, self.state):
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * g * g
            np.maximum(vmax, v, out=vmax)
            p -= (self.lr / c1) * m / (np.sqrt(vmax / c2) + self.eps)


def flat_params(layers: Layers) -> list[np.ndarray]:
    """The layers' arrays in one list [W0, b0, W1, b1, ...] (views, updated in place by AMSGrad)."""
    return [arr for pair in layers for arr in pair]
