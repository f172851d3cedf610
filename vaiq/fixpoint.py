"""8-bit power-of-two fixed point as vai_q_pytorch computes it (spec: "Numbers",
"Choosing a fix position").

A tensor with fix position fp holds q * 2^-fp with q = clamp(R(x * 2^fp), -128, 127).
Parameters round half away from zero, activations round half up (DPU_ROUND).
"""
import numpy as np
import torch

from checked_io import InputError

from .int_model import INT32_LIMIT, Q_MAX, Q_MIN

MAX_FIX_POS = 12          # cap for 8-bit tensors
ALL_ZERO_FIX_POS = 18     # base position when the tensor has no range
PARAM_SCOPE = 5           # candidates tried for parameters and layer outputs
INPUT_SCOPE = 1           # the network input takes the max/min position as is

HALF_AWAY = "half_away"   # parameters: C round()
HALF_UP = "half_up"       # activations: DPU_ROUND, .5 toward +inf


def round_half_up(x):
    """floor(x + 1/2), decided on the exact value of x.

    floor(x) and x - floor(x) are exact in floating point; computing x + 0.5
    first is not (for x just below .5 the sum rounds up to 1)."""
    low = torch.floor(x)
    return low + (x - low >= 0.5).to(x.dtype)


def round_half_away(x):
    """C round(): ties go away from zero, decided on the exact value of |x|."""
    magnitude_rounded = round_half_up(torch.abs(x))
    return torch.where(x < 0, -magnitude_rounded, magnitude_rounded)


ROUND = {HALF_AWAY: round_half_away, HALF_UP: round_half_up}


def int32_overflow(rounded):
    """Where R(x * 2^fp) does not fit the real kernel's C int (NaN included: it fails both tests)."""
    return ~((rounded >= -INT32_LIMIT) & (rounded < INT32_LIMIT))


def quantize(x, fp, mode):
    """The int8 grid values q (as float32) of x at fix position fp, as the real kernel
    computes them: values beyond int32 become Q_MIN, and a zero is +0.0 (it went
    through an int), never -0.0."""
    rounded = ROUND[mode](x * (2.0 ** fp))   # the scaling is exact: a power of two in float32
    q = torch.where(int32_overflow(rounded), torch.full_like(rounded, Q_MIN), torch.clamp(rounded, Q_MIN, Q_MAX))
    return q + 0.0                           # -0.0 + 0.0 is +0.0


def overflow_mask(x, fp, mode):
    """Where the real kernel turns x into Q_MIN because R(x * 2^fp) exceeds int32."""
    return int32_overflow(ROUND[mode](x * (2.0 ** fp)))


def fake_quantize(x, fp, mode):
    """x rounded to the 2^-fp grid and saturated, still float32."""
    return quantize(x, fp, mode) * (2.0 ** -fp)


def fix_position(x, scope, mode, name="a tensor"):
    """The "diffs" search: the position, among `scope` candidates from the one
    that just covers x's range, with the smallest float32 sum of squared errors
    (the first one on ties), capped at MAX_FIX_POS."""
    x = x.detach().float()
    x_min = np.float32(x.min().item())
    x_max = np.float32(x.max().item())
    if not (np.isfinite(x_min) and np.isfinite(x_max)):
        raise InputError("{} holds values beyond the float32 range (or NaN); it cannot be quantized".format(name))
    step = max(x_min / np.float32(Q_MIN - 0.5), x_max / np.float32(Q_MAX + 0.5))
    if not step > 0:
        base = ALL_ZERO_FIX_POS
    else:
        with np.errstate(over="ignore"):
            inverse = np.float32(1.0) / step
        if not np.isfinite(inverse):
            return MAX_FIX_POS     # a range below 2^-128: every candidate is past the cap
        base = int(np.floor(np.log2(inverse)))
    best, best_sse = base, None
    for fp in range(base, base + scope):
        sse = torch.sum((x - fake_quantize(x, fp, mode)) ** 2).item()
        if best_sse is None or sse < best_sse:
            best, best_sse = fp, sse
    return min(best, MAX_FIX_POS)
