"""The .xmodel writer and reader against the golden vai_q_pytorch 3.5 files.

The IntModel of each golden case is built from the quantizer's other outputs
only (int8 dumps and quant_info.json), so writing it and comparing with the
golden xmodel checks the writer independently of the reader.
"""
import itertools
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from dpu import xmodel_pb2
from dpu.int_model import IntLayer, IntModel
from dpu.xmodel import (XmodelError, build_graph, graph_summary, graph_to_model, parse_graph,
                         read_graph, read_xmodel, serialize_graph, write_xmodel)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "fixtures", "golden")
CASES = ["p1_trained_in2", "p2_trained_in2_nocorr", "p3_random_in4"]
# protobuf releases of the Vitis AI dockers (3.5: 3.20.3; 2.5: 3.19.6, without the
# builder module of newer generated code), in side folders that make install creates
OLD_PROTOBUFS = ["3.19.6", "3.20.3"]

# The quantizer's node of each quantized output, and the xmodel ops of each Linear (+ReLU).
INPUT_NODE = "FFN::nndct_input_0"
LAYERS = [("l1", "FFN::nndct_relu_2", "FFN__FFN_Linear_l1__ret_1", "FFN__FFN_ret_3"),
          ("l2", "FFN::nndct_relu_4", "FFN__FFN_Linear_l2__ret_5", "FFN__FFN_ret_7"),
          ("l3", "FFN::nndct_dense_5", "FFN__FFN_Linear_l3__ret", None)]


def result_dir(case):
    return os.path.join(GOLDEN, case, "expected", "quantize_result")


def golden_xmodel(case):
    return os.path.join(result_dir(case), "FFN_int.xmodel")


def golden_model(case):
    """The IntModel of a golden case from its int8 dumps and quant_info.json."""
    with open(os.path.join(result_dir(case), "quant_info.json")) as f:
        info = json.load(f)
    with open(os.path.join(GOLDEN, case, "case.json")) as f:
        n = json.load(f)["input_size"]

    def position(section, key):
        [[bits, fp]] = info[section][key]
        assert bits == 8
        return fp

    def int8(op_name, shape):
        path = os.path.join(result_dir(case), "deploy_check_data_int", "FFN", op_name + "_fix.bin")
        return np.fromfile(path, dtype=np.int8).reshape(shape)

    widths = [n, 3 * n, 2 * n, 1]   # FFN(n): Linear(n, 3n), Linear(3n, 2n), Linear(2n, 1)
    layers = []
    for i, (name, out_node, op_name, relu_op_name) in enumerate(LAYERS):
        weight_op, bias_op = "FFN__{}_weight".format(name), "FFN__{}_bias".format(name)
        layers.append(IntLayer(
            name=name, weight=int8(weight_op, (widths[i + 1], widths[i])), bias=int8(bias_op, (widths[i + 1],)),
            fp_w=position("param", "FFN::{}.weight".format(name)), fp_b=position("param", "FFN::{}.bias".format(name)),
            fp_out=position("output", out_node), activation="relu" if relu_op_name else None, op_name=op_name,
            activation_op_name=relu_op_name, weight_op_name=weight_op, bias_op_name=bias_op))
    return IntModel(net_name="FFN", input_op_name="FFN__input_0", input_size=n,
                    fp_in=position("output", INPUT_NODE), layers=layers)


def model_dict(model):
    """An IntModel as comparable plain values (arrays as typed lists)."""
    layers = []
    for layer in model.layers:
        d = dict(vars(layer))
        for key in ("weight", "bias"):
            d[key] = (d[key].dtype.str, d[key].shape, d[key].tolist())
        layers.append(d)
    return dict(vars(model), layers=layers)


def golden_summary(case):
    return graph_summary(read_graph(golden_xmodel(case)))


def write_graph(graph, path):
    with open(path, "wb") as f:
        f.write(serialize_graph(graph))
    return str(path)


def read_error(graph, tmp_path):
    with pytest.raises(XmodelError) as info:
        read_xmodel(write_graph(graph, tmp_path / "FFN_int.xmodel"))
    return str(info.value)


# ---------------------------------------------------------------- writing and reading

