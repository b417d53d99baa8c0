"""Compatibility re-export for modules not yet moved to tests.support.train (remove after
the issue-14 merge: tests/test_mlflow_lineage.py still imports from here)."""

from tests.support.train import FAST_TRAIN, make_config, params_tree, write_params, write_tokenized  # noqa: F401
