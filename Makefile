# Two commands do all the set-up on a fresh machine:
#   make test   - virtualenv + the two pinned ComfyUI hosts (scripts/host.env), then the test-suite on both:
#                 everything on the main host (ComfyUI 0.33.0), the host and server tests on the floor (0.3.75);
#                 the host-free tests run once, in the main job but for CORE_ON_FLOOR.
#                 The two hosts' suites run side by side (TEST_JOBS=2; each is single-threaded torch, so on a
#                 2-core machine this halves the wall time); each one's output is printed when it finishes.
#                 TEST_JOBS=1 runs them one after the other.
#   make demo   - the offline demo workflow through a real ComfyUI server (main host); images and the guidance plot
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 1
# what the floor host runs: the in-process host tests and everything over HTTP and in the browser
FLOOR_TESTS ?= tests/host tests/e2e
# host-free tests that run in the floor job instead of the main one, so the two jobs take about as long (the main
# job has every other host-free test); they never import comfy, so the host they run beside does not matter
CORE_ON_FLOOR ?= tests/core/test_flow_fig1.py
TEST_JOBS ?= 2
# per-host pytest cache and test artefacts (screenshots), so the two suites never write the same file
host_opts = -o cache_dir=.pytest_cache/$(1)

.PHONY: setup test test-main test-floor test-core demo fig1 clean

setup:
	bash scripts/setup_env.sh

test: setup
	$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target test-main test-floor

test-main:
	@echo "== tests on the main host (DNG_HOST=main) =="
	DNG_HOST=main DNG_TEST_ARTIFACTS=$(CURDIR)/tests/artifacts/main $(PY) -m pytest $(call host_opts,main) \
		$(addprefix --ignore=,$(CORE_ON_FLOOR)) $(PYTEST_ARGS)

test-floor:
	@echo "== tests on the floor host (DNG_HOST=floor) =="
	DNG_HOST=floor DNG_TEST_ARTIFACTS=$(CURDIR)/tests/artifacts/floor $(PY) -m pytest $(call host_opts,floor) $(FLOOR_TESTS) \
		$(CORE_ON_FLOOR) $(PYTEST_ARGS)

test-core: setup
	$(PY) -m pytest tests/core $(PYTEST_ARGS)

demo: setup
	DNG_HOST=main $(PY) scripts/demo.py $(DEMO_ARGS)

fig1: setup
	$(PY) benchmarks/fig1.py

clean:
	rm -rf .venv .host .cache demo_output
