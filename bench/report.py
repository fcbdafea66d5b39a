"""``python -m bench.report``: a study's tables, plots and ``report.md``, from the Optuna storage.

Everything shown comes from the trials' user attributes (``bench.config``, ``bench.history``, ...)
and the study's (``bench.batch``, ``bench.confusion_matrix``, ``bench.finalized``), so a report
takes seconds and never imports TensorFlow. Only ``--finalize`` trains (see :mod:`bench.finalize`).
The files are also logged as artifacts of the study's parent MLflow run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import EXIT_OK, EXIT_USAGE, BenchError, redact
from bench.finalize import FINALIZED_ATTR, finalized_tables, parent_run

if TYPE_CHECKING:
    import optuna
    import pandas as pd

_FINISHED = ("COMPLETE", "PRUNED")


def build_parser() -> argparse.ArgumentParser:
    from bench.cli import Parser, positive_int

    p = Parser(prog="python -m bench.report",
                description="Tables, plots and report.md of a study; --finalize retrains the "
                            "top configurations with several seeds and registers the champion.")
    p.add_argument("--study-name", help="the study (default: the storage's only study)")
    p.add_argument("--storage", help="Optuna storage: journal file or database URL (default "
                                     "optuna-studies.log)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or "
                                          "sqlite:///mlflow.db)")
    p.add_argument("--out", help="output folder (default reports/<study>/)")
    p.add_argument("--top-k", type=positive_int, default=3,
                   help="trials listed first, plotted as learning curves and finalized (default 3)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    f = p.add_argument_group("--finalize (retrains: imports TensorFlow)")
    f.add_argument("--finalize", action="store_true",
                   help="retrain the top-k configurations with --seeds seeds each, score them on "
                        "the test set, register the best mean as the champion")
    f.add_argument("--seeds", type=positive_int, default=3,
                   help="seeds per configuration (default 3)")
    f.add_argument("--dataset", help="the study's dataset (default: the one its search used, as "
                                     "recorded in the study, else fashion-mnist)")
    f.add_argument("--data-dir", help="folder with the dataset's IDX files (default: the search's)")
    f.add_argument("--space", help="the study's search-space file (default: the search's, else "
                                   "search_spaces/mlp.yaml)")
    f.add_argument("--max-epochs", type=positive_int,
                   help="override train.max_epochs (default: what the search used, from its "
                        "parent run, else the space file's)")
    f.add_argument("--seed", type=int, help="the search's --seed, which picked the validation "
                                            "split (default: from its parent run, else 0)")
    f.add_argument("--model-name", help="registered model name (default: the search's, else "
                                        "<dataset>-mlp)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bench.logs import setup_logging

    setup_logging()  # also silences Optuna's ExperimentalWarning on every matplotlib plot
    try:
        return _run(args)
    except BenchError as exc:
        print(f"error: {redact(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; files written so far are kept", file=sys.stderr)
        return 130


def open_study(storage_url: str | None, name: str | None) -> optuna.Study:
    """Load ``name``, or the storage's only study (claim markers do not count).

    Raises:
        BenchError: no storage, no such study, or several studies and no ``name``.
    """
    import optuna

    from bench import study as st

    url = storage_url or st.DEFAULT_STORAGE
    if st.is_journal(url) and not Path(url).is_file():
        raise BenchError(f"--storage {redact(url)}: no such journal file; run bench.search first "
                         "or point --storage at the study's storage")
    storage = st.make_storage(url)
    names = sorted(n for n in optuna.get_all_study_names(storage) if st.CLAIM_SEP not in n)
    if name is None:
        if len(names) != 1:
            raise BenchError(f"--study-name is required: {redact(url)} holds {len(names)} studies "
                             f"({', '.join(names) or 'none'})")
        name = names[0]
    elif name not in names:
        raise BenchError(f"--study-name {name!r}: not in {redact(url)}; it holds "
                         f"{', '.join(names) or 'no study'}")
    return optuna.load_study(study_name=name, storage=storage)


def _run(args: argparse.Namespace) -> int:
    study = open_study(args.storage, args.study_name)
    from bench.tracking import resolve_uri

    uri = resolve_uri(args.tracking_uri)
    if args.finalize:
        from bench.finalize import options_from_args, run

        run(study, options_from_args(args, uri))
    out = Path(args.out or Path("reports") / study.study_name.replace(os.sep, "_"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    report = build(study, out, args.top_k)
    print(report.text)
    print(f"\nwrote {out / 'report.md'} and {len(report.images)} plot(s) to {out}/")
    if not args.no_mlflow:
        where = log_artifacts(study, uri, out, report.files)
        print(where, file=sys.stderr if where.startswith("not logged") else sys.stdout)
    return EXIT_OK


# ---------------------------------------------------------------- tables


def metric_name(study: optuna.Study) -> str:
    return "val_accuracy" if study.direction.name == "MAXIMIZE" else "val_loss"


def _fmt_list(values: Any, sep: str = "-") -> str:
    if isinstance(values, (list, tuple)):
        return sep.join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in values)
    return "" if values is None else str(values)


def trials_frame(study: optuna.Study, top_k: int) -> pd.DataFrame:
    """Every trial, one row each: the completed ones best first, then the rest by number."""
    import pandas as pd

    sign = -1 if study.direction.name == "MAXIMIZE" else 1
    rows = []
    for t in study.get_trials(deepcopy=False):
        c, a = t.user_attrs.get("bench.config") or {}, t.user_attrs
        rows.append({
            "trial": t.number, "state": t.state.name,
            "baseline": (a.get("bench.baseline") or {}).get("name", ""),
            "normalization": c.get("normalization", ""), "layers": c.get("n_layers"),
            "units": _fmt_list(c.get("units")), "dropout": _fmt_list(c.get("dropout")),
            "l2": c.get("l2"), "optimizer": c.get("optimizer", ""), "lr": c.get("learning_rate"),
            "schedule": c.get("lr_schedule", ""), "batch": c.get("batch_size"),
            metric_name(study): t.value, "epochs": a.get("bench.epochs"),
            "seconds": a.get("bench.train_seconds"), "note": str(a.get("bench.reason", ""))[:60],
        })
    frame = pd.DataFrame(rows, columns=None if rows else ["trial", "state", metric_name(study)])
    if frame.empty:
        return frame
    done = frame["state"] == "COMPLETE"
    frame["_key"] = [sign * v if d else math.inf
                     for v, d in zip(frame[metric_name(study)], done, strict=True)]
    frame = frame.sort_values(["_key", "trial"]).drop(columns="_key").reset_index(drop=True)
    frame.insert(0, "rank", [str(i + 1) if d and i < top_k else "" for i, d in
                             enumerate(frame["state"] == "COMPLETE")])
    return frame


def ablation(frame: pd.DataFrame, by: str, metric: str, maximize: bool) -> pd.DataFrame:
    """Best and median of the metric over completed trials, and trial counts, per value of ``by``.

    ``finished`` counts completed and pruned trials: a value whose trials were all pruned still
    gets a row (with no best), which is itself an answer.
    """
    import pandas as pd

    finished = frame[frame["state"].isin(_FINISHED) & frame[by].notna() & (frame[by] != "")]
    done = finished[finished["state"] == "COMPLETE"]
    stats = done.groupby(by)[metric].agg(best="max" if maximize else "min", median="median")
    table = pd.concat([stats, done.groupby(by)["trial"].count().rename("completed"),
                       finished.groupby(by)["trial"].count().rename("finished")], axis=1)
    table["completed"] = table["completed"].fillna(0).astype(int)
    table.index.name = by
    return table.sort_values("best", ascending=not maximize, na_position="last").reset_index()


def baselines_frame(study: optuna.Study) -> pd.DataFrame | None:
    """Published vs reproduced test accuracy of the baseline trials (None when there are none)."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        b = t.user_attrs.get("bench.baseline")
        if not b:
            continue
        pub, got = b.get("published_test_accuracy"), t.user_attrs.get("bench.test_accuracy")
        diff = got - pub if pub is not None and got is not None else None
        rows.append({"baseline": b.get("name"), "trial": t.number, "state": t.state.name,
                     "published": pub, "reproduced": got, "difference": diff,
                     "within_1pt": "" if diff is None else ("yes" if abs(diff) <= 0.01 else "no"),
                     metric_name(study): t.value, "epochs": t.user_attrs.get("bench.epochs")})
    return pd.DataFrame(rows) if rows else None


