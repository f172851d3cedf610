"""Deploy: the integer model of a test-mode quantizer, written as an XIR xmodel,
deploy-check dumps, TorchScript and ONNX (spec: "Files in quantize_result/").

Every export is taken from the quantizer's one deploy forward: the xmodel has
that forward's batch (1 in the original flow, 4 for DPUCADF8H) and the dumps
are its tensors.
"""
import os
import warnings

import numpy as np
import torch
import torch.nn as nn

from flow.checked_io import InputError, atomic_path

from .fixpoint import HALF_AWAY, quantize
from dpu.int_model import LEAKY_RELU, LEAKY_RELU_ALPHA, MATMUL, RELU, RELU6, RELU6_MAX, SCALE, IntLayer, IntModel
from .quant_model import quantized_network
from .trace import ACTIVATION_OP_TYPES, BATCH_NORM, DENSE, op_name
from dpu.xmodel import write_xmodel

DEPLOY_CHECK_DIR = "deploy_check_data_int"


def int_model(quant_model):
    """The IntModel of a test-mode QuantModel (its parameters are on their grids)."""
    chain, positions = quant_model.chain, quant_model.positions
    layers = []
    for layer, (weight, bias) in zip(chain.layers, quant_model.params):
        fp_w, fp_b = positions["param"][layer.weight_key], positions["param"][layer.bias_key]
        layers.append(IntLayer(
            name=layer.name,
            weight=quantize(weight, fp_w, HALF_AWAY).numpy().astype(np.int8),
            bias=quantize(bias, fp_b, HALF_AWAY).numpy().astype(np.int8),
            fp_w=fp_w, fp_b=fp_b, fp_out=positions["output"][layer.output_tensor],
            op_name=op_name(layer.traced), kind=MATMUL if layer.kind == DENSE else SCALE,
            activation=ACTIVATION_OP_TYPES[layer.activation] if layer.activation else None,
            activation_op_name=op_name(layer.act_traced) if layer.activation else None,
            weight_op_name=op_name(layer.weight_key), bias_op_name=op_name(layer.bias_key)))
    return IntModel(chain.net_name, op_name(chain.input_traced), chain.input_size,
                    positions["output"][chain.input_tensor], layers, batch=deploy_batch(quant_model))


def deploy_forward_dumps(quant_model):
    """The deploy forward's tensors, {quantizer tensor name: float32 tensor}."""
    dumps = quant_model.dumps
    if not dumps:
        raise InputError("deploy: run one forward (of the xmodel's batch) on quant_model before exporting")
    return dumps


def deploy_batch(quant_model):
    return int(deploy_forward_dumps(quant_model)[quant_model.chain.input_tensor].shape[0])


def write_deploy_check(quant_model, folder):
    """deploy_check_data_int/<Net>/: NAME.bin (float32) and NAME_fix.bin (int8) of
    every tensor of the deploy forward, and shape.txt; as the real quantizer names them."""
    chain, positions = quant_model.chain, quant_model.positions
    dumps = deploy_forward_dumps(quant_model)
    files = {}

    def add(name, value, fp=None):
        value = value.detach().numpy().astype(np.float32)
        files[name + ".bin"] = value.tobytes()
        if fp is not None:
            files[name + "_fix.bin"] = (value * np.float32(2.0 ** fp)).astype(np.int8).tobytes()

    shapes = []
    add(op_name(chain.input_traced), dumps[chain.input_tensor], positions["output"][chain.input_tensor])
    shapes.append((dumps[chain.input_tensor], chain.input_traced))
    for layer, params in zip(chain.layers, quant_model.params):
        for key, param in zip((layer.weight_key, layer.bias_key), params):
            add(op_name(key), param, positions["param"][key])
        if layer.kind == BATCH_NORM:   # the statistics, folded into the scale: zeros and ones
            stem = op_name("{}::{}".format(chain.net_name, layer.name))
            add(stem + "_running_mean", torch.zeros(layer.out_features))
            add(stem + "_running_var", torch.ones(layer.out_features))
        own_fp = None if layer.activation else positions["output"][layer.node]
        add(op_name(layer.traced), dumps[layer.node], own_fp)
        shapes.append((dumps[layer.node], layer.traced))
        if layer.activation:
            add(op_name(layer.act_traced), dumps[layer.act_node], positions["output"][layer.act_node])
            shapes.append((dumps[layer.act_node], layer.act_traced))
    shape_text = "".join("{}: {}\n".format(list(value.shape), name) for value, name in shapes)

    with atomic_path(os.path.join(folder, DEPLOY_CHECK_DIR)) as tmp:
        net_dir = os.path.join(tmp, chain.net_name)
        os.makedirs(net_dir)
        for name, data in files.items():
            with open(os.path.join(net_dir, name), "wb") as f:
                f.write(data)
        with open(os.path.join(net_dir, "shape.txt"), "w") as f:
            f.write(shape_text)


