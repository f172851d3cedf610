"""The fast search of vaiq/fixpoint.py (stacked candidates, int32 rounding, pruned
candidates) against a plain reference written here from the spec ("Numbers", "Choosing a
fix position"): one fake-quantize and one torch.sum per candidate. Positions, every
candidate's float32 sum of squared errors and the fake-quantized values must agree to
the bit, on random tensors of every kind the calibration meets and some it should not.
"""
import math
import struct
import warnings

import numpy as np
import pytest
import torch

from vaiq import fixpoint
from vaiq.fixpoint import HALF_AWAY, HALF_UP

MODES = (HALF_UP, HALF_AWAY)


# ---------------------------------------------------------------- the reference

def ref_round(x, mode):
    if mode == HALF_UP:
        low = torch.floor(x)
        return low + (x - low >= 0.5).to(x.dtype)
    magnitude = ref_round(torch.abs(x), HALF_UP)
    return torch.where(x < 0, -magnitude, magnitude)


def ref_fake_quantize(x, fp, mode):
    rounded = ref_round(x * (2.0 ** fp), mode)
    overflow = ~((rounded >= -2.0 ** 31) & (rounded < 2.0 ** 31))
    q = torch.where(overflow, torch.full_like(rounded, -128.0), torch.clamp(rounded, -128, 127)) + 0.0
    return q * (2.0 ** -fp)


def ref_sums(x, positions, mode):
    x = x.detach().float()
    return [torch.sum((x - ref_fake_quantize(x, fp, mode)) ** 2).item() for fp in positions]


def ref_base(x):
    """The first candidate, or None where every candidate is past the cap."""
    x_min, x_max = np.float32(x.min().item()), np.float32(x.max().item())
    step = max(x_min / np.float32(-128.5), x_max / np.float32(127.5))
    if not step > 0:
        return 18
    with np.errstate(over="ignore"):
        inverse = np.float32(1.0) / step
    return int(np.floor(np.log2(inverse))) if np.isfinite(inverse) else None


def ref_fix_position(x, scope, mode):
    base = ref_base(x)
    if base is None:
        return 12
    best, best_sse = base, None
    for fp, sse in zip(range(base, base + scope), ref_sums(x, range(base, base + scope), mode)):
        if best_sse is None or sse < best_sse:
            best, best_sse = fp, sse
    return min(best, 12)


def same_bits(a, b):
    return len(a) == len(b) and all(struct.pack("<d", u) == struct.pack("<d", v) or (math.isnan(u) and math.isnan(v))
                                    for u, v in zip(a, b))


def same_tensor_bits(a, b):
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


# ---------------------------------------------------------------- random tensors

def draw(rng, n):
    kind = rng.randint(10)
    scale = 10.0 ** rng.uniform(-30, 30) if rng.rand() < 0.3 else 10.0 ** rng.uniform(-3, 3)
    if kind == 0:
        x = rng.standard_normal(n) * scale
    elif kind == 1:     # a ReLU's output
        x = np.maximum(rng.standard_normal(n), 0) * scale
    elif kind == 2:     # exact half-LSB ties and zeros at a likely position
        x = (rng.randint(-300, 300, n) + 0.5) * 2.0 ** -rng.randint(-10, 20)
        x[rng.rand(n) < 0.3] = 0
    elif kind == 3:     # all zeros, or one value
        x = np.full(n, 0.0 if rng.rand() < 0.5 else rng.standard_normal() * scale)
    elif kind == 4:     # outliers that reach int32 at some candidates
        x = rng.standard_normal(n) * scale
        x[rng.randint(n, size=min(n, 3))] = rng.choice([1e9, -1e9, 3e9, 1e30]) * scale
    elif kind == 5:     # subnormal and tiny
        x = rng.standard_normal(n) * 10.0 ** rng.uniform(-45, -36)
    elif kind == 6:     # at the edges of the grid and of rounding, a few ulps off
        edges = np.array([127.5, -128.5, 127.0, -128.0, 0.5, -0.5, 0.49999997, -0.49999997, 1.5, 2.5, -2.5,
                          1e-30, -1e-30, 63.75, 255.0], dtype=np.float32)
        x = rng.choice(edges, n) * (1 + rng.randint(-2, 3, n) * 2.0 ** -23) * 2.0 ** -rng.randint(-20, 30)
    elif kind == 7:     # heavy tails
        x = rng.standard_cauchy(n) * scale
    elif kind == 8:     # any finite float32
        x = rng.randint(-2 ** 31, 2 ** 31, 4 * n, dtype=np.int64).astype(np.int32).view(np.float32)
        x = x[np.isfinite(x)][:n].astype(np.float64)
    else:               # near the float32 maximum: sums overflow to inf
        x = rng.standard_normal(n) * 1e38
    return torch.from_numpy(np.clip(x, -3.4e38, 3.4e38).astype(np.float32))


