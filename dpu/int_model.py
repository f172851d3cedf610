"""The integer network the DPU runs: what an .xmodel holds and what dpu.py computes.

A chain of DPU ops, each ending in one fix (one int8 tensor): a `matmul` (a
Linear) or a `scale` (a BatchNorm1d, not folded: x * scale + offset per
channel), optionally followed by a fused activation (relu, leaky-relu with
alpha 26/256, relu6). All values are int8 with a power-of-two fix position fp
(value = q * 2^-fp). The quantizer's deploy step builds one from its test-mode
state, xmodel.py writes and reads it, dpu.py runs it, and compile.sh checks
its shifts.
"""
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

# Every value is a signed BIT_WIDTH-bit integer q in [Q_MIN, Q_MAX].
BIT_WIDTH = 8
Q_MIN, Q_MAX = -(2 ** (BIT_WIDTH - 1)), 2 ** (BIT_WIDTH - 1) - 1
# vai_q_pytorch's kernel rounds into a C int, which holds [-2^31, 2^31): beyond it (and
# for NaN) x86-64 gives INT_MIN, so the value ends as Q_MIN (spec "Numbers", Overflow).
INT32_LIMIT = 2.0 ** 31

# Positions beyond +-64 mean steps below 2^-64 or above 2^64, which no int8
# network uses; the bound also keeps q * 2^-fp exact in float32.
FIX_POINT_LIMIT = 64

# The compute ops, by xmodel op type.
MATMUL, SCALE = "matmul", "scale"
# The activations the DPU fuses into the op before them, by xmodel op type.
RELU, LEAKY_RELU, RELU6 = "relu", "leaky-relu", "relu6"
ACTIVATIONS = (RELU, LEAKY_RELU, RELU6)
# The DPU's only leaky-relu slope, 26/256 (vai_q_pytorch forces every slope to it).
LEAKY_RELU_ALPHA_NUM, LEAKY_RELU_ALPHA_SHIFT = 26, 8
LEAKY_RELU_ALPHA = LEAKY_RELU_ALPHA_NUM / 2.0 ** LEAKY_RELU_ALPHA_SHIFT
RELU6_MAX = 6


@dataclass
class IntLayer:
    name: str                   # the module's name in the float model, e.g. "l1", "bn1"
    weight: np.ndarray          # int8: matmul [out, in] (torch layout); scale [channels]
    bias: np.ndarray            # int8 [out]
    fp_w: int
    fp_b: int
    fp_out: int                 # position of the op's quantized output (after the activation if fused)
    op_name: str                # xmodel op of the matmul or scale, e.g. "FFN__FFN_Linear_l1__ret_1"
    activation: Optional[str] = None          # None or one of ACTIVATIONS
    activation_op_name: Optional[str] = None  # xmodel op of the fused activation, e.g. "FFN__FFN_ret_3"
    weight_op_name: str = ""    # e.g. "FFN__l1_weight"
    bias_op_name: str = ""      # e.g. "FFN__l1_bias"
    kind: str = MATMUL          # MATMUL or SCALE

    @property
    def output_op_name(self):
        """The op whose fix op carries this layer's quantized output."""
        return self.activation_op_name if self.activation else self.op_name

    @property
    def out_features(self):
        return len(self.bias)


@dataclass
class IntModel:
    net_name: str               # "FFN"
    input_op_name: str          # "FFN__input_0"
    input_size: int
    fp_in: int
    layers: List[IntLayer] = field(default_factory=list)
    batch: int = 1              # the batch of every tensor in the xmodel (DPUCADF8H compiles 4)

    def input_positions(self):
        """The input fix position of each layer: the network input, then each previous output."""
        return [self.fp_in] + [layer.fp_out for layer in self.layers[:-1]]

    @property
    def fp_out(self):
        return self.layers[-1].fp_out

    def linear_layers(self):
        """(input position, layer) of every matmul: the layers whose shifts the DPU legalizes."""
        return [(i, layer) for i, layer in zip(self.input_positions(), self.layers) if layer.kind == MATMUL]
