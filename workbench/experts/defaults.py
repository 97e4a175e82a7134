"""The defaults of the experts analyses (`ExpertsSettings`, `MoefySettings`), stated once.

Torch-free, so that the `experts` and `moefy` commands read their help text from here without importing
the cores.
"""

from __future__ import annotations

LABELS = ("domain", "token_class", "position", "token")  # every label (experts/labels.py); experts' default
MOEFY_LABELS = ("domain", "token_class", "position")  # labels whose NMI with the learned routing is reported
MOEFY_METHODS = ("kmeans", "coactivation", "random")  # how neurons are grouped (experts/partition.py)
MOEFY_METHOD = "kmeans"
MOEFY_K = 2  # groups kept per token
MOEFY_TRAIN_TOKENS = 8192  # calibration tokens the routers (and the co-activation graph) are trained on
