# Two commands on a fresh machine: `make run` (the whole pipeline on the embedded default)
# and `make test`. Both create .venv and install the project into it first (idempotent).

PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# The official GSM8K files beside the project, when present; otherwise the hub is used.
SHARED_GSM8K := $(abspath $(CURDIR)/../shared/data/gsm8k)
ifneq ($(wildcard $(SHARED_GSM8K)/train.jsonl),)
export GSM8K_DIR ?= $(SHARED_GSM8K)
endif

# Offline-safe defaults (see docs/stack-notes.md#environment-for-an-offline-run); `make run HF_HUB_OFFLINE=0`
# lets a machine with a hub download models named in params.yaml.
export HF_HUB_OFFLINE ?= 1
export HF_HOME ?= $(CURDIR)/.cache/huggingface
export MLFLOW_DISABLE_TELEMETRY ?= true
# MLflow's server job runner: eight processes for GenAI jobs this project never submits
# (benchmarks/results/test-tiers.md).
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION ?= false
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export DVC_NO_ANALYTICS ?= 1
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PATH := $(BIN):$(PATH)

.PHONY: install run test test-unit test-e2e lint bench gpu-check clean mlflow-ui demo study

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and exactly: its CPU wheel is on local disk; other versions pull GBs of CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@
	@echo "Installed into $(VENV)/. For stepjepa, prefect, mlflow and dvc in your shell: source $(VENV)/bin/activate (or call $(VENV)/bin/stepjepa)"

install: $(STAMP)

# dvc repro runs what is out of date; --reconcile registers the champion in this MLflow
# store if it lacks it (a new store, run folders from `dvc pull`), training nothing.
run: install
	dvc repro
	python -m pipelines.sweep --reconcile
	@echo; echo "The sweep (metrics/sweep/table.md; dvc metrics show; MLflow: make mlflow-ui):"
	@cat metrics/sweep/table.md

# `make demo`: the pipeline on the generated arith task, as a DVC experiment in a temporary
# workspace (docs/sweeps.md). Sizes: benchmarks/results/arith-sizing.md (benchmarks/size_arith.py;
# tests/project/test_demo_params.py keeps them equal): two-step problems, packed layout, infonce loss.
DEMO_NAME := arith-demo-$(shell date -u +%Y%m%d-%H%M%S)
DEMO_STEPS ?= 360
DEMO_BATCH ?= 16
DEMO_LAMBDAS ?= [0.02,0.1]
DEMO_PROMPT ?= Solve step by step; answer in \boxed{}.
# The task, model, training and evaluation of every demo (and study) run:
DEMO_TASK := data.source=arith \
	data.arith.min_steps=2 data.arith.max_steps=2 data.arith.max_operand=5 data.arith.max_value=20 \
	tiny_model.vocab_size=1024 tiny_model.hidden_size=128 tiny_model.intermediate_size=256 \
	tiny_model.num_hidden_layers=3 tiny_model.max_position_embeddings=512 \
	train.max_steps=$(DEMO_STEPS) train.batch_size=$(DEMO_BATCH) train.epochs=10 \
	train.learning_rate=0.006 train.checkpoint_every=null \
	eval.limit=500 eval.max_new_tokens=80 eval.batch_size=100
DEMO_SEEDS ?= [0,1,2,3,4]
# More settings for a rerun, e.g. DEMO_EXTRA=++train.lm_loss_chunk=64 (++: a key params.yaml leaves out):
# weight-neutral, but the LM loss is summed in another order: the float noise of another machine.
DEMO_EXTRA ?=
DEMO_PARAMS ?= $(DEMO_TASK) \
	'sweep.ks=[1,2]' 'sweep.lambdas=$(DEMO_LAMBDAS)' 'sweep.seeds=$(DEMO_SEEDS)' sweep.max_concurrent=2 \
	sweep.loss=infonce sweep.layout=packed \
	sweep.experiment=step-jepa-arith sweep.registered_model_name=step-jepa-arith $(DEMO_EXTRA)

# Both end with `stepjepa compare` against the committed result (docs/results/NAME/verdicts.json):
# one line per config, "reproduced" or what changed; the target fails (exit 1) when any changed.
SWEEP_FILES := table.md summary.json verdicts.json heatmap.png loss_curves.png effects.png
define compare_with
	@if [ -f $(2)/verdicts.json ]; then stepjepa compare $(1) $(2); \
	else echo "$(2)/verdicts.json is not committed: nothing to compare with; to make this run the reference," \
	  "copy $(1)/summary.json and $(1)/verdicts.json there and commit them"; fi
endef

demo: install
	dvc exp run --temp -n $(DEMO_NAME) -S "++data.system_prompt='$(DEMO_PROMPT)'" $(addprefix -S ,$(DEMO_PARAMS))
	@ref=$$(git for-each-ref --format='%(objectname)' 'refs/exps/*/*/$(DEMO_NAME)'); \
	mkdir -p outputs/demo; \
	for f in $(SWEEP_FILES); do git show "$$ref:metrics/sweep/$$f" > outputs/demo/$$f; done; \
	echo; echo "arith demo $(DEMO_NAME) (experiment $$ref; table and plots in outputs/demo/):"; \
	cat outputs/demo/table.md
	$(call compare_with,outputs/demo,docs/results/arith)

