"""SavedModels in TF Serving's layout (signatures, warmup, checks), TFLite and model cards.

May import: every floor below (config, data, models, training, evaluation).
"""
