# ganops: the two commands a fresh clone needs are `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export BENTOML_DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install demo serve bento browser prefect-server flows-serve train-flow style-flow test test-unit lint bench bench-gan clean clean-flow-runs clean-tracking

install: $(STAMP)

# Re-install only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The pipeline on the embedded digits set, offline; a second run with nothing changed trains nothing.
demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro
	$(BIN)/ganops summary

# Serve the MLflow champion on 127.0.0.1 (PORT=3000 by default); checks there is one first.
PORT ?= 3000
serve: $(STAMP)
	$(BIN)/ganops champion
	PATH="$(CURDIR)/$(BIN):$$PATH" bentoml serve serving.service:GanService --host 127.0.0.1 --port $(PORT)

# Prefect: a local server (UI at http://127.0.0.1:4200), the deployments served from this folder, runs.
# --port alone leaves the UI calling the API on 4200: Prefect 3.9 takes the UI's api_url from
# PREFECT_SERVER_UI_API_URL (else PREFECT_API_URL, else the default host and port).
PREFECT_PORT ?= 4200
prefect-server: $(STAMP)
	PREFECT_SERVER_UI_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api \
	  $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

flows-serve: $(STAMP)
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flows.serve

# make train-flow OVERRIDES='["gan.steps=500"]' [DATA_REV=v1]
OVERRIDES ?= []
train-flow: $(STAMP)
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(BIN)/prefect deployment run 'train-gan/local' \
	  --param overrides='$(OVERRIDES)' $(if $(DATA_REV),--param data_rev=$(DATA_REV)) --watch

style-flow: $(STAMP)
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(BIN)/prefect deployment run 'style-transfer/local' \
	  --param overrides='$(OVERRIDES)' --watch

# A Bento (BentoML's deployable archive) of the service; the champion is loaded at start, not baked in.
bento: $(STAMP)
	rm -rf dist && $(BIN)/python -m pip wheel --quiet --no-deps -w dist .
	$(BIN)/bentoml build -f serving/bentofile.yaml .

# Headless Chromium + its driver (Debian packages) for the gallery's browser test; installed when missing
# and we may (root + apt). Without them that one test is skipped with the reason.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "chromium not installed: the gallery browser test will be skipped"; }

# Lint + type check + the whole test suite (unit and e2e tiers); this is what .ci/run calls.
test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench flows serving
	$(BIN)/ruff format --check src tests bench flows serving
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

# the GAN stabiliser ablation on digits (~25 min on 2 cores); see BENCHMARKS.md for MNIST and small data
bench-gan: $(STAMP)
	$(BIN)/python bench/gan_ablation.py

# Rebuildable outputs only (stage outputs, plots, builds; `dvc repro` makes them again). Never the tracking
# store: every MLflow run, the registry and the champion live in mlflow.db + mlartifacts/ (see clean-tracking).
clean:
	rm -rf data/prepared models/gan models/classifier models/style data/style data/stylized data/stylized_sheet.png metrics dvc_plots dist

# Flow-run workspaces beyond the 20 newest (never a running one).
clean-flow-runs: $(STAMP)
	$(BIN)/ganops gc --keep 20

# Deletes every MLflow run, the model registry and the champion: asks first (CONFIRM=yes to skip the question).
clean-tracking:
	@[ "$(CONFIRM)" = yes ] || { printf 'delete mlflow.db and mlartifacts/ (every run, the registry, the champion)? [y/N] '; \
	  read a; [ "$$a" = y ] || { echo "kept"; exit 1; }; }
	rm -rf mlflow.db mlflow.db-wal mlflow.db-shm mlartifacts
