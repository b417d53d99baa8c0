import gc
import sys

# A training run (`python -m stepjepa.training.train`) and a sweep (`python -m pipelines.sweep`) begin
# by importing torch, transformers, MLflow or Prefect: over a million objects that live as
# long as the process, which the cyclic collector walked again in each of its full
# collections (~20% of a tiny run's CPU). It is off until `stepjepa.training.launch.process_main`
# has them imported, then on again with them frozen. Importing stepjepa in any other way
# leaves the collector alone.
ENTRY_POINTS = ("stepjepa.training.train", "pipelines.sweep")
if sys.orig_argv[1:2] == ["-m"] and sys.orig_argv[2:3] and sys.orig_argv[2] in ENTRY_POINTS:
    gc.disable()
