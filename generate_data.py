"""Stage 1: synthetic regression data, data/{train,valid,test}.npy.

Features x_j ~ N(0, 1) mapped through sin (even columns) or cos (odd columns);
the target is their sum; the stored features carry 1e-3 Gaussian noise.
Rows are float64 (features..., target), split 75% / 5% / 20%.

The same bytes on every machine: sin and cos are computed exactly and rounded once
(numpy's and libm's differ in the last bit by CPU features and versions), and the
target sums the columns left to right.
"""
import os

from flow import start_stage

start_stage(__name__)   # first: kernels pinned and Ctrl-C handled before torch is imported

import numpy as np

from flow.checked_io import ArgumentParser, InputError, cli, positive_int, save_npy, seed

SPLITS = ("train", "valid", "test")
# From 20 rows on, every split gets a row (5 % of 20 is 1); below, some counts
# leave the valid split empty (6, 7, 8, 11, ...) and others do not, so 20 is the rule.
MIN_SAMPLES = 20


# Fixed-point bits of the exact sin and cos: far below float64's 53, so that rounding
# once to float64 gives the correctly rounded value.
FIXED_BITS = 128
TINY = 2.0 ** -28


def sin_cos(x):
    """(sin x, cos x) of a float, correctly rounded to float64: Taylor series in integer
    fixed point, the same on any machine (no libm, no SIMD)."""
    x = float(x)
    if abs(x) < TINY:   # x^2/2 is below half an ulp of 1: sin rounds to x (its sign kept), cos to 1
        return x, 1.0
    one = 1 << FIXED_BITS
    num, den = x.as_integer_ratio()
    x_fixed = (num << FIXED_BITS) // den
    x2 = (x_fixed * x_fixed) >> FIXED_BITS
    sums = []
    for term, first in ((x_fixed, 2), (one, 1)):   # sin: x - x^3/3! ...; cos: 1 - x^2/2! ...
        total, k = term, first
        while term:
            term = -((term * x2) >> FIXED_BITS) // (k * (k + 1))
            total += term
            k += 2
        sums.append(total / one)   # int / int: rounded once, to nearest
    return tuple(sums)


def make_rows(n_samples, input_size=2, seed=42):
    np.random.seed(seed)
    X = np.random.randn(n_samples, input_size)
    for j in range(input_size):
        X[:, j] = [sin_cos(v)[j % 2] for v in X[:, j]]   # sin on even columns, cos on odd ones
    y = X[:, 0].copy()
    for j in range(1, input_size):
        y += X[:, j]
    X_noisy = X + 1e-3 * np.random.randn(*X.shape)
    return np.hstack([X_noisy, y[:, None]])


def split_rows(rows):
    """{split name: rows}; at least MIN_SAMPLES rows, so that every split gets one."""
    n = len(rows)
    if n < MIN_SAMPLES:
        raise InputError("--n_samples {}: too small to split 75/5/20 % into train/valid/test (use at least {})".format(
            n, MIN_SAMPLES))
    return dict(zip(SPLITS, np.split(rows, [int(0.75 * n), int(0.8 * n)])))


def write_splits(parts, output_dir):
    for name, part in parts.items():
        save_npy(os.path.join(output_dir, name + ".npy"), part)


def main():
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_samples", type=positive_int, default=100,
                        help="rows in all, split 75/5/20 %% into train/valid/test (at least {})".format(MIN_SAMPLES))
    parser.add_argument("--output_dir", default="data", help="folder that gets train.npy, valid.npy and test.npy")
    parser.add_argument("--seed", type=seed, default=42, help="numpy seed of the features and their noise")
    parser.add_argument("--input_size", type=positive_int, default=2,
                        help="features per row (sin on even columns, cos on odd ones), then the target column")
    args = parser.parse_args()

    parts = split_rows(make_rows(args.n_samples, args.input_size, args.seed))
    write_splits(parts, args.output_dir)
    print("wrote {}: {}".format(args.output_dir, ", ".join("{} {} rows".format(n, len(p)) for n, p in parts.items())))


if __name__ == "__main__":
    cli(main)
