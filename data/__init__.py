"""Shipped data (installed as `workbench.data`): the two-domain corpus, its tokenizer and the demo models."""