def random_cases(seed, count):
    rng = np.random.RandomState(seed)
    for _ in range(count):
        n = int(np.exp(rng.uniform(0, math.log(20000))))
        x = draw(rng, n)
        if x.numel() % 8 == 0 and rng.rand() < 0.3:
            x = x.reshape(-1, 8)
        yield x, MODES[rng.randint(2)], int(rng.choice([5, 5, 5, 1, 3, 8]))


@pytest.mark.parametrize("seed", range(8))
def test_positions_and_sums_equal_the_reference(seed):
    for x, mode, scope in random_cases(seed, 60):
        assert fixpoint.fix_position(x, scope, mode) == ref_fix_position(x, scope, mode)
        base = ref_base(x)
        if base is None:
            continue
        for positions in (range(base, base + scope), range(base - 3, base + 9), (base + 1, base)):
            assert same_bits(fixpoint.candidate_errors(x, positions, mode), ref_sums(x, positions, mode)), positions


@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 4096, 12288, 100000])
def test_sums_of_every_size(n):
    x = torch.relu(torch.randn(n, generator=torch.Generator().manual_seed(n))) * 3
    for mode in MODES:
        base = ref_base(x)
        positions = range(base - 2, base + 6)
        assert same_bits(fixpoint.candidate_errors(x, positions, mode), ref_sums(x, positions, mode))
        assert fixpoint.fix_position(x, 5, mode) == ref_fix_position(x, 5, mode)


