"""What an operator needs around a running TensorFlow Serving, for any SavedModel that follows the
kerasft export contract (TF Serving layout ``<base>/<name>/<version>/saved_model.pb``; signature
``serving_default`` with a 1-D string input ``text`` or an image input ``image``; image models also
``serving_bytes`` with a 1-D string input ``image_bytes``; outputs ``probabilities``, ``class_ids``
and ``labels``).

* :mod:`kerasft.serving.models_config`: the server config ``models.config`` (a text
  ``ModelServerConfig``), validated and written atomically.
* :mod:`kerasft.serving.requests`: row-format request builders for text, image bytes and pixels.
* :mod:`kerasft.serving.rest` (urllib only) and :mod:`kerasft.serving.grpc` (needs ``grpcio``):
  the clients.
* :mod:`kerasft.serving.client`: what ``kerasft predict --server`` and ``kerasft serve-config``
  do on top of them.

Writing and checking a version (signatures, warmup records, the op check) belongs to
:mod:`kerasft.export`. Nothing here imports kerasft's training code. TensorFlow and the TF Serving
protos are imported inside the functions that need them, so importing these modules stays cheap.

May import: kerasft.errors, kerasft.io, kerasft.export and the floors below them.
"""
