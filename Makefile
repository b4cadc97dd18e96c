# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv engine images lint typecheck check test demo bench soak fuzz clean test-swarm bench-swarm

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/pip install --quiet -e '.[all]' --group dev
	touch $(STAMP)

engine:
	bash docker/engine.sh
	bash docker/host-tools.sh

images: engine venv
	bash docker/build.sh

lint: venv
	$(BIN)/ruff format --check graceful examples tests bench
	$(BIN)/ruff check graceful examples tests bench

typecheck: venv
	$(BIN)/mypy

check: lint typecheck

test: check engine images
	$(BIN)/pytest $(PYTEST_ARGS)

demo: images
	$(BIN)/graceful harness run --image graceful-example-asgi --json build/demo-asgi.json
	$(BIN)/graceful harness run --image graceful-example-aiohttp --json build/demo-aiohttp.json
	$(BIN)/graceful harness run --image graceful-example-asgi --scenario rolling-restart \
		--json build/demo-rolling.json

bench: venv
	$(BIN)/python bench/run.py

soak: images
	$(BIN)/python bench/bench_soak.py --rounds 100

# Minutes of real Docker Swarm updates (controls, the stack file, Ctrl-C); make test runs one short roll.
test-swarm: images
	GRACEFUL_SWARM_LONG=1 $(BIN)/pytest -p no:randomly tests/test_swarm.py tests/test_swarm_long.py

# 10 consecutive Swarm rolls per balancer profile, beside plain uvicorn (about half an hour).
bench-swarm: images
	$(BIN)/python bench/bench_swarm.py

# The property tests with many more examples (minutes, not seconds); make test keeps them short.
fuzz: venv
	HYPOTHESIS_PROFILE=long $(BIN)/pytest -q -p no:randomly tests/test_state_hostile.py \
		tests/test_config.py tests/test_health.py tests/test_examples_hostile.py tests/test_budget.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
