"""Step 2 of a run: reading, splitting and batching the user's data.

- :mod:`kerasft.data.sources`: ``load_data`` (the config's ``data`` section), CSV files and image
  folders.
- :mod:`kerasft.data.stream`: large CSV files read by byte offset and text hash
  (``data.stream``), no texts held.
- :mod:`kerasft.data.formats`: JSON Lines, Parquet and text folders, and the row checks every
  tabular text source shares (``TextRows``).
- :mod:`kerasft.data.datasets`: tfds and the user's ``tf.data`` datasets (``from_datasets``).
- :mod:`kerasft.data.arrays`: in-memory arrays (``from_arrays``).
- :mod:`kerasft.data.splits`: the label vocabulary, the stratified splits, the report.
- :mod:`kerasft.data.folds`: stratified, seeded cross-validation folds (``kerasft cv``).
- :mod:`kerasft.data.class_weights`: the class weights of ``data.class_weight``.
- :mod:`kerasft.data.targets`: regression targets, and the rule that picks regression when
  ``head.task`` is unset.
- :mod:`kerasft.data.pipeline`: a split -> the batched, preprocessed dataset ``model.fit`` reads.

May import: kerasft.config, kerasft.errors, kerasft.io.
"""
