"""Experiment tracking: the one place the library reaches MLflow (split by job next)."""

from stepjepa.tracking.run import *  # noqa: F403
from stepjepa.tracking.run import _experiment_id  # noqa: F401
