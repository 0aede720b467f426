"""Backbones (keras.applications, KerasHub), the heads put on them and model-only weights.

May import: kerasft.config, kerasft.errors, kerasft.io.
"""
