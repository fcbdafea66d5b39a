"""Loading a logged or registered model for inference, refusing what would unpickle code.

Without ``trust_model``, only what bench logs loads: a Keras-flavour model saved as one plain
``.keras`` file. The model's folder is downloaded, its ``MLmodel`` read, and the file its keras
flavour names (``data:``, a relative path) must lie inside that folder; it is loaded with
``keras.saving.load_model(..., safe_mode=True)``, so only its config is read and no Python code
or pickle runs. ``mlflow.keras.load_model`` is not used then: with ``save_exported_model: true``
it calls ``tf.saved_model.load`` (a TensorFlow graph, not Keras' safe mode), and it joins the
``data:`` field to the folder unchecked (an absolute or ``../`` path points it anywhere). Any
other flavour, or an exported Keras model, loads through MLflow (``mlflow.pyfunc`` unpickles
Python objects from the store and so runs code whoever logged the model chose); that needs
``trust_model``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bench.errors import BenchError, redact
from bench.tracking._client import _limit_http_retries, mlflow


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

    info = mlflow.models.get_model_info(model_uri)
    schema = info.signature.inputs if info.signature is not None else None
    shape = (
        tuple(schema.inputs[0].shape) if schema is not None and schema.is_tensor_spec() else None
    )
    if "keras" in info.flavors and not trust_model:
        from bench.training.keras_file import load_keras_file

        with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
            folder = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
            model = load_keras_file(str(keras_file(folder, model_uri)))
        return LoadedModel(_KerasModel(model), shape)
    if "keras" in info.flavors:
        return LoadedModel(_KerasModel(mlflow.keras.load_model(model_uri)), shape)
    if not trust_model:
        flavors = ", ".join(sorted(info.flavors)) or "no known"
        raise BenchError(
            f"--model {redact(model_uri)}: a model of flavour(s) {flavors}, not keras; loading "
            "it would unpickle code from the store; pass --trust-model if you trust its author"
        )
    return LoadedModel(mlflow.pyfunc.load_model(model_uri), shape)


def keras_file(folder: str | Path, model_uri: str = "the model") -> Path:
    """The plain ``.keras`` file a downloaded keras-flavour model folder holds, checked.

    Mirrors where ``mlflow.keras`` looks (``<data>/model.keras`` for a folder, else
    ``<data>.keras``) but refuses what it would follow blindly.

    Raises:
        BenchError: an exported model (``save_exported_model``), a ``data:`` path that is
            absolute or climbs out of the folder, or a file that resolves outside it (a link).
    """

    root = Path(folder).resolve()
    flavor = mlflow.models.Model.load(str(root / "MLmodel")).flavors.get("keras") or {}
    shown = redact(model_uri)
    hint = "load it only if you trust its author: pass --trust-model"
    if flavor.get("save_exported_model"):
        raise BenchError(
            f"--model {shown}: an exported Keras model (a TensorFlow SavedModel, not a .keras "
            f"file): loading it runs its TensorFlow graph outside Keras' safe mode; {hint}"
        )
    data = flavor.get("data", "model")
    rel = PurePosixPath(str(data).replace("\\", "/"))
    if not isinstance(data, str) or not data or rel.is_absolute() or ".." in rel.parts:
        raise BenchError(
            f"--model {shown}: its MLmodel names the Keras file {data!r}, outside the model's "
            f"folder; {hint}"
        )
    path = root / rel
    path = path / "model.keras" if path.is_dir() else path.with_name(path.name + ".keras")
    resolved = path.resolve()
    if not resolved.is_relative_to(root) or not resolved.is_file():
        raise BenchError(
            f"--model {shown}: its Keras file {data!r} is not a plain file inside the model's "
            f"folder; {hint}"
        )
    return resolved


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

    client = mlflow.MlflowClient(tracking_uri)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return dict(client.get_model_version_by_alias(name, alias).tags)
    return dict(client.get_model_version(name, version).tags)
