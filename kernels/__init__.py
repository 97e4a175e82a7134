"""Kernels that skip the work an edit removes, each beside its torch reference and a dispatcher.

Installed as `workbench.kernels`. Modules: `sparse_mlp` (kept neurons only), `masked_matmul` (N:M and
block-skipping pruned weights), `head_attention` (kept heads only), `moe_dispatch` (live expert
assignments only), `dispatch` (Triton or torch; WORKBENCH_DISABLE_TRITON=1 turns Triton off) and
`benchmark`. The Triton kernels live in the `_triton_*` modules, imported only when Triton runs.
"""
