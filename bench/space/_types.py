"""Search-space objects: frozen dataclasses, and sampling through Optuna-style ``suggest_*`` calls.

Sampling takes any object with Optuna's ``suggest_int/float/categorical`` methods, so this module
imports neither Optuna nor TensorFlow; reading and validating a file is :mod:`bench.space._schema`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna  # noqa: F401 - type hints only

NORMALIZATIONS = ("none", "minmax", "symmetric", "standard", "per_pixel")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
ACTIVATIONS = ("relu", "elu", "selu", "gelu", "tanh", "swish")
LR_SCHEDULES = ("constant", "cosine", "linear")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "successive_halving", "none")
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}

# Defaults for model parameters a space file leaves out, each with its reason.
PARAM_DEFAULTS: dict[str, Any] = {
    "normalization": "minmax",  # /255 is what most tutorials do and trains well everywhere
    "n_layers": 2,  # the classic 300-100 network has two hidden layers
    "units": 128,  # the Keras beginner tutorial's width
    "activation": "relu",  # the seeds' activation; no search unless asked
    "dropout": 0.0,  # regularisation is opt-in
    "l2": 0.0,  # likewise
    "optimizer": "adam",  # robust to the learning rate, the seeds' most common choice
    "learning_rate": 1e-3,  # Adam's default
    "batch_size": 128,  # far faster per epoch than Keras' 32 on CPU, still generalises well
    "lr_schedule": "constant",  # decay is opt-in
}
PER_LAYER_OK = ("units", "dropout", "activation")
# train: fields that change which images a score is measured on (part of the study's hash)
SCORING_TRAIN_FIELDS = ("validation_size", "cv_folds")


@dataclass(frozen=True)
class IntParam:
    low: int
    high: int
    step: int = 1
    log: bool = False
    per_layer: bool = False


@dataclass(frozen=True)
class FloatParam:
    low: float
    high: float
    step: float | None = None
    log: bool = False
    per_layer: bool = False


@dataclass(frozen=True)
class CategoricalParam:
    choices: tuple
    per_layer: bool = False


@dataclass(frozen=True)
class FixedParam:
    value: Any  # a scalar, or a tuple with one value per layer
    per_layer: bool = False


Param = IntParam | FloatParam | CategoricalParam | FixedParam


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"
    seed: int | None = 0  # a seeded sampler makes a study repeatable
    multivariate: bool = True  # models interactions (lr x optimizer, width x dropout)
    n_startup_trials: int = 10  # random trials before TPE has enough history to model
    # The fraction of finished trials TPE models as "good" (at most 25 of them). None: Optuna's
    # own 10 %, which at 50 trials is the best 5, so one region found early can fill it.
    gamma: float | None = None


@dataclass(frozen=True)
class PrunerSpec:
    name: str = "median"
    n_startup_trials: int = 5  # a median needs a few finished curves to mean anything
    n_warmup_steps: int = 2  # first epochs are too noisy to judge a configuration
    min_resource: int = 2  # hyperband / successive halving: epochs before the first cut
    reduction_factor: int = 3  # keep the top third at each rung


@dataclass(frozen=True)
class TrainSpec:
    max_epochs: int = 30  # an upper bound; early stopping usually ends a trial well before
    patience: int = 5  # the seeds' EarlyStopping patience
    min_delta: float = 1e-3  # the seeds' min_delta on val_accuracy
    # EarlyStopping for decaying learning rates too (cosine, linear). Off: such a run trains to
    # its schedule's end, where the decay pays off; pruning still cuts the weak ones.
    early_stop_decaying: bool = False
    # K > 1: a run scores the best mean of K consecutive epochs' validation metric, and early
    # stopping and the kept weights follow that mean, not one epoch's value. On 5,000 validation
    # images one epoch's accuracy is noisy (±0.4 points), so the single best epoch of a bouncing
    # curve overstates it; a smoothed score ranks steady curves (decayed learning rates) fairly.
    smooth_epochs: int = 1
    # Early stopping may not end a run before this many epochs. With a successive-halving pruner
    # set it past the last rung: a run that stops itself before a rung is never judged there and
    # counts as completed, which the sampler ranks above every pruned run, however good.
    min_epochs: int = 0
    validation_size: int = 5000  # the seeds' validation split of Fashion-MNIST
    steps_per_execution: int = 32  # amortises Python/dispatch overhead, the main CPU cost
    jit_compile: bool | str = "auto"  # "auto": XLA where Keras supports it
    eval_batch_size: int = 2048  # evaluation has no gradients; big batches are cheapest
    cv_folds: int = 1  # K > 1: score a job as the mean over K stratified folds (K times the cost)


@dataclass(frozen=True)
class Space:
    path: str
    version: int
    metric: str
    direction: str
    sampler: SamplerSpec
    pruner: PrunerSpec
    train: TrainSpec
    params: dict[str, Param] = field(default_factory=dict)
    description: str = ""
    baselines: tuple[Baseline, ...] = ()
    # study.enqueue: configurations the first trials of a new study start from (Optuna's
    # enqueue_trial), as Optuna parameter names; the sampler takes over after them
    enqueue: tuple[dict, ...] = ()

    def with_overrides(self, *, max_epochs: int | None = None, seed: int | None = None) -> Space:
        """Return a copy with CLI overrides applied (``--max-epochs``, ``--seed``)."""
        space = self
        if max_epochs is not None:
            space = replace(space, train=replace(space.train, max_epochs=max_epochs))
        if seed is not None:
            space = replace(space, sampler=replace(space.sampler, seed=seed))
        return space

    @property
    def search_hash(self) -> str:
        """Digest of what defines the search and how it is scored; identifies a study's space.

        Params, metric and baselines, and the ``train:`` fields that decide which images a
        score is measured on (:data:`SCORING_TRAIN_FIELDS`): batches of one study scored on
        different validation splits would rank configurations by incomparable numbers. The
        epoch budget is left out: ``--max-epochs`` may differ between batches.
        """
        payload = {
            "metric": self.metric,
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "baselines": [b.payload() for b in self.baselines],
            "scoring": {k: getattr(self.train, k) for k in SCORING_TRAIN_FIELDS},
        }
        if self.train.smooth_epochs != 1:  # a smoothed score is another score (off: as before)
            payload["scoring"]["smooth_epochs"] = self.train.smooth_epochs
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def legacy_search_hash(self) -> str:
        """:attr:`search_hash` as bench computed it before the scoring fields were in it, so a
        study recorded then is recognised (and its record upgraded) instead of refused."""
        payload = {
            "metric": self.metric,
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "baselines": [b.payload() for b in self.baselines],
        }
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def searches(self) -> bool:
        """Whether any parameter is sampled (a baselines-only file searches nothing)."""
        return any(not isinstance(p, FixedParam) for p in self.params.values())

    def fixed_values(self) -> dict[str, Any]:
        """The parameters this space does not search, as logged values."""
        return {k: v.value for k, v in self.params.items() if isinstance(v, FixedParam)}


def _jsonable(p: Param) -> dict:
    d = {"kind": type(p).__name__}
    d.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in p.__dict__.items()})
    return d


@dataclass(frozen=True)
class Baseline:
    """A fixed configuration (e.g. a tutorial's network) run as one trial with its own settings."""

    name: str
    config: dict  # the complete model configuration, per-layer values as lists
    train: dict  # TrainSpec fields this configuration overrides (epochs, patience, ...)
    published_test_accuracy: float | None = None
    dataset: str | None = None  # run only on this dataset (None: any)
    description: str = ""

    def payload(self) -> dict:
        """What a trial slot carries so any worker can run this configuration."""
        return {
            "name": self.name,
            "config": self.config,
            "train": self.train,
            "published_test_accuracy": self.published_test_accuracy,
        }


# ---------------------------------------------------------------- sampling


def suggest(trial: optuna.trial.BaseTrial, space: Space) -> dict[str, Any]:
    """Sample one configuration; per-layer parameters become lists of ``n_layers`` values.

    Args:
        trial: The Optuna trial to sample from.
        space: The validated search space.

    Returns:
        The model configuration: every parameter in ``PARAM_DEFAULTS``, fixed ones included.
    """

    def draw(name: str, p: Param) -> Any:
        if isinstance(p, FixedParam):
            return p.value
        if isinstance(p, IntParam):
            return trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
        if isinstance(p, FloatParam):
            return trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
        return trial.suggest_categorical(name, list(p.choices))

    config: dict[str, Any] = {"n_layers": draw("n_layers", space.params["n_layers"])}
    n = config["n_layers"]
    for name, p in space.params.items():
        if name == "n_layers":
            continue
        if name in PER_LAYER_OK:
            if isinstance(p, FixedParam):
                config[name] = list(p.value) if p.per_layer else [p.value] * n
            elif p.per_layer:
                config[name] = [draw(f"{name}_{i}", p) for i in range(n)]
            else:
                config[name] = [draw(name, p)] * n
        else:
            config[name] = draw(name, p)
    return config


class _Fixed:
    """Optuna-style ``suggest_*`` calls answered from fixed parameter values."""

    def __init__(self, params: dict[str, Any]):
        self.params = params

    def suggest_int(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.params[name]

    suggest_float = suggest_categorical = suggest_int


def start_configs(space: Space) -> list[dict[str, Any]]:
    """The model configurations of the space's ``study.enqueue`` starts (hand-picked, not
    proposed by the sampler); a start that leaves a parameter to the sampler is left out."""
    out = []
    for params in space.enqueue:
        try:
            out.append(suggest(_Fixed(dict(params)), space))
        except KeyError:
            continue
    return out


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration with per-layer lists spread into ``name_i`` keys, for logging."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, (list, tuple)):
            flat.update({f"{key}_{i}": v for i, v in enumerate(value)})
        else:
            flat[key] = value
    return flat
