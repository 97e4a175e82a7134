"""Capture probes and the capture loop (installed as `workbench.probes`; see the capture issue)."""
