import sys

from stepjepa import startup

# A training run, a sweep or a model-loading command starts by importing torch, transformers,
# MLflow or Prefect: the cyclic collector is off until they are imported (stepjepa/startup.py).
if startup.imports_heavily(sys.orig_argv):
    startup.pause()
