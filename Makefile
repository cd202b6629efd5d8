# vit22b_pax developer entry points. `make test` and `make train` create .venv
# from requirements.lock when it is missing or older than the lock file.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A Python 3.10 interpreter; empty: scripts/find_python310.sh finds one.
PYTHON310 ?=
# Where `make train` puts the embedded dataset and the job directory.
DATA_DIR ?= data/shapes
# Its few-shot variant (30 new classes), probed during training.
FEWSHOT_DIR ?= data/shapes_fewshot
JOB_DIR ?= runs/train_cpu
# VERBOSE=1: `make train` shows paxml's full log instead of a progress line.
VERBOSE ?= 0

.PHONY: test train venv lock clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@py="$(PYTHON310)"; [ -n "$$py" ] || py=$$(scripts/find_python310.sh) || exit 1; \
	  echo "creating $(VENV) with $$py"; \
	  rm -rf $(VENV) && "$$py" -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

test: $(STAMP)
	$(PY) -m pytest -q tests

# The main job: the embedded dataset and its few-shot variant (made if
# missing), ViTShapesCPU through the real paxml launcher (re-running resumes
# from the last checkpoint) with few-shot probes of the frozen features at
# every eval, one progress line on the terminal and paxml's log in
# $(JOB_DIR)/train.log (VERBOSE=1: the log on the terminal instead), then the
# run's summary, also written to $(JOB_DIR)/summary.json and
# $(JOB_DIR)/training.png.
train: $(STAMP)
	$(PY) -m vit22b_pax.tools.make_dataset shapes --out $(DATA_DIR)
	$(PY) -m vit22b_pax.tools.make_dataset shapes --variant fewshot \
	  --out $(FEWSHOT_DIR)
	$(PY) -m vit22b_pax.tools.train $(if $(filter-out 0,$(VERBOSE)),--verbose) \
	  --exp=vit22b_pax.experiments.ViTShapesCPU \
	  --fdl.DATA_DIR="'$(DATA_DIR)'" \
	  --fdl.FEWSHOT_DATASETS="('$(FEWSHOT_DIR)',)" \
	  --job_log_dir=$(JOB_DIR) --eval_on_test
	$(PY) -m vit22b_pax.tools.train_summary --job_log_dir=$(JOB_DIR) \
	  --data_dir=$(DATA_DIR)

# Re-resolves pyproject.toml's dependencies in a scratch venv and rewrites the
# lock file. Needs the package registry; review the diff before committing.
lock:
	@py="$(PYTHON310)"; [ -n "$$py" ] || py=$$(scripts/find_python310.sh) || exit 1; \
	  rm -rf .venv-lock && "$$py" -m venv .venv-lock && \
	  .venv-lock/bin/pip install --quiet -e '.[dev]' && \
	  { sed -n '1,3p' requirements.lock; \
	    .venv-lock/bin/pip freeze --exclude-editable | grep -v '^-e '; } \
	    > requirements.lock.new && mv requirements.lock.new requirements.lock; \
	  rm -rf .venv-lock

clean:
	rm -rf $(VENV)