@pytest.mark.parametrize("case", CASES)
def test_written_graph_equals_golden(case):
    graph = build_graph(golden_model(case))
    assert graph_summary(graph) == golden_summary(case)
    # Without the op registry the golden file is the same message, byte for byte.
    golden = read_graph(golden_xmodel(case))
    del golden.op_defs[:]
    assert serialize_graph(graph) == serialize_graph(golden)


@pytest.mark.parametrize("case", CASES)
def test_read_golden(case):
    assert model_dict(read_xmodel(golden_xmodel(case))) == model_dict(golden_model(case))


@pytest.mark.parametrize("case", CASES)
def test_round_trip_and_determinism(case, tmp_path):
    model = golden_model(case)
    first, second = tmp_path / "a.xmodel", tmp_path / "b.xmodel"
    write_xmodel(model, str(first))
    write_xmodel(model, str(second))
    assert first.read_bytes() == second.read_bytes()
    assert model_dict(read_xmodel(str(first))) == model_dict(model)


def test_golden_files_parse_completely():
    """The schema covers the whole file, op registry included: nothing is left as unknown fields."""
    for case in CASES:
        data = open(golden_xmodel(case), "rb").read()
        graph = parse_graph(data, case)
        assert len(graph.op_defs) == 106
        assert graph.ByteSize() == len(data)


def test_summary_ignores_op_defs_but_not_value_types():
    """(Map entry order is covered above: the golden files hold XIR's hash order, ours is sorted.)"""
    graph = read_graph(golden_xmodel("p1_trained_in2"))
    changed = xmodel_pb2.Graph()
    changed.CopyFrom(graph)
    del changed.op_defs[:]
    assert graph_summary(changed) == graph_summary(graph)
    fix_point = changed.op_node[1].op_attr["fix_point"]
    fix_point.int64_value = fix_point.int32_value
    assert graph_summary(changed) != graph_summary(graph)


def test_const_zero_is_positive():
    model = golden_model("p1_trained_in2")
    model.layers[0].bias[:] = 0
    const = [op for op in build_graph(model).op_node if op.op_name == "FFN__l1_bias"][0]
    assert const.op_attr["data"].bytes_value.value == b"\x00" * 24


# ---------------------------------------------------------------- other naming and order

RELEASE_1_3_NAMES = {
    "FFN__input_0": "FFN__input", "FFN__FFN_Linear_l1__ret_1": "FFN__FFN_Linear_l1__10",
    "FFN__FFN_ret_3": "FFN__FFN_input_2", "FFN__FFN_Linear_l2__ret_5": "FFN__FFN_Linear_l2__12",
    "FFN__FFN_ret_7": "FFN__FFN_input_3", "FFN__FFN_Linear_l3__ret": "FFN__FFN_Linear_l3__14",
}


def renamed(graph, names):
    """A copy of `graph` with ops renamed (and their fix ops), everywhere names occur."""
    names = dict(names)
    names.update({old + "_fix": new + "_fix" for old, new in list(names.items())})
    out = xmodel_pb2.Graph()
    out.CopyFrom(graph)
    for op in out.op_node:
        op.op_name = names.get(op.op_name, op.op_name)
        op.output_tensor.tensor_name = op.op_name
        for arg in op.args:
            arg.arg_ops[:] = [names.get(name, name) for name in arg.arg_ops]
    out.subg_root.op_name[:] = [names.get(name, name) for name in out.subg_root.op_name]
    return out


def test_reads_release_1_3_names_and_return_ops(tmp_path):
    graph = renamed(read_graph(golden_xmodel("p3_random_in4")), RELEASE_1_3_NAMES)
    # Release 2.0 and older also list the output fix op as a graph attribute.
    graph.graph_attr["return_ops"].string_vec_value.value.append("FFN__FFN_Linear_l3__14_fix")
    model = read_xmodel(write_graph(graph, tmp_path / "old.xmodel"))
    expected = golden_model("p3_random_in4")
    expected.input_op_name = "FFN__input"
    for layer in expected.layers:
        layer.op_name = RELEASE_1_3_NAMES[layer.op_name]
        if layer.activation:
            layer.activation_op_name = RELEASE_1_3_NAMES[layer.activation_op_name]
    assert model_dict(model) == model_dict(expected)
    assert [layer.name for layer in model.layers] == ["l1", "l2", "l3"]


