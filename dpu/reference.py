"""Integer reference of the DPU: an IntModel run in integer arithmetic only.

Per layer (spec dpu.md, "What the DPU computes"; layers.md, "One rule for
every new op"), with i, w, b, o the input, weight, bias and output fix positions:
  acc = x @ W^T (matmul) or x * s per channel (scale)   int, at position i + w
  + the bias, exactly, at the finer of i + w and b
  the fused activation on that exact value (relu; leaky-relu: 26 * acc at 8 bits
  finer below zero; relu6: clamp to [0, 6]),
  y = the result scaled to position o, rounded once half up (.5 toward +inf),
  then saturated to int8.
The result equals exact rational arithmetic rounded once at the output
position, which is what the quantizer's fake-quantized float forward and its
deploy-check dumps hold. Everything is numpy int64; floats appear only where
the float input is quantized and where values are reported.

Also here: the deploy-check dumps of the deploy forward in the quantizer's file naming,
and their comparison with a `deploy_check_data_int/<Net>` folder.
"""
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import List

import numpy as np

# The DPU's tensors are int8: q in [Q_MIN, Q_MAX], defined once in int_model.py.
from .int_model import (ACTIVATIONS, INT32_LIMIT, LEAKY_RELU, LEAKY_RELU_ALPHA_NUM, LEAKY_RELU_ALPHA_SHIFT, MATMUL, Q_MAX, Q_MIN, RELU,
                        RELU6, RELU6_MAX, SCALE)
# shift_cut(i, w, o) = i + w - o: the right shift from the accumulator to the
# output; shift_bias(i, w, b) = i + w - b: the left shift of the bias to the
# accumulator, negative when the bias is finer. Defined once, with their DPU
# ranges, in legalize.py; re-exported here for the DPU's callers.
from .shifts import shift_bias, shift_cut  # noqa: F401

# Headroom kept below 2^63 so that sums and the rounding offset cannot overflow int64.
INT64_SAFE = 2 ** 62


# ---------------------------------------------------------------- rounding

def saturate(q):
    return np.clip(q, Q_MIN, Q_MAX)


def round_shift_half_up(total, shift):
    """total * 2^-shift rounded once, half up, for int64 `total`.

    A right shift by s >= 1 after adding 2^(s-1) is floor(total / 2^s + 1/2):
    numpy's >> on signed integers is arithmetic (floor), so negative ties go
    up too (-2.5 -> -2). A shift <= 0 scales exactly."""
    if shift > 0:
        return (total + (1 << (shift - 1))) >> shift
    return total << -shift


def quantize_input(x_float, fp):
    """int64 q = clamp(round_half_up(x * 2^fp), -128, 127) of the float input.

    The input is cast to float32 first, as the quantizer feeds the network a
    float32 tensor (the xmodel's data op is FLOAT32). A float32 has a 24-bit
    significand, so x * 2^fp in float64 (ldexp) is exact; clipping to
    [Q_MIN - 1, Q_MAX + 1] first changes nothing after the final clamp (both
    are monotone with integer bounds) and keeps every value small, so that
    floor(v), 2 * v and 2 * floor(v) + 1 are exact too and the half-up test
    `2 v >= 2 floor(v) + 1` is decided on the exact value. floor(v + 0.5) in
    float is not: for v just below .5 the sum rounds up to 1."""
    x32 = np.asarray(x_float, dtype=np.float32)
    v = np.clip(np.ldexp(x32.astype(np.float64), fp), Q_MIN - 1, Q_MAX + 1)
    low = np.floor(v)
    q = low + (2.0 * v >= 2.0 * low + 1.0)
    return saturate(q.astype(np.int64))


# vai_q_pytorch turns an input beyond int32 into -128 (int_model.INT32_LIMIT); the DPU
# saturates it. The two disagree on such rows only.
def int32_overflow_rows(x_float, fp):
    """The rows of x_float holding an input that vai_q_pytorch turns into -128 at position fp."""
    v = np.abs(np.ldexp(np.asarray(x_float, dtype=np.float32).astype(np.float64), fp))
    return np.flatnonzero((~(v < INT32_LIMIT)).any(axis=-1))


def overflow_explanation(x_float, fp):
    """One clause for a comparison that differs because of such rows ("" when none)."""
    rows = int32_overflow_rows(np.atleast_2d(x_float), fp)
    if not len(rows):
        return ""
    shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
    return ("row{} {} hold{} an input beyond int32 at fix position {}: vai_q_pytorch turns it into -128, "
            "the DPU (and this reference) saturate it to 127".format(
                "s" if len(rows) > 1 else "", shown, "" if len(rows) > 1 else "s", fp))


def dequantize(q, fp):
    """The float32 values q * 2^-fp of integers q at fix position fp.

    Exact for int8 q at |fp| <= FIX_POINT_LIMIT. An integer 0 gives +0.0,
    never -0.0 (the quantizer stores +0.0).
    """
    return np.ldexp(np.asarray(q, dtype=np.float64), -fp).astype(np.float32)