def export_xmodel(quant_model, output_dir, deploy_check=False):
    deploy_forward_dumps(quant_model)
    write_xmodel(int_model(quant_model), os.path.join(output_dir, quant_model.chain.net_name + "_int.xmodel"))
    if deploy_check:
        write_deploy_check(quant_model, output_dir)


# ---------------------------------------------------------------- TorchScript

class _TestModeNetwork(nn.Module):
    """The quantizer's test-mode forward as a module of its own, for TorchScript:
    the traced graph holds the parameters and every rounding, and needs nothing
    of this project to run."""

    def __init__(self, quant_model):
        super().__init__()
        self.chain, self.positions = quant_model.chain, quant_model.positions
        self.weights = nn.ParameterList(nn.Parameter(w.detach().clone(), requires_grad=False)
                                        for w, _ in quant_model.params)
        self.biases = nn.ParameterList(nn.Parameter(b.detach().clone(), requires_grad=False)
                                       for _, b in quant_model.params)

    def forward(self, x):
        params = list(zip(self.weights, self.biases))
        return quantized_network(x.float(), params, self.chain, self.positions)


def export_torch_script(quant_model, output_dir):
    dumps = deploy_forward_dumps(quant_model)
    example = dumps[quant_model.chain.input_tensor]
    module = _TestModeNetwork(quant_model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # torch.jit is deprecated in recent releases, still the format asked for
        # No check_trace: its comparison imports torch.distributed (a second of start-up); the
        # tests compare the saved module with the test-mode outputs instead.
        traced = torch.jit.trace(module, example, check_trace=False)
    path = os.path.join(output_dir, quant_model.chain.net_name + "_int.pt")
    with atomic_path(path) as tmp:
        traced.save(tmp + ".traced")
        _without_debug_info(tmp + ".traced", tmp)


def _without_debug_info(source, path):
    """The TorchScript archive `source` as `path`, less its *.debug_pkl records: they hold the
    absolute paths of this checkout and of torch's files (the traceback of the trace), so
    the bytes would differ from one clone to the next. torch.jit.load does not need them."""
    reader = torch._C.PyTorchFileReader(source)
    writer = torch._C.PyTorchFileWriter(path)   # names the archive after path's file name
    # The writer adds its own version record (at least the archive's) and id at the end.
    writer.set_min_version(int(reader.get_record("version")))
    for name in reader.get_all_records():
        if not name.endswith(".debug_pkl") and name not in ("version", ".data/serialization_id"):
            data = reader.get_record(name)
            writer.write_record(name, data, len(data))
    writer.write_end_of_file()


# ---------------------------------------------------------------- ONNX

ONNX_OPSET = 13
ONNX_IR_VERSION = 8   # read by onnxruntime 1.11 and later


def onnx_graph(int_net):
    """An ONNX model of the integer network with standard operators.

    Parameters are int8 initializers behind DequantizeLinear with scale 2^-fp.
    Each activation is rounded half up (the DPU's rounding) with Floor, Sub,
    GreaterOrEqual and Add on the exact scaled value, and only then passes
    through QuantizeLinear/DequantizeLinear: QuantizeLinear alone rounds half
    to even, and here it meets integers only, so it saturates and never rounds.
    Inference in onnxruntime then equals the quantizer's test mode exactly.
    The messages are vaiq.onnx_proto's: the same bytes as the onnx package's.
    """
    from . import onnx_proto as proto

    model = proto.ModelProto(ir_version=ONNX_IR_VERSION, producer_name="vaiq")
    model.opset_import.add(domain="", version=ONNX_OPSET)
    graph = model.graph
    graph.name = int_net.net_name + "_int"
    onnx_types = {np.dtype(np.float32): proto.FLOAT, np.dtype(np.int8): proto.INT8}

    def const(name, value, dtype=np.float32):
        array = np.asarray(value, dtype=dtype)
        graph.initializer.add(dims=array.shape, data_type=onnx_types[array.dtype], name=name,
                              raw_data=array.astype(array.dtype.newbyteorder("<")).tobytes())
        return name

    zero = const("zero_point", 0, np.int8)
    half = const("half", 0.5)

    def node(op, inputs, name, **attrs):
        new = graph.node.add(input=inputs, output=[name], name=name, op_type=op)
        for key, value in sorted(attrs.items()):
            if isinstance(value, float):
                new.attribute.add(name=key, f=value, type=proto.ATTR_FLOAT)
            else:
                new.attribute.add(name=key, i=value, type=proto.ATTR_INT)
        return name

    def value_info(where, name, width):
        tensor_type = where.add(name=name).type.tensor_type
        tensor_type.elem_type = proto.FLOAT
        tensor_type.shape.dim.add(dim_param="batch")
        tensor_type.shape.dim.add(dim_value=width)

    def fix(x, fp, name):
        scale = const(name + "/scale", 2.0 ** -fp)
        scaled = node("Mul", [x, const(name + "/inv_scale", 2.0 ** fp)], name + "/scaled")
        low = node("Floor", [scaled], name + "/floor")
        up = node("GreaterOrEqual", [node("Sub", [scaled, low], name + "/frac"), half], name + "/round_up")
        rounded = node("Add", [low, node("Cast", [up], name + "/carry", to=proto.FLOAT)], name + "/rounded")
        on_grid = node("Mul", [rounded, scale], name + "/on_grid")
        q = node("QuantizeLinear", [on_grid, scale, zero], name + "/q")
        return node("DequantizeLinear", [q, scale, zero], name)

    def param(name, q, fp):
        scale = const(name + "/scale", 2.0 ** -fp)
        return node("DequantizeLinear", [const(name + "/int8", q, np.int8), scale, zero], name)

    input_name = "{}::input_0".format(int_net.net_name)
    x = fix(input_name, int_net.fp_in, int_net.input_op_name + "_fix")
    for layer in int_net.layers:
        w = param(layer.weight_op_name + "_fix", layer.weight, layer.fp_w)
        b = param(layer.bias_op_name + "_fix", layer.bias, layer.fp_b)
        if layer.kind == MATMUL:
            x = node("Gemm", [x, w, b], layer.op_name, transB=1)
        else:   # BatchNorm1d with folded statistics: x * scale + offset, as batch_norm computes it
            x = node("Add", [node("Mul", [x, w], layer.op_name + "/scaled"), b], layer.op_name)
        if layer.activation == RELU:
            x = node("Relu", [x], layer.activation_op_name)
        elif layer.activation == LEAKY_RELU:
            x = node("LeakyRelu", [x], layer.activation_op_name, alpha=LEAKY_RELU_ALPHA)
        elif layer.activation == RELU6:
            x = node("Clip", [x, const(layer.activation_op_name + "/min", 0.0),
                              const(layer.activation_op_name + "/max", float(RELU6_MAX))], layer.activation_op_name)
        x = fix(x, layer.fp_out, layer.output_op_name + "_fix")
    value_info(graph.input, input_name, int_net.input_size)
    value_info(graph.output, x, len(int_net.layers[-1].bias))
    return model


def export_onnx_model(quant_model, output_dir):
    deploy_forward_dumps(quant_model)
    model = onnx_graph(int_model(quant_model))
    path = os.path.join(output_dir, quant_model.chain.net_name + "_int.onnx")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(model.SerializeToString())
