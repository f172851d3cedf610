"""The integer DPU reference against the golden vai_q_pytorch results and exact
rational arithmetic."""
import json
import os
import shutil
from fractions import Fraction
from math import floor

import numpy as np
import pytest

from test_quantizer_golden import CASES as GOLDEN_CASES
from test_quantizer_golden import case_info, deployed_outputs, expected
from dpu import reference
from dpu.int_model import IntLayer, IntModel
from dpu.xmodel import read_xmodel

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "golden")
CASES = ["p1_trained_in2", "p2_trained_in2_nocorr", "p3_random_in4"]

# The FFN as vai_q_pytorch 3.5 names it: (layer, Linear op, ReLU op, output tensor).
FFN_LAYERS = [
    ("l1", "FFN__FFN_Linear_l1__ret_1", "FFN__FFN_ret_3", "FFN::nndct_relu_2"),
    ("l2", "FFN__FFN_Linear_l2__ret_5", "FFN__FFN_ret_7", "FFN::nndct_relu_4"),
    ("l3", "FFN__FFN_Linear_l3__ret", None, "FFN::nndct_dense_5"),
]


def dump_dir(case):
    return os.path.join(GOLDEN, case, "expected", "quantize_result", "deploy_check_data_int", "FFN")


def golden_int_model(case):
    """The IntModel of a golden case: int8 parameters from the `_fix.bin` dumps,
    positions from quant_info.json."""
    result = os.path.join(GOLDEN, case, "expected", "quantize_result")
    with open(os.path.join(result, "quant_info.json")) as f:
        info = json.load(f)

    def position(section, key):
        return info[section][key][0][1]

    def fix(op):
        return np.fromfile(os.path.join(dump_dir(case), op + "_fix.bin"), dtype=np.int8)

    with open(os.path.join(GOLDEN, case, "case.json")) as f:
        n = json.load(f)["input_size"]
    widths = [n, 3 * n, 2 * n, 1]
    layers = []
    for k, (name, op, relu_op, output) in enumerate(FFN_LAYERS):
        weight_op, bias_op = "FFN__{}_weight".format(name), "FFN__{}_bias".format(name)
        layers.append(IntLayer(
            name=name, weight=fix(weight_op).reshape(widths[k + 1], widths[k]), bias=fix(bias_op),
            fp_w=position("param", "FFN::{}.weight".format(name)),
            fp_b=position("param", "FFN::{}.bias".format(name)),
            fp_out=position("output", output), activation="relu" if relu_op else None, op_name=op,
            activation_op_name=relu_op, weight_op_name=weight_op, bias_op_name=bias_op))
    return IntModel(net_name="FFN", input_op_name="FFN__input_0", input_size=n,
                    fp_in=position("output", "FFN::nndct_input_0"), layers=layers)


def golden_features(case, n):
    return np.load(os.path.join(GOLDEN, case, "calib.npy"))[:, :n]


# ---------------------------------------------------------------- golden cases

@pytest.mark.parametrize("case", CASES)
def test_golden_test_outputs_exact(case):
    model = golden_int_model(case)
    got = reference.outputs(model, golden_features(case, model.input_size))
    expected = np.load(os.path.join(GOLDEN, case, "expected", "test_outputs.npy"))
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("case", CASES)
def test_golden_deploy_dumps_exact(case):
    model = golden_int_model(case)
    dumps = reference.deploy_dumps(model, golden_features(case, model.input_size)[0])
    folder_bins = sorted(f for f in os.listdir(dump_dir(case)) if f.endswith(".bin"))
    assert sorted(dumps) == folder_bins
    checks = reference.compare_dumps(dumps, dump_dir(case))
    assert [c.describe() for c in checks if not c.ok] == []
    assert len(checks) == len(folder_bins) == 22
    # Byte for byte, too: no -0.0 and the same dtypes as the files.
    for name, array in dumps.items():
        with open(os.path.join(dump_dir(case), name), "rb") as f:
            assert f.read() == array.tobytes(), name


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_xmodel_alone_gives_the_deployed_outputs_and_every_dump(case):
    """From the real quantizer's xmodel alone, at its batch: every row of the test
    outputs, and every file of the deploy-check folder byte for byte."""
    model = read_xmodel(expected(case, "quantize_result", "FFN_int.xmodel"))
    assert model.batch == case_info(case).get("deploy_batch", 1)
    x = golden_features(case, model.input_size).astype(np.float32)
    got = reference.outputs(model, x)
    assert got.tobytes() == deployed_outputs(case, x).tobytes()
    dumps = reference.deploy_dumps(model, x[:model.batch])
    folder = expected(case, "quantize_result", "deploy_check_data_int", "FFN")
    assert sorted(dumps) == sorted(f for f in os.listdir(folder) if f.endswith(".bin"))
    for name, array in dumps.items():
        with open(os.path.join(folder, name), "rb") as f:
            assert f.read() == array.tobytes(), name


