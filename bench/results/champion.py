"""What a registered model is, in words: the facts a user sees in the MLflow UI without hunting.

A champion is one configuration refit on all training images, the mean of several such refits'
probabilities, or (``--no-refit``) a search run's own model. From plain facts about its members
this module writes the registered version's one-sentence description, the markdown note of the
model's run (with links to the members' runs) and the ``member<i>.*`` params and tags that put
each member's configuration on that run. Plain Python: no MLflow, no Keras.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.space import flat_config


@dataclass(frozen=True)
class Member:
    """One configuration a registered model is made of.

    Attributes:
        source: The key of the job whose configuration was chosen (``search-0012``).
        config: Its model configuration.
        epochs: Epochs its model trained (a refit's fixed count, or the search run's own).
        run_id: The run that trained the model that is registered or averaged (the refit's; the
            search run's own without a refit); None when unknown.
        source_run_id: The run that scored the configuration, when it is another run.
        test_accuracy: That model's own test accuracy (reported, never used to choose).
        selection: What its validation score measures (``one search run``, ``mean over 3
            re-evaluation seeds``).
    """

    source: str
    config: dict[str, Any]
    epochs: int | None = None
    run_id: str | None = None
    source_run_id: str | None = None
    test_accuracy: float | None = None
    selection: str | None = None


def describe_config(config: dict[str, Any]) -> str:
    """A configuration in a few words: ``"standard, 3x256 relu, adam lr 0.0012"``.

    The choices a reader compares first: input scaling, layer widths, optimizer and learning
    rate (with its schedule unless constant). Dropout, L2 and the batch size are in the params.
    """
    units = [int(u) for u in config.get("units") or []]
    if units and len(set(units)) == 1:
        layers = f"{len(units)}x{units[0]}"
    else:
        layers = "-".join(map(str, units)) or "no hidden layer"
    activations = sorted(set(config.get("activation") or []))
    if activations:
        layers += " " + "/".join(activations)
    lr = config.get("learning_rate")
    optimizer = str(config.get("optimizer", "?"))
    if lr is not None:
        optimizer += f" lr {float(lr):.2g}"
    schedule = config.get("lr_schedule")
    if schedule and schedule != "constant":
        optimizer += f" {schedule}"
    return f"{config.get('normalization', '?')}, {layers}, {optimizer}"


def version_description(
    members: Sequence[Member],
    *,
    refit: bool,
    train_images: int,
    metric: str,
    score: float | None,
    test_accuracy: float | None,
    test_loss: float | None = None,
) -> str:
    """The registered version's description: how the model was made, in one sentence.

    Args:
        members: The configurations (one, or an ensemble's several).
        refit: Whether the models were refit on all training images.
        train_images: How many images a refit trained on.
        metric: The selection metric (``val_accuracy``, ``val_loss``).
        score: The selection score (an ensemble's: the members' mean).
        test_accuracy: The registered model's test accuracy.
        test_loss: Its test loss, said when the metric is a loss.

    Returns:
        E.g. ``"Mean of the probabilities of 2 configurations (search-0012: standard, 3x256
        relu, adam lr 0.0012; search-0031: ...) refit on all 55,000 training images for 27+33
        epochs; chosen by validation accuracy 0.9071 (the members' mean, each one search run);
        test accuracy 0.9062."``
    """
    epochs = "+".join(str(m.epochs) if m.epochs is not None else "?" for m in members)
    configs = "; ".join(f"{m.source}: {describe_config(m.config)}" for m in members)
    if len(members) > 1:
        made = f"Mean of the probabilities of {len(members)} configurations ({configs})"
    elif refit:
        made = f"{members[0].source} ({describe_config(members[0].config)})"
    else:
        made = f"{members[0].source}'s own model ({describe_config(members[0].config)})"
    if refit:
        made += f" refit on all {train_images:,} training images for {epochs} epochs"
    else:
        made += f", trained on the search's training split for {epochs} epochs"
    name = metric.removeprefix("val_").replace("_", " ")
    how = members[0].selection
    basis = ", ".join(
        x
        for x in (
            "the members' mean" if len(members) > 1 else None,
            (f"each {how}" if len(members) > 1 else how) if how else None,
        )
        if x
    )
    chosen = "chosen by validation " + name + (f" {score:.4f}" if score is not None else "")
    if basis:
        chosen += f" ({basis})"
    tested = []
    if metric.endswith("loss") and test_loss is not None:
        tested.append(f"test loss {test_loss:.4f}")
    if test_accuracy is not None:
        tested.append(f"test accuracy {test_accuracy:.4f}")
    return "; ".join([made, chosen, *tested]) + "."


def run_link(experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI, relative to the UI's own address (works in a run note)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def run_note(
    members: Sequence[Member],
    experiment_id: str,
    description: str,
    registered: str | None = None,
    here: str | None = None,
) -> str:
    """The markdown note of the registered model's run (MLflow shows it as the run's
    description): the sentence, then one line per member with links to its runs.

    Args:
        members: The configurations.
        experiment_id: The runs' experiment, for the links.
        description: :func:`version_description`'s sentence.
        registered: ``"digits-mlp version 3 (champion)"``-like words, when registered.
        here: The run the note is for: not linked to itself.
    """
    lines = [description, ""]
    if registered:
        lines += [f"Registered as {registered}.", ""]
    if len(members) > 1:
        lines.append("Members (params `member<i>.*` hold each configuration):")
    for i, m in enumerate(members):
        links = []
        refit = m.source_run_id is not None and m.source_run_id != m.run_id
        if m.run_id and m.run_id != here:
            label = "refit run" if refit else "run"
            links.append(f"[{label}]({run_link(experiment_id, m.run_id)})")
        if refit and m.source_run_id != here:
            links.append(f"[search run]({run_link(experiment_id, m.source_run_id)})")
        test = f", test accuracy alone {m.test_accuracy:.4f}" if m.test_accuracy is not None else ""
        prefix = f"- member {i}: " if len(members) > 1 else "- "
        lines.append(
            f"{prefix}{m.source} ({describe_config(m.config)}){test}"
            + (": " + ", ".join(links) if links else "")
        )
    return "\n".join(lines)


def member_params(members: Sequence[Member]) -> dict[str, Any]:
    """Each member's configuration as run params, prefixed: ``member0.normalization``, ..."""
    out: dict[str, Any] = {}
    for i, m in enumerate(members):
        out[f"member{i}.source"] = m.source
        out.update({f"member{i}.{k}": v for k, v in flat_config(m.config).items()})
        if m.epochs is not None:
            out[f"member{i}.refit_epochs"] = m.epochs
    return out


def member_tags(members: Sequence[Member]) -> dict[str, str]:
    """Each member's run ids as tags: ``member0.run`` (the model's) and ``member0.source_run``."""
    out: dict[str, str] = {}
    for i, m in enumerate(members):
        if m.run_id:
            out[f"member{i}.run"] = m.run_id
        if m.source_run_id:
            out[f"member{i}.source_run"] = m.source_run_id
    return out


def start_note(sources: Sequence[str], n_members: int) -> str:
    """The line that says a champion member came from the space's enqueued start."""
    which = ", ".join(sources)
    whole = "the champion" if len(sources) == n_members == 1 else (
        f"{len(sources)} of the champion's {n_members} members")  # fmt: skip
    return (
        f"note: {whole} ({which}) came from the space's study.enqueue start, a configuration "
        "chosen by hand, not one the search proposed; a space without it gets what the search "
        "finds alone"
    )
