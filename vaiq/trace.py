"""Reading a model as a chain of DPU layers, and naming its tensors as vai_q_pytorch
3.5 does (spec vai_q_pytorch.md: "The model"; layers.md; xmodel.md: "Op names").

A layer is an nn.Linear or an nn.BatchNorm1d (not folded: a per-channel scale),
optionally followed by a fused activation: ReLU, LeakyReLU (its slope forced to
26/256) or F.relu6 (an nn.ReLU6 module becomes a ReLU, as the real quantizer
replaces it). Dropout is gone at trace time. Anything else is refused in one
line that says what the real quantizer would do with it.
"""
import re
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from flow.checked_io import InputError

from dpu.int_model import LEAKY_RELU_ALPHA


class UnsupportedModelError(InputError):
    pass


# Layer and activation kinds, named as the quantizer's node types ("nndct_" + kind).
DENSE, BATCH_NORM = "dense", "batch_norm"
RELU, LEAKY_RELU, RELU6 = "relu", "leaky_relu", "relu6"
ACTIVATION_OP_TYPES = {RELU: "relu", LEAKY_RELU: "leaky-relu", RELU6: "relu6"}   # in the xmodel

RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
LEAKY_RELU_FUNCTIONS = (F.leaky_relu,)
RELU6_FUNCTIONS = (F.relu6,)
DROPOUT_FUNCTIONS = (F.dropout,)
DROPOUT_MODULES = (nn.Dropout,)

# The real quantizer's own words (layers.md), printed as it prints them.
LEAKY_RELU_WARNING = ("[VAIQ_WARN][QUANTIZER_TORCH_LEAKYRELU]: Force to change negative_slope of LeakyReLU from {} "
                      "to 0.1015625 because DPU only supports this value. It is recommended to change all "
                      "negative_slope of LeakyReLU to 0.1015625 and re-train the float model for better deployed "
                      "model accuracy.")
RELU6_WARNING = "[VAIQ_WARN][QUANTIZER_TORCH_REPLACE_RELU6]: ReLU6 has been replaced by ReLU."
BN_NOTE = ("[VAIQ_NOTE][QUANTIZER_TORCH_NOT_FUSED_BN]: Node {} cannot be fused into CONV layers, this is not "
           "quantization friendly. It is recommended to adjsut the pattern to CONV+BN.")

# What the real quantizer does with what the built-in refuses (layers.md, "Not covered here").
REAL_QUANTIZER_DOES = {
    "Hardtanh": "vai_q_pytorch makes it a custom op nndct_hardtanh whose bounds the xmodel does not store, and "
                "DPUCADF8H has no hardtanh engine",
    "sigmoid": "vai_q_pytorch keeps sigmoid as a float op, unquantized at the output, and DPUCADF8H has no "
               "sigmoid engine",
    "add": "vai_q_pytorch gives a residual add its own fix (exact sum at the finer input position, one "
           "rounding); the built-in quantizer takes chains only",
}
SUPPORTED_TEXT = ("the built-in quantizer takes a chain of nn.Linear and nn.BatchNorm1d layers, each optionally "
                  "followed by ReLU, LeakyReLU or F.relu6 (nn.ReLU6 becomes ReLU), with nn.Dropout anywhere")


@dataclass
class ChainLayer:
    name: str                   # qualified module name, e.g. "l1", "bn1", "0"
    module: nn.Module           # the nn.Linear or nn.BatchNorm1d
    kind: str                   # DENSE or BATCH_NORM
    node: str                   # quantizer node, "FFN::nndct_dense_1"
    traced: str                 # traced name, "FFN::FFN/Linear[l1]/ret.1"
    activation: Optional[str] = None    # RELU, LEAKY_RELU, RELU6 or None
    act_node: Optional[str] = None      # "FFN::nndct_relu_2"
    act_traced: Optional[str] = None    # "FFN::FFN/ret.3"

    @property
    def output_tensor(self):
        """The tensor that carries the layer's quantized output (the activation's if fused)."""
        return self.act_node if self.activation else self.node

    @property
    def net(self):
        return self.node.split("::")[0]

    @property
    def weight_key(self):
        """quant_info's name of the weight (a BatchNorm1d: of its folded scale)."""
        return "{}::{}.weight".format(self.net, self.name)

    @property
    def bias_key(self):
        return "{}::{}.bias".format(self.net, self.name)

    @property
    def out_features(self):
        return self.module.out_features if self.kind == DENSE else self.module.num_features

    def float_params(self):
        """(weight, bias) in float32 as the quantizer sees them. A BatchNorm1d becomes
        scale = gamma / sqrt(var + eps) and offset = beta - mean * scale, computed in
        float32 numpy as the real quantizer does, with mean 0, var 1 and eps 0 after."""
        if self.kind == DENSE:
            return self.module.weight.detach().float().clone(), self.module.bias.detach().float().clone()
        bn = self.module
        n = bn.num_features
        gamma = bn.weight.detach().float().numpy() if bn.weight is not None else np.ones(n, np.float32)
        beta = bn.bias.detach().float().numpy() if bn.bias is not None else np.zeros(n, np.float32)
        var = bn.running_var.detach().float().numpy()
        mean = bn.running_mean.detach().float().numpy()
        scale = (gamma / np.sqrt(var + np.float32(bn.eps))).astype(np.float32)
        offset = (beta - mean * scale).astype(np.float32)
        return torch.from_numpy(scale), torch.from_numpy(offset)