def test_compare_dumps_reports_each_problem(tmp_path):
    case = CASES[0]
    model = golden_int_model(case)
    dumps = reference.deploy_dumps(model, golden_features(case, model.input_size)[0])
    folder = str(tmp_path / "FFN")
    shutil.copytree(dump_dir(case), folder)
    fix = os.path.join(folder, "FFN__FFN_ret_3_fix.bin")
    q = np.fromfile(fix, dtype=np.int8)
    q[2] += 3
    q.tofile(fix)
    os.remove(os.path.join(folder, "FFN__l1_bias.bin"))
    with open(os.path.join(folder, "FFN__l2_weight.bin"), "ab") as f:
        f.write(b"\0")
    open(os.path.join(folder, "FFN__stray.bin"), "wb").close()
    bad = {c.name: c for c in reference.compare_dumps(dumps, folder) if not c.ok}
    assert sorted(bad) == ["FFN__FFN_ret_3_fix.bin", "FFN__l1_bias.bin",
                           "FFN__l2_weight.bin", "FFN__stray.bin"]
    assert (bad["FFN__FFN_ret_3_fix.bin"].n_mismatch, bad["FFN__FFN_ret_3_fix.bin"].max_diff) == (1, 3)
    assert "missing" in bad["FFN__l1_bias.bin"].problem
    assert "bytes" in bad["FFN__l2_weight.bin"].problem
    assert "not produced" in bad["FFN__stray.bin"].problem


# ---------------------------------------------------------------- exact reference

def round_half_up(v):
    return floor(v + Fraction(1, 2))


def clamp8(q):
    return max(reference.Q_MIN, min(reference.Q_MAX, q))


def fraction_reference(model, x_float):
    """Fractions: each tensor rounded once at its own position; the pre-activations."""
    fp = model.fp_in
    h = [[clamp8(round_half_up(Fraction(float(v)) * Fraction(2) ** fp)) for v in row]
         for row in np.asarray(x_float, dtype=np.float32)]
    pres = []
    for layer, i in zip(model.layers, model.input_positions()):
        if layer.kind == "scale":   # per channel: x * s + offset
            pre = [[Fraction(int(q) * int(sq)) * Fraction(2) ** -(i + layer.fp_w)
                    + Fraction(int(bq)) * Fraction(2) ** -layer.fp_b
                    for q, sq, bq in zip(row, layer.weight, layer.bias)] for row in h]
        else:
            pre = [[sum(Fraction(int(q) * int(wq)) * Fraction(2) ** -(i + layer.fp_w)
                        for q, wq in zip(row, w_row))
                    + Fraction(int(bq)) * Fraction(2) ** -layer.fp_b
                    for w_row, bq in zip(layer.weight, layer.bias)] for row in h]
        activated = [[ACTIVATION[layer.activation](v) for v in row] for row in pre]
        h = [[clamp8(round_half_up(v * Fraction(2) ** layer.fp_out)) for v in row] for row in activated]
        pres.append(pre)
    return h, pres


# The activations on exact values (layers.md): leaky-relu's slope is 26/256, relu6 clamps to [0, 6].
ACTIVATION = {
    None: lambda v: v,
    "relu": lambda v: max(v, 0),
    "leaky-relu": lambda v: v if v >= 0 else v * Fraction(26, 256),
    "relu6": lambda v: min(max(v, 0), 6),
}


def exact_pre(trace_layer):
    return [[Fraction(int(n)) * Fraction(2) ** -trace_layer.pre_pos for n in row]
            for row in trace_layer.pre_num]


def one_layer_model(weight, bias, fp_in, fp_w, fp_b, fp_out, relu=False):
    weight = np.asarray(weight, dtype=np.int8)
    layer = IntLayer(name="l1", weight=weight, bias=np.asarray(bias, dtype=np.int8), fp_w=fp_w,
                     fp_b=fp_b, fp_out=fp_out, activation="relu" if relu else None, op_name="N__l1")
    return IntModel(net_name="N", input_op_name="N__input_0", input_size=weight.shape[1],
                    fp_in=fp_in, layers=[layer])


