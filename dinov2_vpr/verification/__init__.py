"""Pairwise loop-closure verification: scores of pair lists, metrics of the field, plots, answer files."""
