# geta developer tasks.  `make test` and `make demo` are all a new contributor needs.
#
# The venv is built once and rebuilt only when pyproject.toml changes (stamp file).
# TORCH_SPEC is installed in the same pip command as the package so that pip never
# resolves a different (e.g. 5 GB CUDA) torch wheel; override it for your platform:
#     make venv TORCH_SPEC='torch>=2.6'

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
PIP        := $(VENV)/bin/pip
STAMP      := $(VENV)/.stamp
# Two shared CPU cores on the reference machine: keep torch from spinning idle threads.
RUN_ENV    := OMP_WAIT_POLICY=PASSIVE

.PHONY: venv test test-slow test-gpu bench-gpu deploy-venv test-deploy demo lint format bench bench-qasso bench-memory bench-prepare bench-deploy bench-deploy-llm bench-compression zoo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install '$(TORCH_SPEC)' -e '.[dev]'
	touch $(STAMP)

test: venv
	$(RUN_ENV) $(PY) -m pytest

# Exit status 5 means "no tests collected" (no slow suite yet): not a failure.
test-slow: venv
	$(RUN_ENV) $(PY) -m pytest -m slow || test $$? -eq 5

# llama.cpp runs geta's GGUF files (tests marked `deploy`): the deploy extra adds llama-cpp-python,
# which pip compiles from source (a C/C++ compiler and CMake; about 14 minutes on 2 busy cores, once:
# pip keeps the built wheel in its cache). Also what `python -m bench.deploy --llm-only` needs.
DEPLOY_STAMP := $(VENV)/.stamp-deploy

$(DEPLOY_STAMP): $(STAMP)
	$(PIP) install '$(TORCH_SPEC)' -e '.[dev,deploy]'
	touch $(DEPLOY_STAMP)

deploy-venv: $(DEPLOY_STAMP)

test-deploy: $(DEPLOY_STAMP)
	$(RUN_ENV) $(PY) -m pytest -m deploy

# The tests that take the `device` fixture, on a CUDA GPU (they skip where there is none);
# `make test` runs the same tests on the CPU. bench/gpu.py: step ratios, memory and a short
# compression on the GPU (about 8 minutes).
test-gpu: venv
	$(RUN_ENV) $(PY) -m pytest -m "device and not ddp" --device cuda

bench-gpu: venv
	$(RUN_ENV) $(PY) -m bench.gpu

# The main job on the built-in default: residual CNN on scikit-learn's digits, dense baseline,
# GETA compression, report, plots, ONNX and packed exports in runs/demo.
demo: venv
	$(RUN_ENV) $(VENV)/bin/geta compress --overwrite --out runs/demo

lint: venv
	$(VENV)/bin/ruff check src tests examples bench
	$(VENV)/bin/ruff format --check src tests examples bench

format: venv
	$(VENV)/bin/ruff format src tests examples bench
	$(VENV)/bin/ruff check --fix src tests examples bench

bench-qasso: venv
	$(RUN_ENV) $(PY) -m bench.qasso_step

# Peak memory of float AdamW vs geta training on a 125 M-parameter Llama (CPU, a few minutes).
bench-memory: venv
	$(RUN_ENV) $(PY) -m bench.memory

bench-prepare: venv
	$(RUN_ENV) $(PY) -m bench.prepare_scale

# Dense vs converted latency (PyTorch eager, onnxruntime float and QDQ), ResNet-50 and BERT-Small;
# then the LLM section below if llama-cpp-python is installed.
bench-deploy: venv
	$(RUN_ENV) $(PY) -m bench.deploy

# A small Llama compressed and exported as GGUF against its float GGUF in llama.cpp (3 min here).
bench-deploy-llm: $(DEPLOY_STAMP)
	$(RUN_ENV) $(PY) -m bench.deploy --llm-only

# geta's front (6 BOPs budgets + its default) vs Torch-Pruning -> fine-tune -> QAT on digits,
# MNIST-1D, a noisier MNIST-1D and a small LM, 3 seeds, at most 40 min on the idle machine
# (docs/benchmarks.md and docs/compression_pareto.png).
bench-compression: venv
	$(RUN_ENV) $(PY) -m bench.compression

# Every section of docs/benchmarks.md, one script each (each prints its headline last).
bench: bench-qasso bench-memory bench-prepare bench-deploy bench-compression

# Architecture coverage (docs/coverage.md): every torchvision classifier, a timm set and tiny
# Hugging Face families through prepare -> zero half -> convert. Its own venv, because
# torchvision and timm need a torch matched to them; ZOO_TORCH is installed in the same pip
# command as geta so that pip never resolves another torch. The timm tests run there too:
#     .venv-zoo/bin/python -m pytest tests/ops/test_ops_timm.py
# ZOO_JOBS models are checked at once, one process each (2 uses both cores of an idle machine).
ZOO_VENV   ?= .venv-zoo
ZOO_TORCH  ?= torch==2.14.1 torchvision==0.29.1
ZOO_PY     := $(ZOO_VENV)/bin/python
ZOO_STAMP  := $(ZOO_VENV)/.stamp
ZOO_JOBS   ?= 1

$(ZOO_STAMP): pyproject.toml
	test -x $(ZOO_PY) || $(PYTHON) -m venv $(ZOO_VENV)
	$(ZOO_VENV)/bin/pip install $(ZOO_TORCH) timm 'transformers>=5' pytest pytest-timeout -e .
	touch $(ZOO_STAMP)

zoo: $(ZOO_STAMP)
	$(RUN_ENV) $(ZOO_PY) -m bench.coverage --jobs $(ZOO_JOBS)

clean:
	rm -rf build dist runs out .pytest_cache .ruff_cache .hypothesis .mypy_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name '*.egg-info' -type d -exec rm -rf {} +
