"""Mixture-of-experts analyses: routing statistics, specialization, expert masking, MoEfication."""
