"""Reading a model as a chain of DPU layers (Linear, optionally followed by ReLU),
and naming its tensors as vai_q_pytorch 3.5 does (spec: "The model"; xmodel.md: "Op names").
"""
import re
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from checked_io import InputError


class UnsupportedModelError(InputError):
    pass


RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)


@dataclass
class ChainLayer:
    name: str                   # qualified module name, e.g. "l1"
    linear: nn.Linear
    relu: bool
    node: str                   # quantizer node of the Linear, "FFN::nndct_dense_1"
    relu_node: Optional[str]    # quantizer node of its ReLU, "FFN::nndct_relu_2"
    traced: str                 # traced name of the Linear, "FFN::FFN/Linear[l1]/ret.1"
    relu_traced: Optional[str]  # traced name of the ReLU, "FFN::FFN/ret.3"

    @property
    def output_tensor(self):
        """The tensor that carries the layer's quantized output (the ReLU's if fused)."""
        return self.relu_node if self.relu else self.node

    @property
    def weight_key(self):
        return "{}::{}.weight".format(self.node.split("::")[0], self.name)

    @property
    def bias_key(self):
        return "{}::{}.bias".format(self.node.split("::")[0], self.name)


@dataclass
class Chain:
    net_name: str               # the model's class name, "FFN"
    input_size: int
    layers: List[ChainLayer]

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


def op_name(traced_name):
    """xmodel op name: every character outside [0-9A-Za-z] becomes '_'."""
    return re.sub(r"[^0-9A-Za-z]", "_", traced_name)


def trace_chain(module):
    """The model's Linear/ReLU chain; any other operation is a clear error."""
    net = type(module).__name__
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as e:  # data-dependent control flow and the like
        raise UnsupportedModelError("{}: cannot be traced ({})".format(net, str(e).splitlines()[0]))
    modules = dict(module.named_modules())

    ops = []   # ("linear", qualified name, module) or ("relu", scope name or None)
    n_inputs = 0
    for node in graph.nodes:
        if node.op == "placeholder":
            n_inputs += 1
        elif node.op == "output":
            pass
        elif node.op == "call_module" and isinstance(modules[node.target], nn.Linear):
            ops.append(("linear", node.target, modules[node.target]))
        elif node.op == "call_module" and isinstance(modules[node.target], nn.ReLU):
            ops.append(("relu", node.target, modules[node.target]))
        elif node.op == "call_function" and node.target in RELU_FUNCTIONS:
            ops.append(("relu", None, None))
        elif node.op == "call_method" and node.target in ("relu", "relu_"):
            ops.append(("relu", None, None))
        else:
            what = node.target if node.op != "call_module" else type(modules[node.target]).__name__
            raise UnsupportedModelError("{}: unsupported operation {} ({}); the built-in quantizer takes a chain "
                                        "of nn.Linear layers with ReLU".format(net, getattr(what, "__name__", what), node.op))
    if n_inputs != 1:
        raise UnsupportedModelError("{}: takes {} inputs, the built-in quantizer supports one".format(net, n_inputs))
    if not ops or ops[0][0] != "linear":
        raise UnsupportedModelError("{}: must start with an nn.Linear".format(net))
    for previous, current in zip(ops, ops[1:]):
        if previous[0] == "relu" and current[0] == "relu":
            raise UnsupportedModelError("{}: two ReLUs in a row are not supported".format(net))
    linears = [op for op in ops if op[0] == "linear"]
    for _, name, linear in linears:
        if linear.bias is None:
            raise UnsupportedModelError("{}: {} is an nn.Linear without bias; the DPU flow here needs a bias "
                                        "(bias=True)".format(net, name))
    for previous, current in zip(linears, linears[1:]):
        if previous[2].out_features != current[2].in_features:
            raise UnsupportedModelError("{}: {} gives {} features, {} takes {}".format(
                net, previous[1], previous[2].out_features, current[1], current[2].in_features))

    # Node numbers count every node, the input being 0; the traced names of
    # release 3.5 on torch 2.x number every op's return value 1, 3, 5, ...
    # and leave the last one bare ("ret").
    layers = []
    for k, op in enumerate(ops, start=1):
        suffix = "ret" if k == len(ops) else "ret.{}".format(2 * k - 1)
        if op[0] == "linear":
            layers.append(ChainLayer(
                name=op[1], linear=op[2], relu=False,
                node="{}::nndct_dense_{}".format(net, k), relu_node=None,
                traced="{}::{}/{}".format(net, _scope(net, op[1], modules), suffix), relu_traced=None))
        else:
            layer = layers[-1]
            layer.relu = True
            layer.relu_node = "{}::nndct_relu_{}".format(net, k)
            scope = net if op[1] is None else _scope(net, op[1], modules)
            layer.relu_traced = "{}::{}/{}".format(net, scope, suffix)
    return Chain(net, layers[0].linear.in_features, layers)


def _scope(net, qualified_name, modules):
    """The traced scope of a submodule: FFN/Linear[l1], FFN/Sequential[body]/Linear[0]."""
    parts, path = [net], []
    for part in qualified_name.split("."):
        path.append(part)
        parts.append("{}[{}]".format(type(modules[".".join(path)]).__name__, part))
    return "/".join(parts)
