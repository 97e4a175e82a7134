"""Interpretability and sparsity workbench for dense and mixture-of-experts transformer language models.

Start with `workbench.models.load_model`, `workbench.corpus.windows_for` and `workbench.evaluate.evaluate`;
the README has a tour.
"""

__version__ = "0.1.0"
