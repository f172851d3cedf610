"""The integer network the DPU runs: what an .xmodel holds and what dpu.py computes.

A chain of DPU layers, each a Linear with an optional fused ReLU. All values are
int8 with a power-of-two fix position fp (value = q * 2^-fp). The quantizer's
deploy step builds one from its test-mode state, xmodel.py writes and reads it,
dpu.py runs it, and compile.sh checks its shifts.
"""
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

# Every value is a signed BIT_WIDTH-bit integer q in [Q_MIN, Q_MAX].
BIT_WIDTH = 8
Q_MIN, Q_MAX = -(2 ** (BIT_WIDTH - 1)), 2 ** (BIT_WIDTH - 1) - 1

# Positions beyond +-64 mean steps below 2^-64 or above 2^64, which no int8
# network uses; the bound also keeps q * 2^-fp exact in float32.
FIX_POINT_LIMIT = 64


@dataclass
class IntLayer:
    name: str                   # the Linear's name in the float model, e.g. "l1"
    weight: np.ndarray          # int8 [out, in] (torch layout)
    bias: np.ndarray            # int8 [out]
    fp_w: int
    fp_b: int
    fp_out: int                 # position of the layer's quantized output (after the ReLU if fused)
    relu: bool
    op_name: str                # xmodel op of the Linear, e.g. "FFN__FFN_Linear_l1__ret_1"
    relu_op_name: Optional[str] = None   # xmodel op of the fused ReLU, e.g. "FFN__FFN_ret_3"
    weight_op_name: str = ""    # e.g. "FFN__l1_weight"
    bias_op_name: str = ""      # e.g. "FFN__l1_bias"

    @property
    def output_op_name(self):
        """The op whose fix op carries this layer's quantized output."""
        return self.relu_op_name if self.relu else self.op_name


@dataclass
class IntModel:
    net_name: str               # "FFN"
    input_op_name: str          # "FFN__input_0"
    input_size: int
    fp_in: int
    layers: List[IntLayer] = field(default_factory=list)

    def input_positions(self):
        """The input fix position of each layer: the network input, then each previous output."""
        return [self.fp_in] + [layer.fp_out for layer in self.layers[:-1]]

    @property
    def fp_out(self):
        return self.layers[-1].fp_out