# ---------------------------------------------------------------- one layer

@dataclass
class LayerTrace:
    pre_num: np.ndarray     # int64 [rows, out]: the exact pre-activation is pre_num * 2^-pre_pos
    pre_pos: int
    out: np.ndarray         # int64 [rows, out] in [Q_MIN, Q_MAX], at the layer's fp_out

    def pre_value(self):
        """The pre-activation as float64 (exact while |pre_num| < 2^53)."""
        return np.ldexp(self.pre_num.astype(np.float64), -self.pre_pos)


def _check_fits(layer, n_in, acc_shift, bias_shift, cut):
    """Raise ValueError if the layer's positions would overflow int64."""
    bound = (n_in * (-Q_MIN) ** 2 << acc_shift) + ((-Q_MIN) << bias_shift)
    bound = bound << (max(0, -cut) + ACTIVATION_HEADROOM_BITS)
    if cut > 0:
        bound += 1 << (cut - 1)
    if bound >= INT64_SAFE:
        raise ValueError("layer {}: fix positions too far apart for 64-bit arithmetic "
                         "(shift_bias and shift_cut span {} bits)".format(
                             layer.name, bound.bit_length()))


# leaky-relu works LEAKY_RELU_ALPHA_SHIFT bits finer, relu6 at most 3 bits finer (6 = 3 * 2^1).
ACTIVATION_HEADROOM_BITS = LEAKY_RELU_ALPHA_SHIFT


def activate(num, pos, cut, activation):
    """The fused activation on the exact value num * 2^-pos, which is then rounded by
    `cut` bits; returns (numerator, cut) of the exact activated value, unrounded."""
    if activation == RELU:
        return np.maximum(num, 0), cut
    if activation == LEAKY_RELU:
        # alpha = 26 * 2^-8: the negative branch, 26 * num, is exact 8 bits finer.
        s = LEAKY_RELU_ALPHA_SHIFT
        return np.where(num < 0, num * LEAKY_RELU_ALPHA_NUM, num << s), cut + s
    if activation == RELU6:
        # 6 at position pos: 6 * 2^pos, an integer once pos >= -1.
        extra = max(0, -1 - pos)
        num, pos, cut = num << extra, pos + extra, cut + extra
        six = RELU6_MAX << pos if pos >= 0 else RELU6_MAX >> -pos
        return np.clip(num, 0, six), cut
    if activation is None:
        return num, cut
    raise ValueError("unsupported activation {!r}".format(activation))


def run_layer(x, layer, fp_in):
    """One DPU op (matmul or scale, activation) on int64 input x [rows, in] at position fp_in."""
    weight = layer.weight.astype(np.int64)
    bias = layer.bias.astype(np.int64)
    s_bias = shift_bias(fp_in, layer.fp_w, layer.fp_b)
    s_cut = shift_cut(fp_in, layer.fp_w, layer.fp_out)
    # Work at the finer of the accumulator's and the bias's positions, so the
    # bias is added exactly; only the final scaling to fp_out rounds.
    acc_shift, bias_shift = max(0, -s_bias), max(0, s_bias)
    pre_pos = fp_in + layer.fp_w + acc_shift
    cut = s_cut + acc_shift
    _check_fits(layer, weight.shape[1] if layer.kind == MATMUL else 1, acc_shift, bias_shift, cut)
    acc = x @ weight.T if layer.kind == MATMUL else x * weight
    pre_num = (acc << acc_shift) + (bias << bias_shift)
    num, cut = activate(pre_num, pre_pos, cut, layer.activation)
    out = round_shift_half_up(num, cut)
    return LayerTrace(pre_num=pre_num, pre_pos=pre_pos, out=saturate(out))


# ---------------------------------------------------------------- the network

@dataclass
class Trace:
    input: np.ndarray           # int64 [rows, input_size] at the model's fp_in
    layers: List[LayerTrace]

    @property
    def output(self):
        return self.layers[-1].out


def check_model(model):
    """Raise ValueError naming the first layer whose shapes or values the DPU cannot run."""
    if not model.layers:
        raise ValueError("the model has no layers")
    n_in = model.input_size
    for layer in model.layers:
        weight, bias = np.asarray(layer.weight), np.asarray(layer.bias)
        if layer.kind == MATMUL:
            if weight.ndim != 2 or weight.shape[1] != n_in:
                raise ValueError("layer {}: weight shape {} does not take {} inputs".format(
                    layer.name, weight.shape, n_in))
        elif layer.kind == SCALE:
            if weight.shape != (n_in,):
                raise ValueError("layer {}: scale shape {} does not match {} channels".format(
                    layer.name, weight.shape, n_in))
        else:
            raise ValueError("layer {}: unsupported op {!r}".format(layer.name, layer.kind))
        if bias.shape != (weight.shape[0],):
            raise ValueError("layer {}: bias shape {} does not match {} outputs".format(
                layer.name, bias.shape, weight.shape[0]))
        if layer.activation not in (None,) + ACTIVATIONS:
            raise ValueError("layer {}: unsupported activation {!r}".format(layer.name, layer.activation))
        for what, q in (("weight", weight), ("bias", bias)):
            if q.dtype.kind not in "iu" or (q.size and (q.min() < Q_MIN or q.max() > Q_MAX)):
                raise ValueError("layer {}: {} is not int8".format(layer.name, what))
        n_in = weight.shape[0]


