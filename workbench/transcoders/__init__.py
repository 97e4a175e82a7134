"""Transcoders: sparse, wide replacements of an MLP sublayer, trained, evaluated, spliced in, traced."""