@dataclass
class Chain:
    net_name: str               # the model's class name, "FFN"
    input_size: int
    layers: List[ChainLayer]
    messages: List[str]         # the real quantizer's warnings and notes for this model

    @property
    def input_tensor(self):
        return "{}::nndct_input_0".format(self.net_name)

    @property
    def input_traced(self):
        return "{}::input_0".format(self.net_name)

    def input_of(self, index):
        """The quantized tensor that layer `index` reads."""
        return self.input_tensor if index == 0 else self.layers[index - 1].output_tensor

    def activation_tensors(self):
        """Every quantized activation, in graph order: the input, then each layer's output."""
        return [self.input_tensor] + [layer.output_tensor for layer in self.layers]

    def param_tensors(self):
        """Every parameter, in graph order, weight before bias."""
        return [key for layer in self.layers for key in (layer.weight_key, layer.bias_key)]

    def node_types(self):
        """The quantizer's node types in graph order, input and return included (graph_md5)."""
        types = ["nndct_input"]
        for layer in self.layers:
            types.append("nndct_" + layer.kind)
            if layer.activation:
                types.append("nndct_" + layer.activation)
        return types + ["nndct_return"]


def op_name(traced_name):
    """xmodel op name: every character outside [0-9A-Za-z] becomes '_'."""
    return re.sub(r"[^0-9A-Za-z]", "_", traced_name)


def _refusal(net, what, how):
    does = REAL_QUANTIZER_DOES.get(what)
    return UnsupportedModelError("{}: unsupported operation {} ({}); {}{}".format(
        net, what, how, SUPPORTED_TEXT, "; " + does if does else ""))


def chain_ops(module, graph, net):
    """[(kind, qualified name or None, module or None, extra)] of the traced graph, Dropout left out."""
    modules = dict(module.named_modules())
    ops, n_inputs = [], 0
    for node in graph.nodes:
        if node.op == "placeholder":
            n_inputs += 1
            continue
        if node.op == "output":
            continue
        if node.op == "call_module":
            sub = modules[node.target]
            if isinstance(sub, DROPOUT_MODULES):
                continue
            if isinstance(sub, nn.Linear):
                ops.append((DENSE, node.target, sub, None))
            elif isinstance(sub, nn.BatchNorm1d):
                ops.append((BATCH_NORM, node.target, sub, None))
            elif isinstance(sub, (nn.ReLU, nn.ReLU6)):   # ReLU6 modules are replaced by ReLU
                ops.append((RELU, node.target, sub, "relu6 module" if isinstance(sub, nn.ReLU6) else None))
            elif isinstance(sub, nn.LeakyReLU):
                ops.append((LEAKY_RELU, node.target, sub, sub.negative_slope))
            else:
                raise _refusal(net, type(sub).__name__, "a module")
        elif node.op == "call_function" and node.target in DROPOUT_FUNCTIONS:
            continue
        elif node.op == "call_function" and node.target in RELU_FUNCTIONS:
            ops.append((RELU, None, None, None))
        elif node.op == "call_function" and node.target in LEAKY_RELU_FUNCTIONS:
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
            ops.append((LEAKY_RELU, None, None, slope))
        elif node.op == "call_function" and node.target in RELU6_FUNCTIONS:
            ops.append((RELU6, None, None, None))
        elif node.op == "call_method" and node.target in ("relu", "relu_"):
            ops.append((RELU, None, None, None))
        else:
            what = node.target
            name = getattr(what, "__name__", str(what))
            if name in ("add", "iadd", "__add__") or node.target in (torch.add,):
                name = "add"
            raise _refusal(net, name, node.op)
    if n_inputs != 1:
        raise UnsupportedModelError("{}: takes {} inputs, the built-in quantizer supports one".format(net, n_inputs))
    return ops