def run(model, x_float):
    """The integer forward of all rows of x_float [rows, input_size], every intermediate kept."""
    check_model(model)
    x = quantize_input(x_float, model.fp_in)
    if x.ndim != 2 or x.shape[1] != model.input_size:
        raise ValueError("input shape {} does not match the model's input size {}".format(
            x.shape, model.input_size))
    layers = []
    h = x
    for layer, fp_in in zip(model.layers, model.input_positions()):
        trace = run_layer(h, layer, fp_in)
        layers.append(trace)
        h = trace.out
    return Trace(input=x, layers=layers)


def outputs(model, x_float):
    """The network's outputs as float32 [rows, out], as the quantizer's test mode gives them."""
    return dequantize(run(model, x_float).output, model.fp_out)


# ---------------------------------------------------------------- deploy-check dumps

FIX_SUFFIX = "_fix"


def _add_fix_pair(dumps, op_name, q, fp):
    """A fix-carrying op: NAME.bin is its quantized value as float32, NAME_fix.bin the int8."""
    if not op_name:
        raise ValueError("an op of the model has no name")
    dumps[op_name + ".bin"] = dequantize(q, fp)
    dumps[op_name + FIX_SUFFIX + ".bin"] = np.asarray(q).astype(np.int8)


def deploy_dumps(model, x_rows):
    """{file name: array} of the deploy forward of `x_rows` (the model's batch of rows,
    or one row), named as `deploy_check_data_int/<Net>/`.

    The input and every parameter carry a fix pair; so does each op's output
    (its activation's if fused). An op followed by an activation has no fix of
    its own: its NAME.bin is the float32 pre-activation value. A scale op
    (BatchNorm1d) also dumps its running mean and variance, zeros and ones:
    the quantizer has moved them into the scale and offset."""
    trace = run(model, np.atleast_2d(x_rows))
    dumps = OrderedDict()
    _add_fix_pair(dumps, model.input_op_name, trace.input, model.fp_in)
    # Parameters in the xmodel's order: last layer first, bias before weight.
    for layer in reversed(model.layers):
        _add_fix_pair(dumps, layer.bias_op_name, layer.bias, layer.fp_b)
        _add_fix_pair(dumps, layer.weight_op_name, layer.weight, layer.fp_w)
        if layer.kind == SCALE:
            stem = layer.weight_op_name[:-len("weight")]
            dumps[stem + "running_mean.bin"] = np.zeros(len(layer.bias), np.float32)
            dumps[stem + "running_var.bin"] = np.ones(len(layer.bias), np.float32)
    for layer, lt in zip(model.layers, trace.layers):
        if layer.activation:
            dumps[layer.op_name + ".bin"] = lt.pre_value().astype(np.float32)
        _add_fix_pair(dumps, layer.output_op_name, lt.out, layer.fp_out)
    return dumps


@dataclass
class DumpCheck:
    name: str               # file name, e.g. "FFN__input_0_fix.bin"
    problem: str = ""       # "" when the file matches
    n_mismatch: int = 0
    max_diff: float = 0.0

    @property
    def ok(self):
        return not self.problem

    def describe(self):
        return "{}: {}".format(self.name, self.problem or "ok")


def _check_one(name, expected, path):
    if not os.path.isfile(path):
        return DumpCheck(name, "missing from the folder")
    expected = expected.ravel()
    try:
        size = os.path.getsize(path)
        if size != expected.nbytes:
            return DumpCheck(name, "holds {} bytes, expected {} ({} x {})".format(
                size, expected.nbytes, expected.size, expected.dtype))
        found = np.fromfile(path, dtype=expected.dtype)
    except OSError as e:
        return DumpCheck(name, "unreadable ({})".format(e.strerror or e))
    # Compared as values: a float -0.0 equals 0.0; int8 differences are taken in int64.
    wide = np.int64 if expected.dtype.kind == "i" else np.float64
    diff = np.abs(found.astype(wide) - expected.astype(wide))
    n_mismatch = int(np.count_nonzero(diff))
    if n_mismatch == 0:
        return DumpCheck(name)
    max_diff = float(diff.max())
    return DumpCheck(name, "{} of {} values differ, max diff {:g}".format(
        n_mismatch, expected.size, max_diff), n_mismatch, max_diff)


def compare_dumps(dumps, folder):
    """One DumpCheck per file: every dump of `dumps`, then every .bin of the folder it lacks."""
    checks = [_check_one(name, np.asarray(expected), os.path.join(folder, name))
              for name, expected in dumps.items()]
    extra = sorted(f for f in os.listdir(folder) if f.endswith(".bin") and f not in dumps)
    checks.extend(DumpCheck(f, "not produced by the model") for f in extra)
    return checks
