"""Stages (freeze/unfreeze), optimizers, mixed precision, checkpoints and the fit loop.

May import: kerasft.config, kerasft.errors, kerasft.io, kerasft.data, kerasft.models.
"""
