"""Determinism: one call seeds everything; DEVICE is the device of every stage,
THREADS the number of torch threads of every stage."""
import os
import random

import numpy as np
import torch

# The whole flow runs on the CPU: the quantizer's results are defined (and
# checked bit for bit) for CPU float32 arithmetic, and the model is tiny.
DEVICE = torch.device("cpu")

# One intra-op thread: the tensors of this model are so small that splitting an
# operation saves nothing, and where the cores are busy a second thread waits for
# one at every operation (benchmark.py on a shared 2-core machine: a calibration of
# 20000 rows of FFN(64) took 14x as long on 2 threads as on 1, 21x beside one more
# busy process; the training loop was no faster on 2). Set on import, so it holds
# for every stage and every module that imports DEVICE from here.
THREADS = 1
torch.set_num_threads(THREADS)


def set_seed(seed=42):
    # Catalyst's global seed (catalyst.utils.set_global_seed) is this same random,
    # numpy and torch seed; the training sets it through Catalyst (runner.py), so
    # the other stages need not import Catalyst.
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    _use_deterministic_algorithms()
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _use_deterministic_algorithms():
    # torch 2.x's use_deterministic_algorithms imports the inductor compiler (with
    # dynamo and sympy: 1 to 3 s, most of a stage's start-up) only to pass it the same
    # flag; nothing here is compiled, so the flag is set on torch's core alone.
    # torch 1.10 has the same core function.
    set_core_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_core_flag is None:
        torch.use_deterministic_algorithms(True)
    else:
        set_core_flag(True)
