import stepjepa  # noqa: F401 - first: a `python -m pipelines.sweep` process starts as stepjepa/__init__.py says
