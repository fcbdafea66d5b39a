"""Tracking: the only package that imports MLflow (runs, metrics, models, the registry)."""

from __future__ import annotations

from bench.tracking._client import (
    DEFAULT_TRACKING_URI,
    Tracker,
    artifact_root,
    check_uri,
    resolve_uri,
    ui_links,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "Tracker",
    "artifact_root",
    "check_uri",
    "resolve_uri",
    "ui_links",
]
