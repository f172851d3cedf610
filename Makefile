# The whole flow on a plain machine: `make pipeline` (set-up + every stage), `make test`.
# Inside the Vitis AI docker, run the stage commands below directly with PY=python.
PYTHON ?= python3
VENV   := .venv
PY     ?= $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: pipeline test install data train evaluate

pipeline: install data train evaluate

# pip<24.1: newer pip refuses catalyst 22.4's metadata. torch==2.13.0 is the CPU wheel
# (any other version pulls a CUDA build of several GB). protobuf 3.20.3, the docker's,
# goes into a side folder for the test that the .xmodel code runs on it too.
$(STAMP): requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet 'pip<24.1'
	$(VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt -r requirements-test.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps --target $(VENV)/protobuf-3.20.3 protobuf==3.20.3
	touch $@

install: $(STAMP)

test: install
	$(PY) -m pytest -q tests

data: install
	$(PY) generate_data.py --n_samples 10000 --output_dir data --seed 42

train: install
	$(PY) run.py --data_dir data --lr 1e-1 --n_epochs 32 --batch_size 64 --train --input_size 2 --checkpoint_dir checkpoints

evaluate: install
	$(PY) run.py --data_dir data --evaluate --input_size 2 --model_name checkpoints/ffn_state_dict.pth
