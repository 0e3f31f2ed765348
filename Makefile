# Two commands do all the set-up on a fresh machine:
#   make test   - virtualenv + the two pinned ComfyUI hosts (scripts/host.env), then the test-suite on both:
#                 everything on the main host (ComfyUI 0.33.0), the host and server tests on the floor (0.3.75)
#   make demo   - the offline demo workflow through a real ComfyUI server (main host); images and the guidance plot
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 1
# what the floor host runs: the in-process host tests and everything over HTTP and in the browser
FLOOR_TESTS ?= tests/host tests/e2e

.PHONY: setup test test-main test-floor test-core demo fig1 clean

setup:
	bash scripts/setup_env.sh

test: setup
	$(MAKE) --no-print-directory test-main test-floor

test-main:
	@echo "== tests on the main host (DNG_HOST=main) =="
	DNG_HOST=main $(PY) -m pytest $(PYTEST_ARGS)

test-floor:
	@echo "== tests on the floor host (DNG_HOST=floor) =="
	DNG_HOST=floor $(PY) -m pytest $(FLOOR_TESTS) $(PYTEST_ARGS)

test-core: setup
	$(PY) -m pytest tests/core $(PYTEST_ARGS)

demo: setup
	DNG_HOST=main $(PY) scripts/demo.py $(DEMO_ARGS)

fig1: setup
	$(PY) benchmarks/fig1.py

clean:
	rm -rf .venv .host .cache demo_output
