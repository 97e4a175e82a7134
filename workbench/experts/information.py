"""Entropy and mutual information of count tables, in nats (docs/methods.md#specialization-against-labels).

Tables are joint counts (or weights) n[x, y]; rows and columns with no mass are allowed.
"""

from __future__ import annotations

import torch


def entropy(counts: torch.Tensor) -> float:
    """H(p) of the distribution p ∝ counts (any shape, summed over everything)."""
    p = counts.double().flatten()
    total = p.sum()
    if total <= 0:
        return 0.0
    p = p[p > 0] / total
    return float(-(p * p.log()).sum())


def mutual_information(joint: torch.Tensor) -> float:
    """I(X; Y) = H(X) + H(Y) − H(X, Y) of the joint counts [x, y]."""
    return max(0.0, entropy(joint.sum(1)) + entropy(joint.sum(0)) - entropy(joint))


def normalised_mutual_information(joint: torch.Tensor) -> float:
    """NMI = I(X; Y) / min(H(X), H(Y)); 0 when either side is constant."""
    h = min(entropy(joint.sum(1)), entropy(joint.sum(0)))
    return mutual_information(joint) / h if h > 0 else 0.0


def normalised_entropy(counts: torch.Tensor) -> float:
    """H(p) / log(n) over the n entries of `counts`: 1 when uniform, 0 when all mass is on one entry."""
    n = counts.numel()
    return entropy(counts) / float(torch.log(torch.tensor(float(n)))) if n > 1 else 1.0