def _md(frame: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs the optional tabulate package)."""
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    head = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in frame.astype(object).itertuples(index=False)]
    return "\n".join(lines)


def _text(frame: pd.DataFrame) -> str:
    return frame.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")


# ---------------------------------------------------------------- the report


class Report:
    """What :func:`build` produced: printable text, markdown, and the files written."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, pd.DataFrame | str]] = []
        self.images: list[tuple[str, Path]] = []
        self.notes: list[str] = []
        self.files: list[Path] = []

    @property
    def text(self) -> str:
        parts = [f"== {title}\n{body if isinstance(body, str) else _text(body)}"
                 for title, body in self.sections]
        parts += [f"note: {n}" for n in self.notes]
        return "\n\n".join(parts)

    def markdown(self, study_name: str) -> str:
        parts = [f"# Benchmark report: {study_name}"]
        for title, body in self.sections:
            parts.append(f"## {title}\n\n{body if isinstance(body, str) else _md(body)}")
        if self.images:
            parts.append("## Plots\n\n" + "\n\n".join(f"### {t}\n\n![{t}]({p.name})"
                                                      for t, p in self.images))
        if self.notes:
            parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in self.notes))
        return "\n\n".join(parts) + "\n"


def build(study: optuna.Study, out: Path, top_k: int) -> Report:
    """Compute every table and plot of ``study``, write them and ``report.md`` into ``out``."""
    report = Report()
    metric, maximize = metric_name(study), study.direction.name == "MAXIMIZE"
    frame = trials_frame(study, top_k)
    counts = frame["state"].value_counts().to_dict() if not frame.empty else {}
    summary = f"study '{study.study_name}': {len(frame)} trials " + \
        ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    done = frame[frame["state"] == "COMPLETE"] if not frame.empty else frame
    if not done.empty:
        best = done.iloc[0]
        summary += f"; best {metric} {best[metric]:.4f} (trial {best['trial']})"
    report.sections.append(("Summary", summary + ". Ablations count every finished trial, "
                            "baseline rows included; the median is over completed ones."))
    report.sections.append((f"Trials (top {top_k} ranked first)", frame))
    if not done.empty:
        for by, label in (("normalization", "normalization"), ("optimizer", "optimizer"),
                          ("layers", "depth (hidden layers)")):
            report.sections.append((f"Ablation by {label}", ablation(frame, by, metric, maximize)))
    baselines = baselines_frame(study)
    if baselines is not None:
        report.sections.append(("Baselines: published vs reproduced test accuracy", baselines))
    record = study.user_attrs.get(FINALIZED_ATTR)
    if record:
        line, table = finalized_tables(record)
        report.sections.append(("Finalized champion", line))
        report.sections.append(("Finalized configurations (test accuracy over seeds)", table))
    from bench.results.plots import draw_plots

    images, notes = draw_plots(study, frame, out, top_k)
    report.images += images
    report.notes += notes
    md = out / "report.md"
    md.write_text(report.markdown(study.study_name), encoding="utf-8")
    report.files = [md] + [p for _, p in report.images]
    return report


def log_artifacts(study: optuna.Study, uri: str, out: Path, files: list[Path]) -> str:
    """Log the report files to the study's parent MLflow run; returns a line saying where."""
    parent, _, experiment, why = parent_run(study, uri)
    if parent is None:
        return f"not logged to MLflow: {why}"
    from bench.tracking import Tracker

    try:
        tracker = Tracker(uri, experiment)
        for path in files:
            tracker.log_artifact(parent, str(path), "report")
    except Exception as exc:  # noqa: BLE001 - the files on disk are the report; MLflow is a copy
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return f"not logged to MLflow ({redact(uri)}): {redact(first)}"
    return f"logged {len(files)} file(s) to MLflow run {parent} under report/ ({redact(uri)})"


def console() -> None:
    """Console-script entry point (``pip install`` puts it on PATH)."""
    from bench.cli import run

    run(main)


if __name__ == "__main__":
    console()
