# stethoscope: the two first commands of the README.
#   make demo   creates .venv, installs the pinned dependencies and runs the whole pipeline on the real clips
#   make test   creates the same .venv, installs Debian's chromium if missing (for tests/test_web.py) and runs the
#               test suite (.ci/run calls exactly this)
#   make serve  serves ./registry on 127.0.0.1:8000 with a Ray that listens on 127.0.0.1 only
PYTHON    ?= python3
VENV      ?= .venv
DATA_ROOT ?= ../shared/data/dcase2020_task2_dev_sample
MACHINE   ?= slider
IDS       ?= 00
EPOCHS    ?= 30
RUNS      ?= runs
STORE     ?= store
PYTEST_ARGS ?=

# Ray's token authentication stays at Ray's default (on for a new local cluster) everywhere but in the tests,
# whose embedded Ray listens on 127.0.0.1 only.
test: export RAY_AUTH_MODE := disabled
# tests/test_web.py fails, rather than skips, when the browser is missing
test: export STETHOSCOPE_REQUIRE_BROWSER := 1

.PHONY: venv browser demo test serve clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt constraints.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt -c constraints.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: venv
	$(VENV)/bin/python jobs/pipeline.py --data-root $(DATA_ROOT) --machine-type $(MACHINE) --ids $(IDS) \
		--method autoencoder --epochs $(EPOCHS) --runs $(RUNS) --store $(STORE)

# Debian's chromium for the browser tests (Playwright drives it; it never downloads a browser of its own).
browser:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
		else echo "chromium is missing and installing it needs root or sudo: apt-get install chromium" >&2; exit 1; fi; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends chromium; }

test: venv browser
	$(VENV)/bin/python -m pytest -q --durations=25 $(PYTEST_ARGS) tests

serve: venv
	$(VENV)/bin/python -m stethoscope.runtime $(VENV)/bin/serve run --address local serve/config.yaml

clean:
	rm -rf $(RUNS) $(STORE) .pytest_cache
