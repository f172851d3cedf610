"""Stage 1: generate_data.py writes exactly the recipe's rows, split 75/5/20, reproducibly."""
import math
import os
import platform

import numpy as np
import pytest

from conftest import REPO, run_script

SPLITS = ("train", "valid", "test")


def exact(function, x):
    """function(x) correctly rounded to float64, by mpmath at 300 bits."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workprec(300):
        return float(function(mpmath.mpf(float(x))))


def recipe(n_samples, input_size, seed):
    """The data recipe written out column by column, independently of generate_data.py:
    x ~ N(0, 1); sin on even columns, cos on odd ones, correctly rounded; target = their
    sum from the left; the features then get 1e-3 Gaussian noise drawn after x from the
    same stream."""
    mpmath = pytest.importorskip("mpmath")
    np.random.seed(seed)
    x = np.random.randn(n_samples, input_size)
    clean = np.empty_like(x)
    for j in range(input_size):
        clean[:, j] = [exact(mpmath.sin if j % 2 == 0 else mpmath.cos, v) for v in x[:, j]]
    target = clean[:, 0].copy()
    for j in range(1, input_size):
        target = target + clean[:, j]
    noisy = clean + 1e-3 * np.random.randn(n_samples, input_size)
    return np.column_stack([noisy, target])


def generate(out_dir, *flags):
    result = run_script("generate_data.py", "--output_dir", out_dir, *flags)
    assert result.returncode == 0, result.stderr
    return {name: np.load(os.path.join(str(out_dir), name + ".npy")) for name in SPLITS}


def read_bytes(folder):
    files = {}
    for name in SPLITS:
        with open(os.path.join(str(folder), name + ".npy"), "rb") as f:
            files[name] = f.read()
    return files


@pytest.mark.parametrize("input_size", [1, 2, 3])
def test_rows_are_the_recipe(tmp_path, input_size):
    parts = generate(tmp_path, "--n_samples", 40, "--input_size", input_size, "--seed", 7)
    rows = np.concatenate([parts[name] for name in SPLITS])
    expected = recipe(40, input_size, 7)
    assert rows.dtype == np.float64 and rows.shape == (40, input_size + 1)
    np.testing.assert_array_equal(rows, expected)
    assert [len(parts[name]) for name in SPLITS] == [30, 2, 8]


def test_split_of_10000_rows(tmp_path):
    parts = generate(tmp_path, "--n_samples", 10000)
    assert [parts[name].shape for name in SPLITS] == [(7500, 3), (500, 3), (2000, 3)]


def test_input_size_2_is_the_default_recipe(tmp_path):
    default = generate(tmp_path / "default", "--n_samples", 100)
    explicit = generate(tmp_path / "explicit", "--n_samples", 100, "--input_size", 2, "--seed", 42)
    expected = recipe(100, 2, 42)
    for parts in (default, explicit):
        np.testing.assert_array_equal(np.concatenate([parts[name] for name in SPLITS]), expected)


def test_same_seed_same_bytes_other_seed_other_rows(tmp_path):
    for name in ("a", "b", "c"):
        generate(tmp_path / name, "--n_samples", 200, "--seed", 3 if name != "c" else 4)
    assert read_bytes(tmp_path / "a") == read_bytes(tmp_path / "b")
    assert read_bytes(tmp_path / "a")["train"] != read_bytes(tmp_path / "c")["train"]


def test_committed_data_is_the_makefile_recipe(tmp_path):
    """Byte for byte on every numpy: sin and cos do not go through numpy or libm."""
    generate(tmp_path, "--n_samples", 10000, "--seed", 42)
    assert read_bytes(os.path.join(REPO, "data")) == read_bytes(tmp_path)


# numpy's SIMD loops switched off, and glibc's FMA/AVX2 variants of its math functions
# (libm's sin and cos differ between them in the last bit on about 1 value in 1000)
OTHER_CPU = {"NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512_SKX AVX2 FMA3 F16C AVX",
             "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F"}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 CPU features")
def test_the_same_bytes_without_simd(tmp_path, monkeypatch):
    generate(tmp_path / "native", "--n_samples", 3000, "--seed", 42)
    for name, value in OTHER_CPU.items():
        monkeypatch.setenv(name, value)
    generate(tmp_path / "plain", "--n_samples", 3000, "--seed", 42)
    assert read_bytes(tmp_path / "native") == read_bytes(tmp_path / "plain")


@pytest.mark.parametrize("x", [0.0, -0.0, 5e-324, -2.0 ** -28, 2.0 ** -28, 3.3e-5, 1.5707963267948966,
                               3.141592653589793, -7.9, 12.0, -25.3])
def test_sin_cos_are_correctly_rounded(x):
    import generate_data
    mpmath = pytest.importorskip("mpmath")

    s, c = generate_data.sin_cos(x)
    assert (s, c) == (exact(mpmath.sin, x), exact(mpmath.cos, x))
    if abs(x) < 1e-3:   # the sign of a zero or tiny x is kept
        assert math.copysign(1, s) == math.copysign(1, x)


def test_the_smallest_count_splits_into_every_file(tmp_path):
    parts = generate(tmp_path, "--n_samples", 20)
    assert [len(parts[name]) for name in SPLITS] == [15, 1, 4]