def test_sums_on_two_threads():
    """With several threads torch splits a large sum: the candidates are then summed one by one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for n in (20000, 40000, 100000):
            x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 10
            base = ref_base(x)
            for mode in MODES:
                positions = range(base, base + 5)
                assert same_bits(fixpoint.candidate_errors(x, positions, mode), ref_sums(x, positions, mode))
    finally:
        torch.set_num_threads(threads)


def test_a_tensor_that_is_not_contiguous():
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(1)).t()
    for mode in MODES:
        positions = range(0, 9)
        assert same_bits(fixpoint.candidate_errors(x, positions, mode), ref_sums(x, positions, mode))
        assert fixpoint.fix_position(x, 5, mode) == ref_fix_position(x, 5, mode)


def test_first_candidate_wins_ties():
    """All-zero and on-grid tensors: several candidates have the sum 0."""
    for x in (torch.zeros(10), torch.tensor([0.25, -0.5, 1.0, 0.0]), torch.full((3, 3), 2.0 ** -40)):
        for mode in MODES:
            assert fixpoint.fix_position(x, 5, mode) == ref_fix_position(x, 5, mode)


def test_a_single_large_error_is_not_pruned_away():
    """Every error in one element: a candidate's sum is exactly that element's term, the bound
    the pruning uses is just below it."""
    for value in (127.5, 127.75, 200.0, 255.0, 1000.0, 1e6):
        for zeros in (1, 63, 5000):
            x = torch.cat([torch.zeros(zeros), torch.tensor([value, -value / 3])])
            for mode in MODES:
                assert fixpoint.fix_position(x, 5, mode) == ref_fix_position(x, 5, mode)


@pytest.mark.parametrize("seed", range(4))
def test_the_pruning_bound_is_below_the_extremes_squared_errors(seed):
    """A candidate is left out when its bound exceeds a computed sum: the bound must not exceed
    the float32 squared error of x's largest or smallest value (a float32 sum of squares is
    at least each of its terms)."""
    for x, mode, _ in random_cases(200 + seed, 40):
        base = ref_base(x)
        if base is None or not np.isfinite(x.max().item()):
            continue
        extremes = torch.stack([x.min(), x.max()])
        for fp in range(base - 1, base + 6):
            if not fixpoint._stacked_allowed(x.contiguous(), (fp,), x.max().item()):
                continue
            terms = (extremes - ref_fake_quantize(extremes, fp, mode)) ** 2
            bound = fixpoint._error_floor(extremes.tolist(), fp, mode)
            assert bound <= terms.max().item(), (fp, extremes.tolist())   # a float32 square of at least the bound
            largest = terms.max().item()
            assert bound >= largest * (1 - 2.0 ** -19) or largest < 2.0 ** -90 or largest == math.inf   # close


def test_nan_and_infinity_are_refused():
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(fixpoint.InputError, match="beyond the float32 range"):
            fixpoint.fix_position(torch.tensor([1.0, bad]), 5, HALF_UP, "t")


# ---------------------------------------------------------------- fake-quantizing activations

@pytest.mark.parametrize("seed", range(4))
def test_fake_quantize_within_int32_equals_the_reference(seed):
    rng = np.random.RandomState(100 + seed)
    for x, mode, _ in random_cases(100 + seed, 40):
        x_min, x_max = np.float32(x.min().item()), np.float32(x.max().item())
        base = ref_base(x) or 0
        for fp in set(range(base - 4, base + 6)) | {int(rng.randint(-140, 140))}:
            if not np.isfinite(x_max) or not fixpoint.within_int32(x_min, x_max, fp):
                continue
            scaled = ref_round(x * (2.0 ** fp), mode)
            assert ((scaled >= -2.0 ** 31) & (scaled < 2.0 ** 31)).all(), fp
            assert same_tensor_bits(fixpoint.fake_quantize_within_int32(x, fp, mode), ref_fake_quantize(x, fp, mode))
            assert same_tensor_bits(fixpoint.fake_quantize(x, fp, mode), ref_fake_quantize(x, fp, mode))


@pytest.mark.parametrize("shape", [(64, 192), (7, 3), (1,), (5, 1)])
def test_the_searched_values_are_the_fake_quantized_ones(shape):
    """What the search computed on its way is what fake_quantize gives, and starts where a
    tensor of its own would (rows of 21 floats do not: they are copied)."""
    x = torch.relu(torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape))))
    x[0] = 0.7
    for non_negative in (False, True):
        found = fixpoint.search(x, 5, HALF_UP, "t", non_negative=non_negative, wanted=ref_base(x) + 3)
        assert found.position == ref_fix_position(x, 5, HALF_UP)
        assert found.quantized and (found.x_min == x.min().item() or non_negative)
        for fp in found.quantized:
            assert fixpoint.within_int32(found.x_min, found.x_max, fp)
            values = fixpoint.searched_values(found, fp, x)
            assert same_tensor_bits(values, ref_fake_quantize(x, fp, HALF_UP))
            assert values.data_ptr() % 64 == 0
    assert not fixpoint.search(x, 5, HALF_AWAY, "t").quantized   # half_up only


def test_the_clamp_is_left_out_only_where_nothing_saturates():
    """Rows whose range rounds into [-128, 127] skip the clamp: at the edges, a value one ulp
    inside needs none, the edge itself does (127.5 rounds to 128; -128.5 away from zero to -129)."""
    for fp in (-20, 0, 5, 30):
        unit = 2.0 ** -fp
        inside_max, inside_min = np.nextafter(np.float32(127.5 * unit), np.float32(0)), \
            np.nextafter(np.float32(-128.5 * unit), np.float32(0))
        assert not fixpoint._saturates(inside_min, inside_max, fp)
        assert fixpoint._saturates(np.float32(0), np.float32(127.5 * unit), fp)
        assert fixpoint._saturates(np.float32(-128.5 * unit), np.float32(0), fp)
        assert fixpoint._saturates(None, np.float32(1), fp)
        x = torch.tensor([inside_min, inside_max, 127.5 * unit, -128.5 * unit, 0.5 * unit, -0.5 * unit])
        for mode in MODES:
            for end in (2, 4, 6):
                part = x[:end]
                lo, hi = np.float32(part.min().item()), np.float32(part.max().item())
                got = fixpoint.fake_quantize_within_int32(part, fp, mode, lo, hi)
                assert same_tensor_bits(got, ref_fake_quantize(part, fp, mode))
                errors, _ = fixpoint._stacked(part, (fp, fp + 1), mode, lo, hi)   # the first row unclamped
                assert same_bits(fixpoint._row_sums(errors), ref_sums(part, (fp, fp + 1), mode))


def test_within_int32_stops_at_the_overflow():
    x = torch.tensor([67108860.0, -67108864.0])
    assert fixpoint.within_int32(np.float32(-67108864.0), np.float32(67108860.0), 5)
    assert not fixpoint.within_int32(np.float32(-1.0), np.float32(67108864.0), 5)   # 2^26 * 2^5 = 2^31
    assert not fixpoint.within_int32(np.float32(-67108872.0), np.float32(1.0), 5)   # below -2^31
    assert not fixpoint.within_int32(np.float32(0.0), np.float32(1.0), 127)         # 2^127: not a normal position
    assert same_tensor_bits(fixpoint.fake_quantize_within_int32(x, 5, HALF_UP), ref_fake_quantize(x, 5, HALF_UP))


def test_clamping_before_rounding_near_every_half_and_whole_number():
    """Every float32 within 40 ulps of each k/2 in [-130, 130], tiny ones of every exponent, the
    range's ends and beyond (up to 2^31, -inf and below -2^31) and random ones: the shorter
    quantization equals quantize()'s clamp(R(s)). (Every float32 below 2^31 was checked once.)"""
    centres = np.arange(-260, 261, dtype=np.float32) / 2
    near = (centres.view(np.int32).astype(np.int64)[:, None] + np.arange(-40, 41)[None, :]).ravel()
    tiny = np.arange(0, 0x3f000000, 4099)   # every exponent below 1/2
    values = np.concatenate([near, tiny]).astype(np.int32).view(np.float32)
    values = values[np.isfinite(values)]   # below 0's bits: NaNs
    rng = np.random.RandomState(0)
    beyond = np.array([2.0 ** 31 - 128, 2.0 ** 24 + 1, 1e9, -1e9, -2.0 ** 31, -2.0 ** 31 - 256, -3e38, -np.inf],
                      dtype=np.float32)
    x = torch.from_numpy(np.concatenate([values, -values, beyond, rng.uniform(-300, 300, 100000).astype(np.float32)]))
    for mode in MODES:
        expected = ref_fake_quantize(x, 0, mode)
        got = x.clone()
        fixpoint._quantize_in_place(got.numpy(), mode)
        if mode == HALF_UP:
            assert same_tensor_bits(got, expected)
        else:
            assert same_tensor_bits(got + 0.0, expected)


