"""Stage 1: synthetic regression data, data/{train,valid,test}.npy.

Features x_j ~ N(0, 1) mapped through sin (even columns) or cos (odd columns);
the target is their sum; the stored features carry 1e-3 Gaussian noise.
Rows are float64 (features..., target), split 75% / 5% / 20%.
"""
import os

from interruption import exit_on_interrupt

exit_on_interrupt(__name__)   # first: the imports below take seconds (torch)

import numpy as np

from checked_io import ArgumentParser, InputError, cli, positive_int, save_npy, seed

SPLITS = ("train", "valid", "test")
# From 20 rows on, every split gets a row (5 % of 20 is 1); below, some counts
# leave the valid split empty (6, 7, 8, 11, ...) and others do not, so 20 is the rule.
MIN_SAMPLES = 20


def make_rows(n_samples, input_size=2, seed=42):
    np.random.seed(seed)
    X = np.random.randn(n_samples, input_size)
    X[:, 0::2] = np.sin(X[:, 0::2])
    X[:, 1::2] = np.cos(X[:, 1::2])
    y = X.sum(axis=1)
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
    parser.add_argument("--n_samples", type=positive_int, default=100)
    parser.add_argument("--output_dir", default="data")
    parser.add_argument("--seed", type=seed, default=42)
    parser.add_argument("--input_size", type=positive_int, default=2)
    args = parser.parse_args()

    parts = split_rows(make_rows(args.n_samples, args.input_size, args.seed))
    write_splits(parts, args.output_dir)
    print("wrote {}: {}".format(args.output_dir, ", ".join("{} {} rows".format(n, len(p)) for n, p in parts.items())))


if __name__ == "__main__":
    cli(main)
