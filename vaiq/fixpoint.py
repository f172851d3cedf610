"""8-bit power-of-two fixed point as vai_q_pytorch computes it (spec: "Numbers",
"Choosing a fix position").

A tensor with fix position fp holds q * 2^-fp with q = clamp(R(x * 2^fp), -128, 127).
Parameters round half away from zero, activations round half up (DPU_ROUND).
"""
import collections
import contextlib
import functools
import math

import numpy as np
import torch

from flow.checked_io import InputError

from dpu.int_model import INT32_LIMIT, Q_MAX, Q_MIN

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


# ---------------------------------------------------------------- the search, fast
#
# What follows computes what the functions above compute, bit for bit, with fewer
# kernels: the calibration runs the search on every activation of every batch, and
# under the pinned kernels (flow/kernels.py: ATen's scalar loops) each kernel costs.
# Where a shortcut's conditions do not hold, the plain computation above runs.
# tests/test_fixpoint_search.py checks both against a plain reference.
#
# Their elementwise work runs in numpy, on numpy views of tensors that torch allocated
# (Tensor.numpy() shares the memory): a float32 addition, subtraction, multiplication,
# comparison, clamp (without NaN), abs or floor is exactly rounded, the same bits whatever
# vector width computes it, and numpy's loops use the machine's vectors whatever
# ATEN_CPU_CAPABILITY says (under the pins ATen's are scalar loops), with less overhead per
# call. Every operand is float32: scalars are np.float32 (numpy 1.x computes a float32
# array and a Python float in float64 where the float is beyond float32's range). What an
# order of operations defines stays torch's: the sums of squared errors (_row_sums) run on
# the torch tensors numpy wrote into. A tensor that reaches a matmul is one torch allocated,
# in the layout torch's own elementwise ops would have given it (contiguous, on the
# allocator's alignment: MKL's sgemm may round differently on other addresses).

# torch sums a tensor in one pass per row, on one thread, when it has fewer elements
# than this (at::internal::GRAIN_SIZE) or one thread to run on; otherwise the threads
# take parts of it.
_GRAIN_SIZE = 32768

# Positions whose 2^fp and 2^-fp are both normal float32 numbers: there x * 2^fp is
# exact unless it leaves the float32 range (or its normal range, far below 1/2).
_NORMAL_POSITIONS = range(-126, 127)
_SMALLEST_NORMAL = np.float32(2.0 ** -126)

_Q_MIN, _Q_MAX = np.float32(Q_MIN), np.float32(Q_MAX)
_HALF, _ZERO = np.float32(0.5), np.float32(0.0)

# How many candidates the search computes in its first pass, besides the one whose
# values the caller wants (the history's mode): those with the lowest error bounds
# (below). One: the winner is usually that one or the wanted one, and the others can
# often be ruled out from their bounds without a second pass.
_FIRST_CANDIDATES = 1

SearchResult = collections.namedtuple("SearchResult", ["position", "x_min", "x_max", "quantized"])
SearchResult.__doc__ = """What search() found: the position fix_position gives; x's smallest and largest
value (float32; for a search told that x is not negative, 0 stands for the smallest);
quantized: {fp: (values, k)} for the candidates whose error it computed in a stacked
pass (half_up only; none otherwise), row k of values being fake_quantize(x, fp,
"half_up").view(-1) where within_int32(x_min, x_max, fp) holds (elsewhere its int32
overflows would be missing): see searched_values."""


