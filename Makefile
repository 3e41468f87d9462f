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

.PHONY: install demo serve bento browser postgres mlflow-server prefect-server flows-serve train-flow style-flow test test-unit lint bench bench-gan clean clean-flow-runs clean-tracking

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
	rm -rf dist && $(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w dist .
	$(BIN)/bentoml build -f serving/bentofile.yaml .

# Headless Chromium + its driver (Debian packages) for the gallery's browser test; installed when missing
# and we may (root + apt). Without them that one test is skipped with the reason.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "chromium not installed: the gallery browser test will be skipped"; }

# PostgreSQL 15 binaries (Debian's `postgresql`) for the shared tracking server and its e2e test; installed
# when missing and we may (root + apt). Only the binaries are used: no system service is started.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	    || echo "postgresql not installed: the tracking-server tests will be skipped"; }

# A shared MLflow tracking server: PostgreSQL backend store (a cluster in MLFLOW_SERVER_DIR, started with
# pg_ctl on PG_PORT, loopback only) and proxied artifacts (--artifacts-destination: a folder here; an
# s3://bucket/prefix for a team). Clients set only MLFLOW_TRACKING_URI=http://<host>:$(MLFLOW_PORT).
# MLFLOW_HOST=0.0.0.0 serves other machines (put it behind your auth proxy: MLflow has no auth of its own).
MLFLOW_PORT ?= 5000
MLFLOW_HOST ?= 127.0.0.1
PG_PORT ?= 5433
MLFLOW_SERVER_DIR ?= $(CURDIR)/.ganops/mlflow-server
MLFLOW_ARTIFACTS ?= $(MLFLOW_SERVER_DIR)/artifacts
PG_USER := $(if $(filter 0,$(shell id -u)),postgres,$(shell id -un))
PG_AS := $(if $(filter 0,$(shell id -u)),runuser -u postgres --,)
mlflow-server: $(STAMP) postgres
	@PGBIN=$$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1); D="$(MLFLOW_SERVER_DIR)"; \
	mkdir -p "$$D" && { [ -z "$(PG_AS)" ] || chown $(PG_USER) "$$D"; } && \
	{ [ -f "$$D/pg/PG_VERSION" ] || $(PG_AS) $$PGBIN/initdb -D "$$D/pg" -U $(PG_USER) --auth=trust -E UTF8 >/dev/null; } && \
	{ $(PG_AS) $$PGBIN/pg_ctl -D "$$D/pg" status >/dev/null || \
	  $(PG_AS) $$PGBIN/pg_ctl -D "$$D/pg" -w -l "$$D/pg.log" -o "-c listen_addresses=127.0.0.1 -p $(PG_PORT) -k $$D" start; } && \
	{ $(PG_AS) $$PGBIN/createdb -h 127.0.0.1 -p $(PG_PORT) -U $(PG_USER) mlflow 2>/dev/null || true; } && \
	echo "PostgreSQL on 127.0.0.1:$(PG_PORT) (stop: $(PG_AS) $$PGBIN/pg_ctl -D $$D/pg stop)"
	$(BIN)/mlflow server --backend-store-uri postgresql+psycopg2://$(PG_USER)@127.0.0.1:$(PG_PORT)/mlflow \
	  --artifacts-destination $(MLFLOW_ARTIFACTS) --host $(MLFLOW_HOST) --port $(MLFLOW_PORT)

# Lint + type check + the whole test suite (unit and e2e tiers); this is what .ci/run calls. The run's 25
# slowest test phases (--durations=25) also go to bench/results/test_durations.txt (tests/conftest.py writes
# it; a read-only folder is a warning): CI keeps files, not console output.
test: export GANOPS_TEST_DURATIONS = bench/results/test_durations.txt
test: $(STAMP) lint browser postgres
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
	rm -rf data/prepared models/gan models/classifier models/style data/stylized data/stylized_sheet.png metrics dvc_plots dist

# Flow-run workspaces beyond the 20 newest (never a running one).
clean-flow-runs: $(STAMP)
	$(BIN)/ganops gc --keep 20

# Deletes every MLflow run, the model registry and the champion: asks first (CONFIRM=yes to skip the question).
clean-tracking:
	@[ "$(CONFIRM)" = yes ] || { printf 'delete mlflow.db and mlartifacts/ (every run, the registry, the champion)? [y/N] '; \
	  read a; [ "$$a" = y ] || { echo "kept"; exit 1; }; }
	rm -rf mlflow.db mlflow.db-wal mlflow.db-shm mlartifacts
