"""Determinism: one call seeds everything; DEVICE is the device of every stage."""
import os
import random

import numpy as np
import torch

# The whole flow runs on the CPU: the quantizer's results are defined (and
# checked bit for bit) for CPU float32 arithmetic, and the model is tiny.
DEVICE = torch.device("cpu")


def set_seed(seed=42):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:  # Catalyst keeps a global seed of its own for its loaders and runners.
        from catalyst.utils import set_global_seed
    except ImportError:
        return
    set_global_seed(seed)
