"""Pair lists, image folders, preprocessing and synthetic data."""