def test_reads_any_topological_order(tmp_path):
    """Each layer's consts right before its matmul: the same network."""
    order = ["FFN__input_0", "FFN__input_0_fix"]
    for name, _, op_name, relu_op_name in LAYERS:
        for param in ("weight", "bias"):
            const = "FFN__{}_{}".format(name, param)
            order += [const, const + "_fix"]
        order += [op_name] + ([relu_op_name] if relu_op_name else []) + [(relu_op_name or op_name) + "_fix"]
    graph = read_graph(golden_xmodel("p1_trained_in2"))
    by_name = {node.op_name: node for node in graph.op_node}
    assert sorted(order) == sorted(by_name)
    reordered = xmodel_pb2.Graph(graph_name="FFN")
    reordered.op_node.extend(by_name[name] for name in order)
    model = read_xmodel(write_graph(reordered, tmp_path / "x.xmodel"))
    assert model_dict(model) == model_dict(golden_model("p1_trained_in2"))


def test_writer_refuses_a_broken_model():
    model = golden_model("p1_trained_in2")
    model.layers[1].weight = model.layers[1].weight.astype(np.int16) * 2
    with pytest.raises(ValueError, match="layer l2: weight is not int8"):
        build_graph(model)
    model = golden_model("p1_trained_in2")
    model.layers[2].weight = model.layers[2].weight[:, :3]
    with pytest.raises(ValueError, match=r"layer l3: weight shape \(1, 3\)"):
        build_graph(model)


# ---------------------------------------------------------------- protobuf 3.20.3 (the Vitis AI docker's)

SUBPROCESS_SCRIPT = """
import random, sys
from google.protobuf.internal import api_implementation
import google.protobuf
assert google.protobuf.__version__ == sys.argv[8], google.protobuf.__version__
assert api_implementation.Type() == "python", api_implementation.Type()
from dpu.xmodel import XmodelError, read_xmodel, write_xmodel
golden, ours, out_golden, out_ours, scratch = sys.argv[1:6]
cut_end, cut_step = int(sys.argv[6]), int(sys.argv[7])
write_xmodel(read_xmodel(golden), out_golden)
write_xmodel(read_xmodel(ours), out_ours)

def is_error(data):  # any exception but XmodelError ends the script with a traceback
    with open(scratch, "wb") as f:
        f.write(data)
    try:
        read_xmodel(scratch)
        return 0
    except XmodelError:
        return 1

rng = random.Random(7)
data = open(golden, "rb").read()
cut_errors = sum(is_error(data[:cut]) for cut in range(0, cut_end, cut_step))
data = bytearray(open(ours, "rb").read())
flip_errors = 0
for _ in range(300):
    at, bit = rng.randrange(len(data)), 1 << rng.randrange(8)
    data[at] ^= bit
    flip_errors += is_error(bytes(data))
    data[at] ^= bit
print(cut_errors, flip_errors)
"""
CUT_END, CUT_STEP = 3000, 61   # cuts inside the op list of p3's golden file: all errors


