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
# MLflow's server job runner (a Huey consumer per job type: eight Python processes) runs
# GenAI jobs (trace roll-ups, judges) this project never submits; it costs ~60 CPU-s in a
# server's first 40 s here (benchmarks/RESULTS.md, "Test tiers").
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION ?= false
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export DVC_NO_ANALYTICS ?= 1
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PATH := $(BIN):$(PATH)

.PHONY: install run test test-unit test-e2e bench gpu-check clean mlflow-ui demo study

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and exactly: its CPU wheel is on local disk; other versions pull GBs of CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@
	@echo "Installed into $(VENV)/. For stepjepa, prefect, mlflow and dvc in your shell: source $(VENV)/bin/activate (or call $(VENV)/bin/stepjepa)"

install: $(STAMP)

# dvc repro runs what is out of date (the sweep too when runs/sweep is missing); the
# reconcile step registers the champion in this MLflow store if it lacks it (a new store,
# run folders from `dvc pull`), training nothing.
run: install
	dvc repro
	python -m pipelines.sweep --reconcile
	@echo; echo "The sweep (metrics/sweep/table.md; dvc metrics show; MLflow: make mlflow-ui):"
	@cat metrics/sweep/table.md

# `make demo`: the same pipeline (DVC stages, the Prefect sweep, MLflow, the registry) on the
# generated arith task (stepjepa/tasks/arith.py), which the tiny model can learn on a CPU.
# It is a DVC experiment in a temporary workspace (.dvc/tmp/exps/standalone/), so make
# run's dvc.lock, metrics/ and runs/ stay as they are. The results are committed to the
# experiment's git ref refs/exps/../$(DEMO_NAME) (`dvc exp show`; outputs cached by DVC);
# its table and plots are copied to outputs/demo/. MLflow and Prefect state live at the
# absolute paths exported above (the temporary workspace is deleted after the run), under
# their own experiment and registered model, step-jepa-arith.
# Sizing (benchmarks/RESULTS.md, "Arith task sizing"; benchmarks/size_arith.py reproduces it):
# 2 seeds x (SFT + K in {1,2} x lambda in DEMO_LAMBDAS) = 10 runs of DEMO_STEPS steps of batch
# DEMO_BATCH on a 0.52M-parameter model. Two-step problems: three-step ones were not learnt
# in this budget (0.22 after 480 steps). Measured 2026-12-01 with one torch thread: SFT
# validation accuracy_strict 0.49 / 0.31 (seeds 0 / 1; the most common answer: 0.09); ~35
# CPU-s per SFT training run, ~42 per Step-JEPA run (packed), ~4 per evaluation of 500
# questions, plus ~20 s of process start-ups and MLflow per run: ~12 min in all, estimated.
# Step-JEPA trains with the infonce loss (cosine collapsed the views, with or without
# train.target_grad=false) and the packed layout (inline computes Step 2's LM loss with Step
# 2 isolated: every inline run, even at lambda 0.02, stayed at chance on this task).
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
DEMO_PARAMS ?= $(DEMO_TASK) \
	'sweep.ks=[1,2]' 'sweep.lambdas=$(DEMO_LAMBDAS)' 'sweep.seeds=[0,1]' \
	sweep.loss=infonce sweep.layout=packed \
	sweep.experiment=step-jepa-arith sweep.registered_model_name=step-jepa-arith

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

# `make study`: the seed's ablation on the arith task, one factor at a time around the demo's
# best config (K = 1, lambda 0.1, infonce, packed, Step-JEPA views, target gradient on), each
# level trained with STUDY_SEEDS seeds: K in {0,1,2,3}; lambda in {0.02,0.1,0.5}; loss infonce /
# cosine / mse; layout packed / inline / two_pass; the Step-JEPA pair against the original
# LLM-JEPA user/assistant pair; target gradient on / off. The demo's task, model and training
# (DEMO_TASK), as a DVC experiment like `make demo`; docs/results/study.md is written from it
# (pipelines/study_report.py), then compared with docs/results/study/verdicts.json.
# Size: 13 configs (SFT, the base, 3 K, 2 lambda, 1 view pair, 2 loss, 2 layout, 1 target
# gradient) x 5 seeds = 65 training runs. Not run yet; estimated from the demo's sizing above:
# ~35 CPU-s (SFT) to ~42 (Step-JEPA) of training, ~4 of validation evaluation and ~20 s of
# process start-ups and MLflow per run, one run at a time: 65 x ~65 s = ~70 min, plus the data
# stages and the test split read for the champion and SFT (10 evaluations), ~5 min: ~75 min on
# 2 CPU cores, under the 90-min budget. two_pass runs (10) may train slower (two forward
# passes); the demo itself measured ~45 s per run all in, which would give ~50 min. More seeds
# or steps do not fit: 6 seeds would be ~90 min by the same estimate.
STUDY_NAME := arith-study-$(shell date -u +%Y%m%d-%H%M%S)
STUDY_SEEDS ?= [0,1,2,3,4]
STUDY_PARAMS ?= $(DEMO_TASK) \
	'sweep.ks=[1,0,2,3]' 'sweep.lambdas=[0.1,0.02,0.5]' 'sweep.seeds=$(STUDY_SEEDS)' \
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

# Tiers (pyproject.toml's markers; tests/README.md): `test` is everything (what CI runs);
# `test-unit` has no subprocess, no server and no training beyond a few steps; `test-e2e` is
# the rest. All run on pytest-xdist workers: TEST_WORKERS for the tiers with servers and
# training (their tests wait on servers and processes a quarter of the time: a third worker
# kept both cores 83% busy, a fourth only added contention), every core for the unit tier. `--dist loadfile`
# keeps each module on one worker (several share one project among their tests, in order;
# `loadgroup` does not group under pytest 9); tests/conftest.py orders the longest first.
# --durations shows where the time goes.
TEST_WORKERS ?= 3
XDIST := --dist loadfile --no-loadscope-reorder
test: install
	pytest -q -n $(TEST_WORKERS) $(XDIST) --durations=25

test-unit: install
	pytest -q -n auto $(XDIST) -m "not e2e and not server and not cli" --durations=15

test-e2e: install
	pytest -q -n $(TEST_WORKERS) $(XDIST) -m "e2e or server or cli" --durations=25

bench: install
	$(BIN)/pip install --quiet -e ".[bench]"
	python benchmarks/bench_data.py

# `make gpu-check`: on a CUDA machine, one table in <= 10 min (a Qwen2.5-0.5B-shaped model in
# bf16 on GSM8K rows): step tokens/s and peak memory with sdpa and flex_attention (flex's
# losses and gradients checked against sdpa), TRL, generation, a two-config sweep, DDP over
# every visible GPU; written to benchmarks/results/gpu-check.md (docs/gpu-check.md). Without
# CUDA it prints one line and exits 0.
gpu-check: install
	$(BIN)/pip install --quiet -e ".[bench]"
	python benchmarks/gpu_check.py

mlflow-ui: install
	mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

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
