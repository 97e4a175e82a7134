"""Triton kernels, each beside its torch reference and a dispatcher (installed as `workbench.kernels`)."""
