import gc
import sys

# A training process (`python -m stepjepa.train`, what every sweep run is) starts by importing
# torch, transformers, accelerate and MLflow: over a million objects that live as long as it
# does, which the cyclic collector walked again in each of its full collections (~20% of a
# tiny run's CPU). It is off until `stepjepa.launch.process_main` has them imported, then on
# again with them frozen. Importing stepjepa in any other way leaves the collector alone.
if sys.orig_argv[1:3] == ["-m", "stepjepa.train"]:
    gc.disable()
