"""Searches over whole runs: ``kerasft tune`` (kerasft.search.tune, Optuna) and ``kerasft cv``
(kerasft.search.cv). Each trial or fold is an ordinary run folder, trained by
:meth:`kerasft.api.FineTuner.fit` as ``kerasft train`` does."""
