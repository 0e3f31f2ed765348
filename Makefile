# Two commands do all the set-up on a fresh machine:
#   make test   - virtualenv + real ComfyUI host (pinned in scripts/host.env), then the whole test-suite
#   make demo   - the offline demo workflow through a real ComfyUI server; images and the guidance plot
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 1

.PHONY: setup test test-core demo fig1 clean

setup:
	bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-core: setup
	$(PY) -m pytest tests/core $(PYTEST_ARGS)

demo: setup
	$(PY) scripts/demo.py $(DEMO_ARGS)

fig1: setup
	$(PY) benchmarks/fig1.py

clean:
	rm -rf .venv .host .cache demo_output
