"""Reproducible builders for the shipped corpus, tokenizer and demo models (run once, results committed)."""