# `make study`: the seed's ablation on arith, one factor at a time around the demo's best config,
# STUDY_SEEDS seeds each: 13 configs x 5 seeds = 65 runs, ~75 min on 2 cores, estimated
# (docs/sweeps.md#make-study says what it trains and how it was sized).
STUDY_NAME := arith-study-$(shell date -u +%Y%m%d-%H%M%S)
STUDY_SEEDS ?= [0,1,2,3,4]
STUDY_PARAMS ?= $(DEMO_TASK) \
	'sweep.ks=[1,0,2,3]' 'sweep.lambdas=[0.1,0.02,0.5]' 'sweep.seeds=$(STUDY_SEEDS)' sweep.max_concurrent=2 \
	sweep.loss=infonce sweep.layout=packed '++sweep.views=[steps,user_assistant]' ++sweep.design=one_at_a_time \
	'++sweep.axes.loss=[infonce,cosine,mse]' '++sweep.axes.layout=[packed,inline,two_pass]' \
	'++sweep.axes.target_grad=[true,false]' \
	sweep.experiment=step-jepa-arith-study sweep.registered_model_name=step-jepa-arith-study

study: install
	dvc exp run --temp -n $(STUDY_NAME) -S "++data.system_prompt='$(DEMO_PROMPT)'" $(addprefix -S ,$(STUDY_PARAMS))
	@ref=$$(git for-each-ref --format='%(objectname)' 'refs/exps/*/*/$(STUDY_NAME)'); \
	mkdir -p outputs/study; \
	for f in $(SWEEP_FILES); do git show "$$ref:metrics/sweep/$$f" > outputs/study/$$f; done; \
	git show "$$ref:params.yaml" > outputs/study/params.yaml; \
	echo; echo "arith study $(STUDY_NAME) (experiment $$ref; table and plots in outputs/study/):"; \
	cat outputs/study/table.md
	python -m pipelines.study_report --results outputs/study --out docs/results/study.md --name $(STUDY_NAME)
	$(call compare_with,outputs/study,docs/results/study)

# Tiers: tests/README.md. Three workers fill the e2e tests' waits on 2 cores; loadfile keeps
# a module on one worker (benchmarks/results/test-tiers.md).
TEST_WORKERS ?= 3
XDIST := --dist loadfile --no-loadscope-reorder
test: install
	pytest -q -n $(TEST_WORKERS) $(XDIST) --durations=25

test-unit: install
	pytest -q -n auto $(XDIST) -m "not e2e and not server and not cli" --durations=15

test-e2e: install
	pytest -q -n $(TEST_WORKERS) $(XDIST) -m "e2e or server or cli" --durations=25

# Every CPU benchmark at a small size, about 14 min on 2 cores and 11 GB of memory; tables in outputs/bench/, the
# recorded ones in benchmarks/RESULTS.md.
BENCH_OUT := outputs/bench
bench: install
	$(BIN)/pip install --quiet -e ".[bench]"
	dvc repro tokenize
	mkdir -p $(BENCH_OUT)
	python benchmarks/bench_data.py > $(BENCH_OUT)/data.txt && cat $(BENCH_OUT)/data.txt
	python benchmarks/bench_score.py > $(BENCH_OUT)/score.txt && cat $(BENCH_OUT)/score.txt
	python benchmarks/bench_step.py --batches 10 > $(BENCH_OUT)/step.txt && cat $(BENCH_OUT)/step.txt
	python benchmarks/bench_generation.py --repeats 2 > $(BENCH_OUT)/generation.txt && cat $(BENCH_OUT)/generation.txt
	python benchmarks/bench_trl.py --examples 128 > $(BENCH_OUT)/trl.txt && cat $(BENCH_OUT)/trl.txt
	python benchmarks/bench_cpu_lanes.py --runs 2 > $(BENCH_OUT)/cpu-lanes.txt && cat $(BENCH_OUT)/cpu-lanes.txt
	python benchmarks/bench_flex.py --repeats 3 > $(BENCH_OUT)/flex.txt && cat $(BENCH_OUT)/flex.txt
	python benchmarks/bench_lm_head.py > $(BENCH_OUT)/lm_head.txt && cat $(BENCH_OUT)/lm_head.txt
	python benchmarks/bench_real_shape.py --variants sft jepa_inline trl_sft --steps 2 > $(BENCH_OUT)/real_shape.txt \
		&& cat $(BENCH_OUT)/real_shape.txt

lint: install
	ruff check .
	ruff format --check .

# On a CUDA machine, one table in <= 10 min (docs/gpu-check.md); without CUDA one line, exit 0.
gpu-check: install
	$(BIN)/pip install --quiet -e ".[bench]"
	python benchmarks/gpu_check.py

# The MLflow UI of this project's store, on port 5001: the tracking server that docs/sweeps.md
# starts for the Prefect UI keeps 5000. With MLFLOW_TRACKING_URI naming a server (http...), that
# server already is the UI: nothing to start.
MLFLOW_UI_PORT ?= 5001
mlflow-ui: install
	@case "$(MLFLOW_TRACKING_URI)" in \
	  http://*|https://*) echo "MLflow UI: $(MLFLOW_TRACKING_URI) (the tracking server in use; nothing to start)";; \
	  *) echo "MLflow UI of $(MLFLOW_TRACKING_URI): http://127.0.0.1:$(MLFLOW_UI_PORT)"; \
	     exec mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port $(MLFLOW_UI_PORT);; \
	esac

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

.PHONY: vega plots

# vega, vega-lite and vega-embed from npm, once: `make plots` inlines them into the page.
VEGA_MODULES := .cache/vega/node_modules
$(VEGA_MODULES)/vega-embed/build/vega-embed.min.js:
	npm install --prefix .cache/vega --no-audit --no-fund --silent vega@5 vega-lite@5 vega-embed@6

vega: $(VEGA_MODULES)/vega-embed/build/vega-embed.min.js

# The `dvc plots show` page (dvc.yaml's plots, templates in .dvc/plots/), viewable offline.
plots: install vega
	python -m pipelines.plots_page --node-modules $(VEGA_MODULES) --out plots