@pytest.mark.parametrize("version", OLD_PROTOBUFS)
def test_old_protobuf_writes_and_reads_the_same(tmp_path, version):
    import google.protobuf

    if google.protobuf.__version__ == version:
        pytest.skip("protobuf {} is the one running: every xmodel test runs on it".format(version))
    side = os.path.join(ROOT, ".venv", "protobuf-" + version)
    if not os.path.isdir(side):
        pytest.skip("protobuf {} side folder {} is missing (make install creates it)".format(version, side))
    case = "p3_random_in4"
    model = golden_model(case)
    ours = tmp_path / "ours.xmodel"
    write_xmodel(model, str(ours))
    out_golden, out_ours = tmp_path / "there_golden.xmodel", tmp_path / "there_ours.xmodel"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([side, ROOT]),
               PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")
    args = [golden_xmodel(case), ours, out_golden, out_ours, tmp_path / "scratch.xmodel", CUT_END, CUT_STEP, version]
    result = subprocess.run([sys.executable, "-c", SUBPROCESS_SCRIPT] + [str(arg) for arg in args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=300)
    assert result.returncode == 0, result.stderr
    cut_errors, flip_errors = map(int, result.stdout.split())
    assert cut_errors == len(range(0, CUT_END, CUT_STEP))
    assert flip_errors > 100
    # Read there and written there: the same graph as written here, and read back here. The
    # bytes may differ in map entry order: upb sorts "data_type" before "data", Python after.
    for there in (out_golden, out_ours):
        assert graph_summary(read_graph(str(there))) == graph_summary(read_graph(str(ours)))
        assert model_dict(read_xmodel(str(there))) == model_dict(model)


# ---------------------------------------------------------------- broken files

def outcome(read, source):
    """"error" for an XmodelError, else the model read; any other exception fails the test."""
    try:
        return read()
    except XmodelError as e:
        assert str(e).startswith(source + ": ") and "\n" not in str(e)
        return "error"


def outcome_of_file(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return outcome(lambda: read_xmodel(path), path)


def outcome_of_bytes(data):
    """What read_xmodel does after reading the file, without the disk."""
    return outcome(lambda: graph_to_model(parse_graph(data, "fuzz.xmodel"), "fuzz.xmodel"), "fuzz.xmodel")


def test_fuzz_random_truncated_flipped(tmp_path):
    rng = random.Random(1234)
    path = str(tmp_path / "FFN_int.xmodel")
    golden = open(golden_xmodel("p1_trained_in2"), "rb").read()
    expected = model_dict(golden_model("p1_trained_in2"))
    ops_only = parse_graph(golden, "golden")
    ops_only.ClearField("subg_root")
    del ops_only.op_defs[:]
    ops_end = ops_only.ByteSize()   # the file holds name and ops first, then subg_root and op_defs

    calls = itertools.count(1)

    def attempt(data):   # every 50th through a file, to cover reading too
        return outcome_of_file(path, data) if next(calls) % 50 == 0 else outcome_of_bytes(data)

    for _ in range(300):
        assert attempt(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 600)))) == "error"
    for cut in list(range(0, ops_end)) + rng.sample(range(ops_end, len(golden)), 300):
        result = attempt(golden[:cut])
        # A cut inside the op list always breaks the network; a cut in the op
        # registry at a field boundary leaves a valid file with fewer op_defs.
        if cut < ops_end:
            assert result == "error", cut
        elif result != "error":
            assert model_dict(result) == expected, cut
    flipped_errors = 0
    for _ in range(1500):
        data = bytearray(golden)
        at = rng.randrange(ops_end) if rng.random() < 0.8 else rng.randrange(len(golden))
        data[at] ^= 1 << rng.randrange(8)
        flipped_errors += attempt(bytes(data)) == "error"
    assert flipped_errors > 800   # most flips in the op list are caught; the rest read as some valid network


def test_other_protobuf_messages_are_refused(tmp_path):
    path = str(tmp_path / "FFN_int.xmodel")
    graph = read_graph(golden_xmodel("p1_trained_in2"))
    others = [open(os.path.join(result_dir("p1_trained_in2"), "FFN_int.onnx"), "rb").read(),
              graph.op_defs[0].SerializeToString(), graph.subg_root.SerializeToString(),
              graph.op_node[2].SerializeToString(), xmodel_pb2.Graph(graph_name="FFN").SerializeToString(), b""]
    for data in others:
        assert outcome_of_file(path, data) == "error"


def test_missing_folder_and_huge_files(tmp_path):
    with pytest.raises(XmodelError, match="xmodel file not found"):
        read_xmodel(str(tmp_path / "none.xmodel"))
    with pytest.raises(XmodelError, match="is a folder"):
        read_xmodel(str(tmp_path))
    huge = tmp_path / "huge.xmodel"
    with open(str(huge), "wb") as f:
        f.truncate(65 * 1024 * 1024)   # sparse: no disk space used, never parsed
    with pytest.raises(XmodelError, match="over the 64 MiB limit"):
        read_xmodel(str(huge))


def golden_graph():
    return read_graph(golden_xmodel("p1_trained_in2"))


