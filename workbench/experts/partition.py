"""Split a dense MLP's neurons into E equal groups ("experts"), for MoEfication (docs/methods.md#moefication).

Two methods, as in MoEfication (Zhang et al. 2022):
- `kmeans`: balanced k-means on the neurons' input weight vectors (W_in rows; [W_gate; W_up] for gated
  MLPs), normalised to unit length.
- `coactivation`: clustering of the co-activation graph. MoEfication partitions it with METIS; we take a
  spectral embedding of the graph (cosine of co-firing counts, top-E eigenvectors of the normalised
  affinity) and run the same balanced k-means on it (ours: no METIS dependency).
- `random`: a seeded random balanced split, the chance baseline for both.
Group sizes differ by at most one neuron.
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.models import ModelHandle


def group_capacities(n: int, n_groups: int) -> np.ndarray:
    return np.array([n // n_groups + (g < n % n_groups) for g in range(n_groups)])


def balanced_assignment(distances: np.ndarray, capacities: np.ndarray) -> np.ndarray:
    """Greedy: take (point, group) pairs from the closest; a point joins a group while it has room."""
    n, _ = distances.shape
    labels = np.full(n, -1)
    room = capacities.copy()
    for flat in np.argsort(distances, axis=None, kind="stable"):
        point, group = divmod(int(flat), distances.shape[1])
        if labels[point] < 0 and room[group] > 0:
            labels[point], room[group] = group, room[group] - 1
            n -= 1
            if n == 0:
                break
    return labels


def balanced_kmeans(x: torch.Tensor, n_groups: int, iters: int = 30, seed: int = 0) -> torch.Tensor:
    """Labels [n] of k-means with equal-size clusters (k-means++ start, greedy balanced assignment)."""
    data = x.double().cpu().numpy()
    n = len(data)
    if n_groups > n:
        raise ValueError(f"cannot split {n} neurons into {n_groups} groups")
    rng = np.random.default_rng(seed)
    centres = [data[rng.integers(n)]]
    d2 = ((data - centres[0]) ** 2).sum(1)
    for _ in range(1, n_groups):  # k-means++: the next centre drawn with probability ∝ squared distance
        centres.append(data[rng.choice(n, p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(n)])
        d2 = np.minimum(d2, ((data - centres[-1]) ** 2).sum(1))
    centres = np.array(centres)
    capacities = group_capacities(n, n_groups)
    labels = np.full(n, -1)
    for _ in range(iters):
        distances = (data**2).sum(1)[:, None] - 2 * data @ centres.T + (centres**2).sum(1)[None]
        new = balanced_assignment(distances, capacities)
        if np.array_equal(new, labels):
            break
        labels = new
        centres = np.stack([data[labels == g].mean(0) for g in range(n_groups)])
    return torch.from_numpy(labels)


def input_vectors(handle: ModelHandle, layer: int) -> torch.Tensor:
    """Each neuron's input weights [d_mlp, d_in], unit-normalised: W_in columns, with W_gate's if gated."""
    mlp = handle.model.blocks[layer].mlp
    parts = [mlp.W_in.detach().float().T]
    if handle.facts.gated_mlp:
        parts.insert(0, mlp.W_gate.detach().float().T)
    vectors = torch.cat(parts, dim=1)
    return vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)


def kmeans_groups(handle: ModelHandle, layer: int, n_groups: int, seed: int = 0) -> torch.Tensor:
    return balanced_kmeans(input_vectors(handle, layer), n_groups, seed=seed)


def coactivation_groups(co_fired: torch.Tensor, n_groups: int, seed: int = 0) -> torch.Tensor:
    """Groups from co-firing counts [n, n] (diagonal = each neuron's firing count)."""
    c = co_fired.double()
    fired = c.diagonal().clamp_min(1.0)
    affinity = c / (fired.sqrt()[:, None] * fired.sqrt()[None, :])
    affinity.fill_diagonal_(0.0)
    degree = affinity.sum(1).clamp_min(1e-12)
    normalised = affinity / (degree.sqrt()[:, None] * degree.sqrt()[None, :])
    _, vectors = torch.linalg.eigh(normalised)
    embedding = vectors[:, -n_groups:]
    embedding = embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return balanced_kmeans(embedding, n_groups, seed=seed)


def random_groups(n: int, n_groups: int, seed: int = 0) -> torch.Tensor:
    labels = torch.repeat_interleave(torch.arange(n_groups), torch.from_numpy(group_capacities(n, n_groups)))
    return labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
