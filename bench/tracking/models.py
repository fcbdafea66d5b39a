"""Loading a logged or registered model for inference, refusing what would unpickle code.

A Keras-flavour model (what bench logs) loads through ``mlflow.keras.load_model``, which uses
Keras' safe mode: the ``.keras`` file's config is read, no Python code or pickle runs. Any other
flavour loads through ``mlflow.pyfunc``, which unpickles Python objects from the store and so runs
code that whoever logged the model chose; that needs ``trust_model``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bench.errors import BenchError, redact
from bench.tracking._client import _limit_http_retries


@dataclass
class LoadedModel:
    """A model behind ``predict(images)`` and the input shape its signature declares."""

    model: object
    input_shape: tuple[int, ...] | None  # the tensor signature's, e.g. (-1, 28, 28); None: none


class _KerasModel:
    """A Keras model loaded in Keras' safe mode, behind the pyfunc ``predict`` interface."""

    def __init__(self, model):
        self.model = model

    def predict(self, images):
        return self.model.predict(images, verbose=0)


def _use_store(tracking_uri: str) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    _limit_http_retries()  # one CLI call should not retry an unreachable server for minutes
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)


def load_checked_model(model_uri: str, tracking_uri: str, trust_model: bool = False) -> LoadedModel:
    """Load a model safely, or refuse (module docstring).

    Args:
        model_uri: An MLflow model URI (``models:/NAME@ALIAS``, ``runs:/ID/model``, ...).
        tracking_uri: The tracking store holding it.
        trust_model: Allow flavours other than keras, which load by unpickling.

    Raises:
        BenchError: the model is not a Keras model and ``trust_model`` is false. MLflow's own
            errors (unreachable store, unknown URI) pass through unchanged.
    """
    _use_store(tracking_uri)
    import mlflow
    from mlflow.models import get_model_info

    info = get_model_info(model_uri)
    schema = info.signature.inputs if info.signature is not None else None
    shape = (
        tuple(schema.inputs[0].shape) if schema is not None and schema.is_tensor_spec() else None
    )
    if "keras" in info.flavors:
        return LoadedModel(_KerasModel(mlflow.keras.load_model(model_uri)), shape)
    if not trust_model:
        flavors = ", ".join(sorted(info.flavors)) or "no known"
        raise BenchError(
            f"--model {redact(model_uri)}: a model of flavour(s) {flavors}, not keras; loading "
            "it would unpickle code from the store; pass --trust-model if you trust its author"
        )
    return LoadedModel(mlflow.pyfunc.load_model(model_uri), shape)


def version_tags(model_uri: str, tracking_uri: str) -> dict[str, str]:
    """Tags of the registered version a ``models:/NAME@ALIAS`` or ``models:/NAME/N`` URI names.

    Returns:
        The tags; empty for any other URI (a logged model id ``models:/m-...`` has none).
    """
    if not model_uri.startswith("models:/"):
        return {}
    ref = model_uri[len("models:/") :].strip("/")
    name, _, version = ref.rpartition("/")
    if "@" not in ref and not (name and version.isdigit()):
        return {}
    _use_store(tracking_uri)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return dict(client.get_model_version_by_alias(name, alias).tags)
    return dict(client.get_model_version(name, version).tags)
