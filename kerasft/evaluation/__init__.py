"""Metrics on a split, the reports written to the run folder, and plots.

May import: kerasft.errors, kerasft.io.
"""
