"""Experiment-tracking benchmark harness for image-classifier MLPs.

Optuna samples the configuration, Keras trains it, MLflow records it. The package is split so
that nothing heavy loads on the fast paths: ``bench.space``, ``bench.data``, ``bench.report`` and
the ``--help`` of every CLI import neither TensorFlow nor MLflow.
"""

__version__ = "0.1.0"
