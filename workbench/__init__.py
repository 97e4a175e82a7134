"""Interpretability and sparsity workbench for dense and mixture-of-experts transformer language models.

Start with `workbench.models.load_model`, `workbench.corpus.windows_for` and `workbench.evaluate.evaluate`;
the README has a tour. `workbench.load_run(path)` reads a finished run folder's results back.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load_run(path):
    """The result objects of the complete run folder at `path` (what its results.json holds, as the
    classes of their kinds), in order. A run that is running, failed or was interrupted raises a
    WorkbenchError that says so and what to do. Importing `workbench` stays cheap: the results code is
    imported on the first call."""
    from workbench.runs import read_run

    return read_run(path).results