def random_model(rng):
    """Matmul and scale layers with every activation, positions over wide ranges."""
    sizes = [int(s) for s in rng.integers(1, 7, size=rng.integers(2, 5))]
    layers = []
    for k in range(len(sizes) - 1):
        scale = k > 0 and rng.integers(0, 3) == 0   # a BatchNorm1d: keeps the width
        out = sizes[k] if scale else sizes[k + 1]
        sizes[k + 1] = out
        layers.append(IntLayer(
            name="l{}".format(k + 1),
            weight=rng.integers(-128, 128, size=(out,) if scale else (out, sizes[k])).astype(np.int8),
            bias=rng.integers(-128, 128, size=out).astype(np.int8),
            fp_w=int(rng.integers(-2, 11)), fp_b=int(rng.integers(-2, 16)),
            fp_out=int(rng.integers(-3, 12)), activation=[None, "relu", "leaky-relu", "relu6"][rng.integers(0, 4)],
            op_name="N__l{}".format(k + 1), kind="scale" if scale else "matmul"))
    return IntModel(net_name="N", input_op_name="N__input_0", input_size=sizes[0],
                    fp_in=int(rng.integers(-2, 9)), layers=layers)


def random_inputs(rng, model, rows=6):
    """Floats of many scales, with exact ties and near-ties at the input position."""
    scale = 2.0 ** -model.fp_in
    ties = (rng.integers(-140, 140, size=(rows, model.input_size)) + 0.5) * scale
    near = np.nextafter(ties.astype(np.float32), np.float32(0))
    wide = rng.normal(size=(rows, model.input_size)) * 10.0 ** rng.integers(-3, 3)
    return np.concatenate([ties, near, wide]).astype(np.float32)


def test_random_models_match_fraction_reference():
    rng = np.random.default_rng(2024)
    negative_shift_bias = 0
    for _ in range(150):
        model = random_model(rng)
        x = random_inputs(rng, model)
        trace = reference.run(model, x)
        outs, pres = fraction_reference(model, x)
        assert trace.output.tolist() == outs
        for layer_trace, pre in zip(trace.layers, pres):
            assert exact_pre(layer_trace) == pre
        negative_shift_bias += sum(
            reference.shift_bias(i, layer.fp_w, layer.fp_b) < 0
            for layer, i in zip(model.layers, model.input_positions()))
    assert negative_shift_bias > 50


# ---------------------------------------------------------------- rounding units

def test_round_shift_half_up_ties_and_exact_shifts():
    totals = np.array([5, -5, 3, -3, 4, -4, 7, -7], dtype=np.int64)
    # x / 2: 2.5 -> 3, -2.5 -> -2, 1.5 -> 2, -1.5 -> -1, exact values stay, 3.5 -> 4, -3.5 -> -3
    assert reference.round_shift_half_up(totals, 1).tolist() == [3, -2, 2, -1, 2, -2, 4, -3]
    assert reference.round_shift_half_up(totals, 0).tolist() == totals.tolist()
    assert reference.round_shift_half_up(totals, -2).tolist() == (totals * 4).tolist()


@pytest.mark.parametrize("fp", [-3, 0, 5, 12])
def test_input_ties_round_half_up(fp):
    values = np.array([2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 126.5, -127.5]) * 2.0 ** -fp
    assert reference.quantize_input(values, fp).tolist() == [3, -2, 1, 0, 2, -1, 127, -127]


@pytest.mark.parametrize("fp", [-3, 0, 6, 12])
def test_input_just_below_half(fp):
    def below(v):
        return np.nextafter(np.float32(v), np.float32(-np.inf))

    # 0.5 - 2^-25, its negative, -0.5 - 2^-25, 3.5 - 2^-22, -2.5 - 2^-22
    x = np.array([below(0.5), -below(0.5), below(-0.5), below(3.5), below(-2.5)])
    assert reference.quantize_input(x * np.float32(2.0 ** -fp), fp).tolist() == [0, 0, -1, 3, -3]
    # A float64 just below .5 is not a float32: the network input becomes 0.5, a tie.
    assert reference.quantize_input([np.nextafter(0.5, 0) * 2.0 ** -fp], fp).tolist() == [1]


def test_input_saturates_both_sides():
    x = np.array([127.49, 127.5, 1e30, np.inf, -128.5, -128.51, -1e30, -np.inf]) * 2.0 ** -4
    assert reference.quantize_input(x, 4).tolist() == [127, 127, 127, 127, -128, -128, -128, -128]


def test_negative_shift_bias_adds_the_bias_exactly():
    # acc 1 at position 1 (0.5), bias -1 at position 2 (-0.25): 0.25 at position 0 is 0.
    # Rounding the bias to the accumulator first (-0.25 -> 0) would give 0.5 -> 1.
    model = one_layer_model([[1]], [-1], fp_in=0, fp_w=1, fp_b=2, fp_out=0)
    assert reference.shift_bias(0, 1, 2) == -1
    assert reference.run(model, [[1.0]]).output.tolist() == [[0]]