def check_ops(net, ops):
    if not ops or ops[0][0] != DENSE:
        raise UnsupportedModelError("{}: must start with an nn.Linear; {}".format(net, SUPPORTED_TEXT))
    for previous, current in zip(ops, ops[1:]):
        if previous[0] not in (DENSE, BATCH_NORM) and current[0] not in (DENSE, BATCH_NORM):
            raise UnsupportedModelError("{}: two activations in a row ({} after {}) are not supported".format(
                net, current[0], previous[0]))
    width = None
    for kind, name, sub, _ in ops:
        if kind == DENSE:
            if sub.bias is None:
                raise UnsupportedModelError("{}: {} is an nn.Linear without bias; the DPU flow here needs a bias "
                                            "(bias=True)".format(net, name))
            if width is not None and sub.in_features != width:
                raise UnsupportedModelError("{}: {} takes {} features after a layer of {}".format(
                    net, name, sub.in_features, width))
            width = sub.out_features
        elif kind == BATCH_NORM:
            if sub.num_features != width:
                raise UnsupportedModelError("{}: {} normalizes {} features after a layer of {}".format(
                    net, name, sub.num_features, width))
            if sub.running_mean is None or sub.running_var is None:
                raise UnsupportedModelError("{}: {} has track_running_stats=False, so it normalizes with each "
                                            "batch's statistics; the DPU needs fixed ones".format(net, name))
            if sub.training:
                raise UnsupportedModelError(
                    "{}: {} is in train mode; vai_q_pytorch fails there too (ValueError: batch_norm eps must be "
                    "positive during training, but got 0.0): call model.eval() before building the "
                    "quantizer".format(net, name))


def trace_chain(module):
    """The model's chain of DPU layers, with the real quantizer's names; a clear error otherwise."""
    net = type(module).__name__
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as e:  # data-dependent control flow and the like
        raise UnsupportedModelError("{}: cannot be traced ({})".format(net, str(e).splitlines()[0]))
    ops = chain_ops(module, graph, net)
    check_ops(net, ops)
    modules = dict(module.named_modules())

    # Node numbers count every node, the input being 0; the traced names of
    # release 3.5 on torch 2.x number every op's return value 1, 3, 5, ...
    # and leave the last one bare ("ret").
    layers, messages = [], []

    def say(message):
        if message not in messages:
            messages.append(message)

    for k, (kind, name, sub, extra) in enumerate(ops, start=1):
        last = k == len(ops)
        if kind in (DENSE, BATCH_NORM):
            traced = traced_name(net, _scope(net, name, modules), k, last)
            layers.append(ChainLayer(name=name, module=sub, kind=kind, node=node_name(net, kind, k), traced=traced))
            if kind == BATCH_NORM:
                say(BN_NOTE.format(traced))
            continue
        layer = layers[-1]
        layer.activation = kind
        layer.act_node = node_name(net, kind, k)
        # A replaced ReLU6 module is traced as the ReLU that took its place.
        scope = net if name is None else _scope(net, name, modules, "ReLU" if extra == "relu6 module" else None)
        layer.act_traced = traced_name(net, scope, k, last)
        if extra == "relu6 module":
            say(RELU6_WARNING)
        elif kind == LEAKY_RELU and float(extra) != LEAKY_RELU_ALPHA:
            say(LEAKY_RELU_WARNING.format(extra))
    return Chain(net, layers[0].module.in_features, layers, messages)


def node_name(net, kind, k):
    """The quantizer's name of op k: FFN::nndct_dense_1."""
    return "{}::nndct_{}_{}".format(net, kind, k)


def traced_name(net, scope, k, last):
    """Op k's traced name: its value is ret.(2k-1), the last one's bare (FFN::FFN/Linear[l1]/ret.1)."""
    return "{}::{}/{}".format(net, scope, "ret" if last else "ret.{}".format(2 * k - 1))


def _scope(net, qualified_name, modules, last_class=None):
    """The traced scope of a submodule: FFN/Linear[l1], FFN/Sequential[body]/Linear[0]."""
    parts, path = [net], []
    names = qualified_name.split(".")
    for k, part in enumerate(names):
        path.append(part)
        cls = type(modules[".".join(path)]).__name__
        if last_class is not None and k == len(names) - 1:
            cls = last_class
        parts.append("{}[{}]".format(cls, part))
    return "/".join(parts)


def check_model(module):
    """One line for `run.py --train`: why the built-in quantizer could not take this model,
    or None when it can (tracing only; the weights do not matter)."""
    try:
        trace_chain(module)
    except UnsupportedModelError as e:
        return str(e)
    return None
