import stepjepa  # noqa: F401 - first: a `python -m pipelines...` process starts as stepjepa/startup.py says
