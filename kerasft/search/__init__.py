"""Searches over whole runs: ``kerasft tune`` (kerasft.search.tune, Optuna) and ``kerasft cv``
(kerasft.search.cv). Each trial or fold is an ordinary run folder, trained by
:meth:`kerasft.api.FineTuner.fit` as ``kerasft train`` does.

May import: the floors below the CLI
(kerasft.api for runs, kerasft.validate for the data-source check, kerasft.data for the folds,
kerasft.evaluation for the reports, kerasft.config, kerasft.errors, kerasft.io).
"""
