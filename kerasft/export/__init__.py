"""SavedModels in TF Serving's layout (signatures, warmup records, the op check, the fresh-process
check), TFLite and model cards.

May import: every floor below (config, data, models, training, evaluation).
"""