@pytest.mark.parametrize("shift_bias", [-1, -3, -7, -12])
def test_negative_shift_bias_random_ints(shift_bias):
    rng = np.random.default_rng(-shift_bias)
    fp_in, fp_w = 4, 5
    fp_b = fp_in + fp_w - shift_bias
    for fp_out in (fp_in + fp_w - 9, fp_in + fp_w, fp_b):
        model = one_layer_model(rng.integers(-128, 128, size=(8, 5)), rng.integers(-128, 128, size=8),
                                fp_in, fp_w, fp_b, fp_out)
        x = rng.integers(-128, 128, size=(40, 5)) * 2.0 ** -fp_in
        trace = reference.run(model, x)
        outs, pres = fraction_reference(model, x)
        assert trace.output.tolist() == outs
        assert exact_pre(trace.layers[0]) == pres[0]


def test_shift_cut_zero_is_acc_plus_bias():
    # Output position = accumulator position: no rounding at all.
    model = one_layer_model([[3, -2]], [5], fp_in=1, fp_w=2, fp_b=3, fp_out=3)
    assert reference.shift_cut(1, 2, 3) == 0
    x = np.array([[4, 7], [-9, 2]]) * 2.0 ** -1
    assert reference.run(model, x).output.tolist() == [[3 * 4 - 2 * 7 + 5], [3 * -9 - 2 * 2 + 5]]


def test_layer_output_saturates_both_sides():
    model = one_layer_model([[127, 127], [-128, -128]], [0, 0], fp_in=0, fp_w=0, fp_b=0, fp_out=0)
    assert reference.run(model, [[100.0, 100.0]]).output.tolist() == [[127, -128]]


def test_relu_only_when_fused():
    weight, bias, x = [[1], [-1]], [0, 0], [[3.0]]
    plain = one_layer_model(weight, bias, fp_in=0, fp_w=0, fp_b=0, fp_out=0)
    fused = one_layer_model(weight, bias, fp_in=0, fp_w=0, fp_b=0, fp_out=0, relu=True)
    assert reference.run(plain, x).output.tolist() == [[3, -3]]
    assert reference.run(fused, x).output.tolist() == [[3, 0]]
    # -0.5 rounds half up to 0 before the ReLU; the pre-activation keeps the exact value.
    tie = one_layer_model([[-1]], [0], fp_in=0, fp_w=0, fp_b=0, fp_out=-1, relu=True)
    trace = reference.run(tie, [[1.0]])
    assert trace.output.tolist() == [[0]] and trace.layers[0].pre_value().tolist() == [[-1.0]]


def test_positions_too_far_apart_are_refused():
    model = one_layer_model([[1]], [1], fp_in=0, fp_w=0, fp_b=-60, fp_out=0)
    with pytest.raises(ValueError, match="layer l1: fix positions too far apart"):
        reference.run(model, [[1.0]])


def test_check_model_names_the_layer():
    model = one_layer_model([[1, 2]], [1], fp_in=0, fp_w=0, fp_b=0, fp_out=0)
    model.layers[0].bias = np.array([1, 2], dtype=np.int8)
    with pytest.raises(ValueError, match="layer l1: bias shape"):
        reference.check_model(model)
    model.layers[0].bias = np.array([1])
    model.layers[0].weight = np.array([[1, 300]])
    with pytest.raises(ValueError, match="layer l1: weight is not int8"):
        reference.check_model(model)


def test_random_models_round_trip_through_the_xmodel(tmp_path):
    """Every op kind and activation, at batches 1 and 4: written, read back, the same model."""
    from dpu.xmodel import write_xmodel
    rng = np.random.default_rng(7)
    kinds = set()
    for k in range(40):
        model = random_model(rng)
        model.batch = int(rng.choice([1, 4]))
        for n, layer in enumerate(model.layers):
            layer.weight_op_name, layer.bias_op_name = "N__l{}_weight".format(n + 1), "N__l{}_bias".format(n + 1)
            layer.activation_op_name = "N__act{}".format(n + 1) if layer.activation else None
            kinds.add((layer.kind, layer.activation))
        path = str(tmp_path / "m{}.xmodel".format(k))
        write_xmodel(model, path)
        back = read_xmodel(path)
        assert (back.batch, back.fp_in, back.input_size) == (model.batch, model.fp_in, model.input_size)
        for ours, theirs in zip(back.layers, model.layers):
            assert (ours.kind, ours.activation, ours.fp_w, ours.fp_b, ours.fp_out, ours.name) == \
                (theirs.kind, theirs.activation, theirs.fp_w, theirs.fp_b, theirs.fp_out, theirs.name)
            assert np.array_equal(ours.weight, theirs.weight) and np.array_equal(ours.bias, theirs.bias)
        x = random_inputs(rng, model)
        assert np.array_equal(reference.outputs(back, x), reference.outputs(model, x))
    assert len(kinds) == 8   # matmul and scale, each with no activation, relu, leaky-relu, relu6