def test_fake_quantized_activations_are_laid_out_as_torch_lays_them_out():
    """The fake-quantized values go on to a matmul (MKL's sgemm may round otherwise on
    another address or layout): a row-major x gets a new row-major tensor on the
    allocator's alignment, any other layout the strides torch's own x * 2^fp gives it.
    numpy computes them: nothing may warn where torch's kernels do not (overflow to inf)."""
    base = torch.randn(4096, generator=torch.Generator().manual_seed(5)) * 3
    layouts = [base[:64 * 48].view(64, 48), base[:48].view(1, 48).t(), base[1:65].view(8, 8), base[:96].view(8, 12).t(),
               base[::3], torch.as_strided(base, (4, 1, 6), (6, 50, 1)), base[7:8].view(()), base[:0]]
    huge = torch.tensor([3e38, -3e38, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x in layouts:
            for mode in MODES:
                got = fixpoint.fake_quantize_within_int32(x, 4, mode)
                assert same_tensor_bits(got, ref_fake_quantize(x, 4, mode))
                if x.stride() == fixpoint._row_major_strides(x.shape):
                    assert got.stride() == x.stride() and got.data_ptr() % 64 == 0
                elif mode == HALF_UP:
                    assert got.stride() == (x * 16.0).stride()
        for mode in MODES:
            assert same_tensor_bits(fixpoint.fake_quantize_within_int32(huge, -126, mode),
                                    ref_fake_quantize(huge, -126, mode))
            assert same_bits(fixpoint.candidate_errors(huge, (-126, -125), mode), ref_sums(huge, (-126, -125), mode))
            low = huge[1:]   # -3e38 * 2 is -inf
            assert same_bits(fixpoint.candidate_errors(low, (0, 1), mode), ref_sums(low, (0, 1), mode))