def _numpy_ready(x):
    """Whether x.numpy() is x's memory as a float32 numpy array: a float32 CPU tensor that
    autograd does not follow."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and not x.requires_grad


def _value_range(x, name, non_negative=False):
    """(min, max) of x as float32, or (0, max) for a non-negative x (a ReLU's output:
    its smallest value changes nothing the search does with it); InputError when x
    holds an infinity or NaN (torch.max and numpy's max return NaN when x holds one).
    numpy's where it can: the smallest and largest value do not depend on the order
    they are looked at in, but for the sign of a zero, which nothing the search does
    with them tells apart."""
    if x.numel() > 0 and _numpy_ready(x):
        values = x.numpy()
        x_min = np.float32(0.0) if non_negative else np.float32(values.min())
        x_max = np.float32(values.max())
    else:   # torch's (and its error for an empty x)
        x_min = np.float32(0.0) if non_negative else np.float32(x.min().item())
        x_max = np.float32(x.max().item())
    if not (np.isfinite(x_min) and np.isfinite(x_max)):
        raise InputError("{} holds values beyond the float32 range (or NaN); it cannot be quantized".format(name))
    return x_min, x_max


def _first_candidate(x_min, x_max):
    """The position that just covers [x_min, x_max] (steps 1 and 2 of the search), or
    None for a range below 2^-128, where every candidate is past the cap."""
    step = max(x_min / np.float32(Q_MIN - 0.5), x_max / np.float32(Q_MAX + 0.5))
    if not step > 0:
        return ALL_ZERO_FIX_POS
    if step >= _SMALLEST_NORMAL:   # 1 / step <= 2^126: nothing to silence
        inverse = np.float32(1.0) / step
    else:
        with np.errstate(over="ignore"):
            inverse = np.float32(1.0) / step
        if not np.isfinite(inverse):
            return None
    return int(np.floor(np.log2(inverse)))


@functools.lru_cache(maxsize=1024)
def _scales(positions, sign=1):
    """2^(sign * fp) for each normal position of the tuple `positions`, a float32 column
    (numpy, read-only: it is cached): what torch's kernels make of the Python float
    2.0 ** fp that quantize() multiplies by, exactly."""
    column = np.array([[2.0 ** (sign * fp)] for fp in positions], dtype=np.float32)
    column.flags.writeable = False
    return column


def _below_int32(x_max, fp):
    """True when R(x * 2^fp) < 2^31 for every float32 x <= x_max, fp a normal position:
    x * 2^fp is exact or leaves the float32 range (or rounds far below 1/2), so it is
    below 2^31 exactly when x_max < 2^(31 - fp), and no float32 lies in [2^31 - 1/2, 2^31).
    False for a NaN x_max."""
    return float(x_max) < math.ldexp(INT32_LIMIT, -fp)


def within_int32(x_min, x_max, fp):
    """True when no x in [x_min, x_max] (float32) has R(x * 2^fp) outside the int32 range
    at position fp: then overflow_mask holds no True, and fake_quantize_within_int32
    may stand for fake_quantize. (R(s) < -2^31 exactly when s < -2^31: no float32 lies
    in [-2^31 - 1/2, -2^31).) Only normal positions qualify."""
    return (fp in _NORMAL_POSITIONS and _below_int32(x_max, fp)
            and float(x_min) >= -math.ldexp(INT32_LIMIT, -fp))


def _saturates(x_min, x_max, fp):
    """Whether some x in [x_min, x_max] (float32, fp normal) can round beyond [Q_MIN, Q_MAX]
    at fp, for either rounding: x * 2^fp is exact (or rounds far from the bounds), and
    rounds into the range when strictly between Q_MIN - 1/2 and Q_MAX + 1/2. Unknown
    bounds (None): yes."""
    if x_min is None or x_max is None:
        return True
    return not (math.ldexp(float(x_max), fp) < Q_MAX + 0.5 and math.ldexp(float(x_min), fp) > Q_MIN - 0.5)


def _round_half_up_in_place(s):
    """round_half_up(s) into s, a numpy float32 array: the same operations, floor(s) +
    (s - floor(s) >= 1/2), and so the same bits (a zero is +0.0: -0.0 + 0.0 is +0.0)."""
    low = np.floor(s)
    fraction = np.subtract(s, low, out=s)
    return np.add(low, np.greater_equal(fraction, _HALF), out=s)   # the bools as 0.0 and 1.0


def _round_half_away_in_place(s):
    """round_half_away(s) into s, a numpy float32 array: the same operations, the rounded
    |s| negated where s < 0 (to -0.0 for a zero)."""
    negative = np.less(s, _ZERO)
    _round_half_up_in_place(np.abs(s, out=s))
    return np.negative(s, out=s, where=negative)


_ROUND_IN_PLACE = {HALF_AWAY: _round_half_away_in_place, HALF_UP: _round_half_up_in_place}


def _quantize_in_place(values, mode, saturating=None):
    """clamp(R(values), Q_MIN, Q_MAX) into `values`, a numpy float32 array (returned), a row
    per position or one array, without NaN or values of 2^31 and above: what quantize()
    computes there, but for the sign of a zero (half_away may give -0.0; half_up gives
    +0.0, as quantize() does). saturating: for each row, whether it may need the clamp
    (_saturates); None: all rows may.

    Clamping first gives the same: R keeps the order and the bounds are whole numbers;
    and nothing overflows, so the int32 test and its torch.where are left out."""
    if saturating is None or all(saturating):
        np.clip(values, _Q_MIN, _Q_MAX, out=values)
    elif any(saturating):
        for k, saturates in enumerate(saturating):
            if saturates:
                np.clip(values[k], _Q_MIN, _Q_MAX, out=values[k])
    return _ROUND_IN_PLACE[mode](values)


# Positions where q * 2^-fp (|q| <= 128) stays within 2^62: see _quiet_overflow.
_QUIET_POSITIONS = range(-55, 64)
_NO_CONTEXT = contextlib.nullcontext()


def _quiet_overflow(x_min, x_max, positions):
    """A context in which numpy says nothing of an overflow to infinity (torch's kernels
    say nothing), where one can happen in the products and squares of fake-quantizing x in
    [x_min, x_max] at `positions`; elsewhere a context that does nothing, np.errstate
    costing as much as the work on a small tensor. None cannot: |x| < 2^62 and fp in
    _QUIET_POSITIONS, so |x * 2^fp| < 2^125, |q * 2^-fp| <= 2^62, |fq - x| < 2^63 and its
    square below 2^126."""
    if (x_min is not None and x_max is not None and max(-float(x_min), float(x_max)) < 2.0 ** 62
            and all(fp in _QUIET_POSITIONS for fp in positions)):
        return _NO_CONTEXT
    return np.errstate(over="ignore")


def _grad_tracked(x):
    return x.requires_grad and torch.is_grad_enabled()


def fake_quantize_within_int32(x, fp, mode, x_min=None, x_max=None):
    """fake_quantize(x, fp, mode), bit for bit, for an x that within_int32 cleared, with
    fewer kernels (x_min, x_max: x's range, if known). A tensor that autograd follows
    gets fake_quantize itself.

    The result goes on to a matmul, so it is laid out as before, as torch's own kernels
    lay it out: for an x in row-major order a new row-major tensor of torch's allocator;
    otherwise (a transposed x, or odd strides of dimensions of size 1) torch's x * 2.0 ** fp,
    rounded in place for half_up, or fake_quantize's for half_away (torch.where's layout)."""
    if _grad_tracked(x) or x.dtype != torch.float32 or fp not in _NORMAL_POSITIONS:
        return fake_quantize(x, fp, mode)
    x = x.detach()
    if not _numpy_ready(x):
        return fake_quantize(x, fp, mode)
    row_major = x.stride() == _row_major_strides(x.shape)
    if row_major:
        q = torch.empty(x.shape, dtype=torch.float32)
    elif mode == HALF_UP:
        q = x * (2.0 ** fp)
    else:
        return fake_quantize(x, fp, mode)
    values = q.numpy()
    with _quiet_overflow(x_min, x_max, (fp,)):
        if row_major:
            np.multiply(x.numpy(), np.float32(2.0 ** fp), out=values)   # 2^fp: exact in float32
        _quantize_in_place(values, mode, [_saturates(x_min, x_max, fp)])
        if mode != HALF_UP:
            np.add(values, _ZERO, out=values)   # -0.0 + 0.0 is +0.0, as in quantize()
        np.multiply(values, np.float32(2.0 ** -fp), out=values)
    return q


def _row_major_strides(shape):
    """The strides of a row-major (C order) tensor of `shape`, in elements."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _stacked(x, positions, mode, x_min=None, x_max=None):
    """(squared errors, fake-quantized values), row k for positions[k], of x (contiguous
    float32) at positions the caller cleared (normal, nothing reaching 2^31; x_min,
    x_max: x's range, if known): elementwise bit for bit (x - fake_quantize(x, fp, mode))
    ** 2 and, for half_up, fake_quantize(x, fp, mode) but for int32 overflows below -2^31
    (the quantized values are quantize()'s, a zero's sign aside for half_away, squared
    away; q * 2^-fp is exact; and (fq - x)^2 is (x - fq)^2 to the bit, fl(fq - x) being
    -fl(x - fq))."""
    flat = x.numpy().reshape(1, -1)
    saturating = [_saturates(x_min, x_max, fp) for fp in positions]
    values = torch.empty((len(positions), flat.shape[1]), dtype=torch.float32)   # (k, n), as torch's product
    errors = torch.empty_like(values)
    fake, squares = values.numpy(), errors.numpy()
    with _quiet_overflow(x_min, x_max, positions):
        np.multiply(flat, _scales(positions), out=fake)
        _quantize_in_place(fake, mode, saturating)
        np.multiply(fake, _scales(positions, -1), out=fake)
        np.subtract(fake, flat, out=squares)
        np.multiply(squares, squares, out=squares)
    return errors, values


def _row_sums(errors):
    """[float32 sum of each row]: bit for bit the sum of each row as a tensor of its own.

    torch's sum kernel (cascade_sum) reduces each row of a contiguous (k, n) tensor along
    its n elements with the same row_sum it runs on a contiguous tensor of n elements
    (unaligned loads: the row's offset does not matter), as long as both run serially.
    With several threads and as many elements as _GRAIN_SIZE the work would be split
    otherwise, so then each row is summed on its own."""
    if torch.get_num_threads() == 1 or errors.numel() < _GRAIN_SIZE:
        return errors.sum(dim=1).tolist()
    return [row.sum().item() for row in errors]


def _stacked_allowed(x, positions, x_max):
    return (x.numel() > 0 and len(positions) > 0 and x.is_contiguous() and _numpy_ready(x)
            and all(fp in _NORMAL_POSITIONS for fp in positions) and _below_int32(x_max, max(positions)))


def candidate_errors(x, positions, mode, x_max=None):
    """[float32 sum of squared errors of fake-quantizing x at fp, for fp in positions]:
    bit for bit torch.sum((x - fake_quantize(x, fp, mode)) ** 2).item() of each. One
    pass over a stacked (positions, x.numel()) tensor where that keeps every bit (x
    contiguous, positions normal, nothing reaching 2^31; x_max: x's largest value if
    known), one candidate at a time otherwise."""
    x = x.detach().float()
    positions = tuple(positions)
    if x_max is None and x.numel() > 0:
        x_max = x.max().item()
    if not _stacked_allowed(x, positions, x_max):
        return [torch.sum((x - fake_quantize(x, fp, mode)) ** 2).item() for fp in positions]
    return _row_sums(_stacked(x, positions, mode)[0])


def _error_floor(values, fp, mode):
    """A lower bound of the largest of the float32 squared errors that fake-quantizing
    each of `values` (float32 numbers of x) at fp gives, fp normal and nothing reaching
    2^31: q is exact from the exact x * 2^fp (when that product is below the normal
    range, q is 0 either way), x - q 2^-fp is computed in float64 (exact here, within
    2^-53 anyway), and its square less 2^-20 of it stays below what two float32
    roundings (2^-24 each) can make of it; 0 near the subnormal range."""
    bound = 0.0
    for value in values:
        value = float(value)
        scaled = math.ldexp(value, fp)
        if mode == HALF_UP:
            q = math.floor(scaled + 0.5)
        else:
            q = math.copysign(math.floor(abs(scaled) + 0.5), scaled)
        q = min(max(q, Q_MIN), Q_MAX)
        error = value - math.ldexp(q, -fp)
        square = error * error
        if square >= 2.0 ** -100:
            bound = max(bound, square * (1 - 2.0 ** -20))
    return bound


def _search_sums(x, positions, mode, x_min, x_max, wanted=None):
    """({fp: candidate_errors' sum}, SearchResult.quantized) for the positions that can
    win the search. Where the stacked pass does not apply: every position, no values.
    Otherwise a first pass over the _FIRST_CANDIDATES with the lowest error bounds
    (and `wanted`, a position whose values the caller will need, if a candidate), a
    second over the others whose bound does not exceed the smallest sum so far. One
    left out cannot win: a float32 sum of squares is at least its largest term (each
    addition of a non-negative number, rounded to nearest, gives at least what it
    started from), and so above a sum that was computed."""
    if not _stacked_allowed(x, positions, x_max):
        return dict(zip(positions, candidate_errors(x, positions, mode, x_max))), {}
    extremes = (x_max,) if x_min == 0 else (x_min, x_max)   # 0 adds nothing: its error is 0
    floors = {fp: _error_floor(extremes, fp, mode) for fp in positions}
    order = sorted(positions, key=lambda fp: (floors[fp], fp))
    first = order[:_FIRST_CANDIDATES]
    if wanted in positions and wanted not in first:
        first.append(wanted)
    sums, values = {}, {}
    for fps in (first, None):
        if fps is None:   # the second pass
            smallest = min(sums.values())
            fps = [fp for fp in order if fp not in sums and not floors[fp] > smallest]
            if not fps:
                break
        errors, quantized = _stacked(x, tuple(fps), mode, x_min, x_max)
        sums.update(zip(fps, _row_sums(errors)))
        if mode == HALF_UP:
            values.update((fp, (quantized, k)) for k, fp in enumerate(fps))
    return sums, values


def search(x, scope, mode, name="a tensor", non_negative=False, wanted=None):
    """The "diffs" search, as a SearchResult: fix_position's position, and what the
    search saw and computed on the way. non_negative: x holds no negative value (a
    ReLU's output), so its minimum need not be found; wanted: a position whose
    fake-quantized values the caller will need, computed with the candidates if it is one."""
    x = (x.detach() if x.requires_grad else x).float()
    x_min, x_max = _value_range(x, name, non_negative)
    base = _first_candidate(x_min, x_max)
    if base is None:
        return SearchResult(MAX_FIX_POS, x_min, x_max, {})
    if scope == 1:   # one candidate: its error decides nothing
        return SearchResult(min(base, MAX_FIX_POS), x_min, x_max, {})
    positions = tuple(range(base, base + scope))
    sums, values = _search_sums(x, positions, mode, x_min, x_max, wanted)
    best, best_sse = base, None
    for fp in positions:   # in order, a strictly smaller sum replaces: the first on ties
        if fp in sums and (best_sse is None or sums[fp] < best_sse):
            best, best_sse = fp, sums[fp]
    return SearchResult(min(best, MAX_FIX_POS), x_min, x_max, values)


# The CPU allocator's alignment (c10's gAlignment): the kernels downstream of a
# quantized activation (MKL's sgemm above all) saw it aligned so.
_ALIGNMENT = 64


def searched_values(found, fp, like):
    """found.quantized[fp] in the shape of `like` (the tensor searched), or None where the
    search did not compute it or `like` is followed by autograd (the values are not). A
    row that does not start on the allocator's alignment is copied: where kernels
    read it, it must look as a tensor of its own would. Only where within_int32 holds
    for fp is it fake_quantize(like, fp, "half_up")."""
    rows = found.quantized.get(fp)
    if rows is None or _grad_tracked(like):
        return None
    row = rows[0][rows[1]]
    if row.data_ptr() % _ALIGNMENT:
        row = row.clone()
    return row.view(like.shape)


def fix_position(x, scope, mode, name="a tensor"):
    """The "diffs" search: the position, among `scope` candidates from the one
    that just covers x's range, with the smallest float32 sum of squared errors
    (the first one on ties), capped at MAX_FIX_POS."""
    return search(x, scope, mode, name).position