def op(graph, name):
    return [node for node in graph.op_node if node.op_name == name][0]


def batch_2(g):
    op(g, "FFN__input_0").op_attr["shape"].int32_vec_value.value[0] = 2


def no_fix_point(g):
    del op(g, "FFN__l1_weight_fix").op_attr["fix_point"]


def int64_fix_point(g):
    op(g, "FFN__FFN_ret_3_fix").op_attr["fix_point"].int64_value = 6


def unknown_type(g):
    op(g, "FFN__FFN_ret_3").op_type = "sigmoid"


def off_grid(g):
    const = op(g, "FFN__l2_weight").op_attr["data"].bytes_value
    values = np.frombuffer(const.value, dtype="<f4").copy()
    values[3] += 2.0 ** -9   # -0.734375 on the weight's grid 2^-6
    const.value = values.tobytes()


def outside_int8(g):
    const = op(g, "FFN__l3_bias").op_attr["data"].bytes_value
    const.value = np.array([0.5], dtype="<f4").tobytes()   # 128 * 2^-8


def bit_width_16(g):
    op(g, "FFN__input_0_fix").op_attr["bit_width"].int32_value = 16


def forward_reference(g):
    ops = list(g.op_node)
    del g.op_node[:]
    g.op_node.extend(ops[1:2] + ops[:1] + ops[2:])


def wrong_weight_shape(g):
    weight = op(g, "FFN__l2_weight")
    weight.op_attr["shape"].int32_vec_value.value[:] = [6, 4]
    weight.output_tensor.tensor_dim[:] = [6, 4]
    op(g, "FFN__l2_weight_fix").output_tensor.tensor_dim[:] = [6, 4]


def no_bias(g):
    del op(g, "FFN__FFN_Linear_l2__ret_5").args[1]


def transposed(g):
    op(g, "FFN__FFN_Linear_l1__ret_1").op_attr["transpose_b"].bool_value = False


def extra_op(g):
    g.op_node.add(op_name="FFN__spare", op_type="relu").args.add(arg_name="input", arg_ops=["FFN__input_0_fix"])


def const_with_args(g):
    op(g, "FFN__l1_bias").args.add(arg_name="input", arg_ops=["FFN__input_0"])


def wrong_tensor(g):
    op(g, "FFN__FFN_ret_7").output_tensor.tensor_dim[:] = [1, 5]


@pytest.mark.parametrize("change, message", [
    (batch_2, "op FFN__input_0 has an output tensor of shape [1, 2], expected [2, 2]"),
    (no_fix_point, "op FFN__l1_weight_fix has no attribute fix_point"),
    (int64_fix_point, "op FFN__FFN_ret_3_fix: attribute fix_point is int64, expected int32"),
    (unknown_type, "op FFN__FFN_ret_3 has unsupported type 'sigmoid'"),
    (off_grid, "const FFN__l2_weight: value -0.732421875 is not a multiple of 2^-6 (off the grid of fix_point 6)"),
    (outside_int8, "const FFN__l3_bias: value 0.5 is outside int8 at fix_point 8"),
    (bit_width_16, "op FFN__input_0_fix has bit_width 16; only 8-bit is supported"),
    (forward_reference, "op FFN__input_0_fix uses op FFN__input_0 before it is defined"),
    (wrong_weight_shape, "const FFN__l2_weight has shape [6, 4], expected [out, 6]"),
    (no_bias, "op FFN__FFN_Linear_l2__ret_5 has no 'bias' arg"),
    (transposed, "matmul FFN__FFN_Linear_l1__ret_1 has transpose_b False"),
    (extra_op, "op FFN__input_0_fix feeds FFN__FFN_Linear_l1__ret_1 (matmul), FFN__spare (relu)"),
    (const_with_args, "op FFN__l1_bias (const) has args; const ops take none"),
    (wrong_tensor, "op FFN__FFN_ret_7 has an output tensor of shape [1, 5], expected [1, 4]"),
])
def test_broken_graphs(change, message, tmp_path):
    graph = golden_graph()
    change(graph)
    text = read_error(graph, tmp_path)
    assert text.startswith(str(tmp_path / "FFN_int.xmodel") + ": ")
    assert message in text
