"""Training: the strategy (choice, creation, multi-worker workarounds), batches and sharding under
it, the run folder, stages (freeze/unfreeze, optimizers, per-variable learning rates, the LR
finder), mixed precision, callbacks, checkpoints and the fit loop.

May import: kerasft.config, kerasft.errors, kerasft.io, kerasft.data, kerasft.models.
"""
