"""Quantization-aware training: vai_q_pytorch 3.5's QatProcessor, computed by the built-in
quantizer (spec qat.md).

The model the tool accepts has a QuantStub on its input and its activations as modules
(qat_form makes that form of a float model). QatProcessor(model, inputs).trainable_model()
is a copy of it with a TQT quantizer (tqt.py) on every tensor that post-training
quantization quantizes: the stub's output, each Linear's weight and bias (QuantizedLinear),
each activation's output, and the output of a Linear without an activation. Training moves
the weights and the log thresholds together. to_deployable turns the thresholds into fix
positions (quant_info.json, legalized as PTQ's; test/quant_info.json before legalization)
and saves the trained float parameters (deployable.pth); the deployable model is PTQ's
test-mode network on them (quant_model.py), and export_xmodel writes its xmodel and
deploy-check dumps (export.py) under the names of the quantizer's QAT graph.
"""
import collections
import copy
import os
import types
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from dpu.int_model import BIT_WIDTH, LEAKY_RELU_ALPHA
from flow.checked_io import InputError, load_torch_file, torch_save

from . import export
from .legalize import legalize
from .nn import QuantStub
from .quant_info import read_bias_corr, read_quant_info, write_quant_info
from .quant_model import QuantModel
from .quantizer import BATCH_SIZE_ERROR
from .tqt import OUTPUT, PARAM, TQTQuantizer
from .trace import (BATCH_NORM, DENSE, DROPOUT_FUNCTIONS, DROPOUT_MODULES, LEAKY_RELU, LEAKY_RELU_FUNCTIONS,
                    LEAKY_RELU_WARNING, RELU, RELU6, RELU6_FUNCTIONS, RELU_FUNCTIONS, Chain, ChainLayer,
                    UnsupportedModelError, chain_ops, check_ops, node_name, traced_name)

DEPLOYABLE = "deployable.pth"
TEST_DIR = "test"          # to_deployable's quant_info.json before legalization
RELEASE = "3.5"            # the release whose QatProcessor this is

# The quantizer's graph of a QAT model: the input is node 0 and the stub node 1, so the
# layers' nodes and traced return values are numbered one op later than in PTQ's graph of
# the float model (nndct_dense_2, .../ret.3, ...).
STUB_KIND = "quant_stub"
STUB_NODE = 1
# The stub's own output comes from an autograd Function, which the trace leaves without a
# variable name: its name is the tracer's number of the value, which the real tool's trace
# (torch 2.13, as the golden run) gives after counting the values of the whole forward.
# Measured with the real tool on chains of every kind below, flat and nested (57 for
# model.py's FFN): a base, plus per op the values of its call, plus per call of a container
# module (a module whose forward calls others: nn.Sequential, a block) one value and, for
# every op inside it at any depth, that op's values in its container.
STUB_VALUE_BASE = 16
STUB_VALUES = {                  # op: (values of the op's call, values in each enclosing container)
    STUB_KIND: (0, 4),           # its call's own values are in the base
    nn.Linear: (9, 2),
    nn.ReLU: (7, 2),
    nn.LeakyReLU: (10, 3),
    nn.ReLU6: (13, 4),
    nn.Dropout: (10, 3),
    F.dropout: (6, 3),           # functional, outside any module of its own
}
# The xmodel of a model with a QuantStub is its quantized region, a subgraph the deploy
# names <Net>_<index>; a chain has one region.
DEPLOY_GRAPH = "{}_0"

# The real tool's words (errors.txt of the golden case; quant_aware_training.py).
INPUT_NOT_QUANTIZED = ("[VAIQ_ERROR][QUANTIZER_TORCH_INPUT_NOT_QUANTIZED]: Input is not quantized. Please use "
                       "QuantStub/DeQuantStub to define quantization scope.")
RELU_NOT_A_MODULE = ("[VAIQ_ERROR][QUANTIZER_TORCH_NOT_A_MODULE]: Quantized operation({}) must be instance of "
                     "\"torch.nn.Module\", please replace torch.nn.functional.relu with {}.")
NOT_A_MODULE = ("[VAIQ_ERROR][QUANTIZER_TORCH_NOT_A_MODULE]: Can not quantize node \"{}({})\" as it is not a "
                "torch.nn.Module object, please re-implement this operation as a module.")
REUSED_MODULE = ("[VAIQ_ERROR][QUANTIZER_TORCH_REUSED_MODULE]: Quantized module \"{}\" has been called multiple "
                 "times in forward pass.")
BN_NOT_QUANTIZED = ("[VAIQ_ERROR][QUANTIZER_TORCH_UNSUPPORTED_OPS]: The quantization of {} not implemented yet. "
                    "(Node name: {})")
MUST_CALL = "[VAIQ_ERROR][QUANTIZER_TORCH_QAT_PROCESS_ERROR]: Must call \"{}\" first."
NOT_TRAINED = "[VAIQ_WARN][QUANTIZER_TORCH_SCALE_VALUE]: Exported scale values are not trained: {}."
FORM_HINT = " (vaiq.qat.qat_form(model) makes the form QatProcessor takes)"


class QatModelError(UnsupportedModelError):
    pass


# ---------------------------------------------------------------- the model's QAT graph

@dataclass
class QatChain(Chain):
    """A Chain whose network input is the QuantStub's output, named as in the QAT graph."""
    stub: str = ""                  # the QuantStub's qualified name, "quant_stub"
    stub_tensor: str = ""           # "FFN::nndct_quant_stub_1"
    stub_traced: str = ""           # "FFN::FFN/QuantStub[quant_stub]/57"
    # Per layer, the qualified name of its activation module (None: the layer's own output
    # is quantized, by a quantizer on the Linear).
    activation_modules: List[Optional[str]] = field(default_factory=list)

    @property
    def input_tensor(self):
        return self.stub_tensor

    @property
    def input_traced(self):
        return self.stub_traced

    def node_types(self):
        types_ = super().node_types()
        return types_[:1] + ["nndct_" + STUB_KIND] + types_[1:]


def _call_name(caller, module):
    """How the real tool's tracer names `module` called from `caller`: its class with, in
    brackets, its path below the caller as a preorder search of the caller's children first
    finds it, each step after the first written "]/Class[name" (a ModuleList's items:
    "]/ModuleList[index"). A child of the caller is "Linear[l1]"; a module called past its
    container is "Linear[body]/Block[1]/Linear[lin]", its own class first."""
    def path(parent, prefix):
        if parent is module:
            return prefix
        if isinstance(parent, nn.ModuleList):
            children = [(str(k), child, "ModuleList") for k, child in enumerate(parent)]
        else:
            children = [(name, child, type(child).__name__) for name, child in parent.named_children()]
        for name, child, cls in children:
            step = "{}]/{}[{}".format(prefix, cls, name) if prefix else (
                "ModuleList[" + name if isinstance(parent, nn.ModuleList) else name)
            found = path(child, step)
            if found is not None:
                return found
        return None

    found = path(caller, "")
    return "{}[{}]".format(type(module).__name__, found) if found else type(module).__name__


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, with QuantStub kept as one call, noting each op's traced scope (the
    names of the module calls it is made in) and the nodes made inside each call of a container
    module (one traced through: not a leaf, and not the model itself)."""

    def __init__(self):
        super().__init__()
        self.scopes = {}        # node -> scope, "FFN/Linear[l1]" (a function's: its caller's)
        self.containers = []    # per container call, the nodes made in it
        self._calls = []        # (module, scope, nodes) of the open calls, the model's first

    def trace(self, root, concrete_args=None):
        self._calls = [(root, type(root).__name__, None)]
        return super().trace(root, concrete_args)

    def is_leaf_module(self, module, qualified_name):
        return isinstance(module, QuantStub) or super().is_leaf_module(module, qualified_name)

    def call_module(self, module, forward, args, kwargs):
        caller, caller_scope, _ = self._calls[-1]
        scope = "{}/{}".format(caller_scope, _call_name(caller, module))
        if self.is_leaf_module(module, self.path_of_module(module)):
            result = super().call_module(module, forward, args, kwargs)
            self.scopes[result.node] = scope
            return result
        self.containers.append([])
        self._calls.append((module, scope, self.containers[-1]))
        try:
            return super().call_module(module, forward, args, kwargs)
        finally:
            self._calls.pop()

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        self.scopes[node] = self._calls[-1][1]
        for _, _, nodes in self._calls[1:]:
            nodes.append(node)
        return node


def _trace(model):
    """The model traced by _Tracer."""
    tracer = _Tracer()
    try:
        tracer.graph = tracer.trace(model)
    except Exception as e:  # data-dependent control flow and the like
        raise UnsupportedModelError("{}: cannot be traced ({})".format(
            type(model).__name__, (str(e).splitlines() or [repr(e)])[0]))
    return tracer


def _stub_value(model, graph, containers):
    """The stub output's value number in the real tool's trace (STUB_VALUES)."""
    modules = dict(model.named_modules())

    def values(node):
        if node.op == "call_function" and node.target in DROPOUT_FUNCTIONS:
            return STUB_VALUES[F.dropout]
        if node.op != "call_module":
            return 0, 0
        module = modules[node.target]
        if isinstance(module, QuantStub):
            return STUB_VALUES[STUB_KIND]
        return next((v for op, v in STUB_VALUES.items() if isinstance(op, type) and isinstance(module, op)), (0, 0))

    total = STUB_VALUE_BASE + sum(values(node)[0] for node in graph.nodes)
    for nodes in containers:
        total += 1 + sum(values(node)[1] for node in nodes)
    return total


def _take_stub(model, graph):
    """The QuantStub's qualified name, its call taken out of `graph` (None: no stub)."""
    net = type(model).__name__
    modules = dict(model.named_modules())
    calls = [node for node in graph.nodes if node.op == "call_module" and isinstance(modules[node.target], QuantStub)]
    if not calls:
        return None
    first_op = next(node for node in graph.nodes if node.op != "placeholder")
    source = calls[0].args[0] if calls[0].args else None
    if len(calls) > 1 or calls[0] is not first_op or getattr(source, "op", None) != "placeholder":
        raise QatModelError("{}: the built-in QAT takes one QuantStub, called first, on the network input".format(net))
    stub = calls[0]
    stub.replace_all_uses_with(stub.args[0])
    graph.erase_node(stub)
    return stub.target


def qat_chain(model, graph_name=None):
    """The QatChain of a model in QAT form, named as the real QatProcessor's graph; the real
    tool's error, in one line, for a model it refuses. `graph_name` names the chain's files
    (the deploy's "<Net>_0"); tensor and op names keep the class name."""
    net = type(model).__name__
    tracer = _trace(model)
    graph, modules = tracer.graph, dict(model.named_modules())
    stub_value = _stub_value(model, graph, tracer.containers)
    module_scopes = {node.target: tracer.scopes[node] for node in graph.nodes if node.op == "call_module"}
    stub = _take_stub(model, graph)
    if stub is None:
        raise QatModelError(INPUT_NOT_QUANTIZED + FORM_HINT)
    ops = chain_ops(model, graph, net)
    check_ops(net, ops)
    # The nodes of `ops`, for their scopes: every node but the input, the output and dropout.
    op_nodes = [node for node in graph.nodes if node.op not in ("placeholder", "output") and not (
        node.target in DROPOUT_FUNCTIONS or isinstance(modules.get(node.target), DROPOUT_MODULES))]
    last_k = STUB_NODE + len(ops)
    layers, activations, messages, seen = [], [], [], set()
    for k, (node, (kind, name, sub, extra)) in enumerate(zip(op_nodes, ops), start=STUB_NODE + 1):
        traced = traced_name(net, tracer.scopes[node], k, k == last_k)
        if kind in (DENSE, BATCH_NORM):
            if kind == BATCH_NORM:   # no quantized BatchNorm1d in the real QAT (only conv + BN)
                raise QatModelError(BN_NOT_QUANTIZED.format(type(sub), traced))
            layers.append(ChainLayer(name=name, module=sub, kind=kind, node=node_name(net, kind, k), traced=traced))
            activations.append(None)
        else:
            if name is None:
                if kind == RELU:
                    raise QatModelError(RELU_NOT_A_MODULE.format(traced, nn.ReLU) + FORM_HINT)
                raise QatModelError(NOT_A_MODULE.format(traced, node_name(net, kind, k).split("::")[1]) + FORM_HINT)
            if extra == "relu6 module":   # QAT turns equalization off, which replaces ReLU6 by ReLU in PTQ
                kind = RELU6
            elif kind == LEAKY_RELU and float(extra) != LEAKY_RELU_ALPHA:
                if LEAKY_RELU_WARNING.format(extra) not in messages:
                    messages.append(LEAKY_RELU_WARNING.format(extra))
            layer = layers[-1]
            layer.activation, layer.act_node, layer.act_traced = kind, node_name(net, kind, k), traced
            activations[-1] = name
        if name in seen:
            raise QatModelError(REUSED_MODULE.format(name))
        seen.add(name)
    return QatChain(graph_name or net, layers[0].module.in_features, layers, messages, stub=stub,
                    stub_tensor=node_name(net, STUB_KIND, STUB_NODE),
                    stub_traced="{}::{}/{}".format(net, module_scopes[stub], stub_value),
                    activation_modules=activations)


# ---------------------------------------------------------------- the QAT form of a float model

class _ChainForward(object):
    """The forward of a model made by qat_form: its modules, one after the other."""

    def forward(self, x):
        for name in self.qat_modules:
            x = self.get_submodule(name)(x)
        return x


_FORM_CLASSES = {}


def _form_class(cls):
    """A subclass of the model's class with the same name (the quantizer's names start with
    it) and _ChainForward's forward."""
    if issubclass(cls, _ChainForward):   # a form made again
        return cls
    if cls not in _FORM_CLASSES:
        _FORM_CLASSES[cls] = type(cls.__name__, (_ChainForward, cls), {"__module__": cls.__module__})
    return _FORM_CLASSES[cls]


# The base of a new module's name, by class (relu1, relu2, leaky_relu1, relu6_1, dropout1).
_BASES = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.ReLU6: "relu6_", nn.Dropout: "dropout"}


def _module_for(node):
    """(name base, module) for a functional activation or dropout node; None for other nodes."""
    target = node.target
    if node.op == "call_method" and target in ("relu", "relu_"):
        return _BASES[nn.ReLU], nn.ReLU()
    if node.op != "call_function":
        return None
    if target in RELU_FUNCTIONS:
        return _BASES[nn.ReLU], nn.ReLU()
    if target in LEAKY_RELU_FUNCTIONS:
        slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
        return _BASES[nn.LeakyReLU], nn.LeakyReLU(slope)
    if target in RELU6_FUNCTIONS:
        return _BASES[nn.ReLU6], nn.ReLU6()
    if target in DROPOUT_FUNCTIONS:
        p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
        return _BASES[nn.Dropout], nn.Dropout(p)
    return None


def qat_form(model):
    """The model in the form QatProcessor takes, made from a float model of any chain the
    built-in quantizer supports: a QuantStub on the input, each functional activation
    (F.relu, F.leaky_relu, F.relu6, and F.dropout) as a module of its own (relu1, relu2, ...;
    an activation module called twice gets one per call), and a forward that calls the
    modules in order. The new modules hold no parameters, so the float checkpoint loads
    unchanged (strict); they sit in the module order right after the module before them,
    which keeps the trainable model's state dict in forward order. The model is copied, and
    keeps its class name. A model QAT cannot take is refused in one line (InputError)."""
    net = type(model).__name__
    graph = _trace(model).graph
    stub = _take_stub(model, graph)
    ops = chain_ops(model, graph, net)     # refuses what the built-in quantizer does not take
    check_ops(net, ops)
    for kind, name, sub, _ in ops:
        if kind == BATCH_NORM:
            raise QatModelError(BN_NOT_QUANTIZED.format(type(sub), name) + "; vai_q_pytorch's QAT quantizes "
                                "BatchNorm only fused into a convolution")
    form = copy.deepcopy(model)
    taken = {name.split(".")[0] for name, _ in form.named_modules() if name} | set(dir(form))
    counts = collections.Counter()
    new = collections.OrderedDict()      # name -> (module, the top-level module it follows; None: first)

    def fresh(base, numbered=True):
        name = base
        while numbered or name in taken:
            counts[base] += 1
            name, numbered = "{}{}".format(base, counts[base]), False
        taken.add(name)
        return name

    if stub is None:
        stub = fresh("quant_stub", numbered=False)
        new[stub] = (QuantStub(), None)
    order, called, after = [stub], set(), None
    modules = dict(form.named_modules())
    for node in graph.nodes:
        converted = _module_for(node)
        if node.op == "call_module":
            sub = modules[node.target]
            if node.target not in called or isinstance(sub, (nn.Linear,) + DROPOUT_MODULES):
                called.add(node.target)
                order.append(node.target)
                after = node.target.split(".")[0]
                continue
            base = next(b for cls, b in _BASES.items() if isinstance(sub, cls))
            converted = (base, copy.deepcopy(sub))   # an activation called again: its own module
        if converted is None:
            continue
        name = fresh(converted[0])
        new[name] = (converted[1], after)
        order.append(name)
    children = list(form._modules.items())
    form._modules = collections.OrderedDict()
    for name, (module, after) in new.items():
        if after is None:
            form._modules[name] = module
    for name, module in children:
        form._modules[name] = module
        for new_name, (new_module, after) in new.items():
            if after == name:
                form._modules[new_name] = new_module
    form.__class__ = _form_class(type(model))
    form.qat_modules = order
    qat_chain(form)   # the form must pass the QAT checks
    return form


# ---------------------------------------------------------------- the trainable model

class QuantizedLinear(nn.Linear):
    """nn.Linear whose weight and bias go through their quantizers on every forward. Made by
    from_float, which shares the float module's parameters; its constructor draws initial
    weights from torch's generator first, as the real tool's does."""

    def __init__(self, in_features, out_features, bias=True, bitwidth=BIT_WIDTH):
        super().__init__(in_features, out_features, bias)
        self.weight_quantizer = TQTQuantizer(bitwidth, PARAM)
        if bias:
            self.bias_quantizer = TQTQuantizer(bitwidth, PARAM)

    def forward(self, x):
        weight = self.weight_quantizer(self.weight)
        bias = self.bias_quantizer(self.bias) if self.bias is not None else None
        return F.linear(x, weight, bias)

    @classmethod
    def from_float(cls, linear, bitwidth=BIT_WIDTH):
        quantized = cls(linear.in_features, linear.out_features, linear.bias is not None, bitwidth)
        quantized.weight, quantized.bias = linear.weight, linear.bias
        return quantized


class DPULeakyReLU(nn.LeakyReLU):
    """LeakyReLU with the DPU's only slope, 26/256, whatever the model's: the real tool
    replaces every LeakyReLU module so."""

    def __init__(self):
        super().__init__(LEAKY_RELU_ALPHA)


def _quantize_output(module, inputs, output):
    return module.output_quantizer(output)


def _add_output_quantizer(module, bitwidth):
    module.output_quantizer = TQTQuantizer(bitwidth, OUTPUT)
    handle = module.register_forward_hook(_quantize_output)
    module._forward_hooks.move_to_end(handle.id, last=False)   # before any hook of the user's


def _replace(model, name, module):
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def quantizer_parameters(model):
    return [p for name, p in model.named_parameters() if "log_threshold" in name]


def non_quantizer_parameters(model):
    return [p for name, p in model.named_parameters() if "log_threshold" not in name]


def _quantizer_modules(model):
    return [module for module in model.modules() if isinstance(module, TQTQuantizer)]


def _set_on_quantizers(model, setter, flag):
    for quantizer in _quantizer_modules(model):
        getattr(quantizer, setter)(flag)


def enable_quant(model):
    _set_on_quantizers(model, "enable_quant", True)


def disable_quant(model):
    _set_on_quantizers(model, "enable_quant", False)


def enable_warmup(model):
    _set_on_quantizers(model, "enable_warmup", True)


def disable_warmup(model):
    _set_on_quantizers(model, "enable_warmup", False)


def freeze_quant(model):
    _set_on_quantizers(model, "freeze", True)


# The trainable model's methods besides its forward, as the real tool attaches them.
TRAINABLE_METHODS = (quantizer_parameters, non_quantizer_parameters, enable_quant, disable_quant, enable_warmup,
                     disable_warmup, freeze_quant)


def trainable(model, chain, bitwidth=BIT_WIDTH):
    """A copy of the QAT-form model with a quantizer on every tensor PTQ quantizes."""
    model = copy.deepcopy(model)
    _add_output_quantizer(model.get_submodule(chain.stub), bitwidth)
    for layer, activation in zip(chain.layers, chain.activation_modules):
        linear = QuantizedLinear.from_float(model.get_submodule(layer.name), bitwidth)
        _replace(model, layer.name, linear)
        if activation is None:
            _add_output_quantizer(linear, bitwidth)
            continue
        module = model.get_submodule(activation)
        if isinstance(module, nn.LeakyReLU):
            module = DPULeakyReLU()
            _replace(model, activation, module)
        _add_output_quantizer(module, bitwidth)
    for method in TRAINABLE_METHODS:
        setattr(model, method.__name__, types.MethodType(method, model))
    return model


def quantizers(model, chain):
    """[(section, quant_info key, quantizer)] of a trainable model, in quant_info order."""
    found = []
    for layer in chain.layers:
        linear = model.get_submodule(layer.name)
        found += [("param", layer.weight_key, linear.weight_quantizer),
                  ("param", layer.bias_key, linear.bias_quantizer)]
    found.append(("output", chain.input_tensor, model.get_submodule(chain.stub).output_quantizer))
    for layer, activation in zip(chain.layers, chain.activation_modules):
        found.append(("output", layer.output_tensor, model.get_submodule(activation or layer.name).output_quantizer))
    return found


# ---------------------------------------------------------------- the deployable model

def owns_storage(x):
    """Whether x is all of its storage (not a view into a bigger tensor)."""
    storage = x.untyped_storage() if hasattr(x, "untyped_storage") else x.storage()
    size = storage.nbytes() if hasattr(storage, "nbytes") else storage.size() * x.element_size()
    return size == x.numel() * x.element_size()


class DeployableModel(nn.Module):
    """The trained model in the quantizer's test mode (quant_model.QuantModel): the
    parameters on the grids of their positions, each activation rounded at its position.
    Like the real one, it rounds the input tensor it is given in place, unless that tensor
    is a view into a bigger one (the real kernel writes into its input, and nndct clones
    views first): pass a clone to keep the float input."""

    def __init__(self, chain, positions, bias_corr=None):
        super().__init__()
        self.quant_model = QuantModel(chain, calib=False, positions=positions, bias_corr=bias_corr)
        self.quant_model.dumps = {}   # the last forward's tensors, for export_xmodel

    def forward(self, x):
        out = self.quant_model(x)
        if x.dtype == torch.float32 and owns_storage(x):
            with torch.no_grad():
                x.copy_(self.quant_model.dumps[self.quant_model.chain.input_tensor])
        return out


def _load_state(model, state, path):
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        raise InputError("{}: does not fit the model ({})".format(path, str(e).splitlines()[0]))


# ---------------------------------------------------------------- the processor

class QatProcessor(object):
    """vai_q_pytorch's QatProcessor, as a script calls it:

        qat = QatProcessor(model, (x,), bitwidth=8)
        qm = qat.trainable_model()        # train it: qm.quantizer_parameters(), qm.non_quantizer_parameters()
        qat.to_deployable(qm, "qat_result")
        # deploy, in a new process:
        qat = QatProcessor(model, (x,), bitwidth=8)
        dm = qat.deployable_model("qat_result", used_for_xmodel=True)
        dm(x[:1])
        qat.export_xmodel("qat_result", deploy_check=True)

    `model` is in QAT form (qat_form). The real tool also runs a calibration pass into ./.vai_qat
    to build its graph; the built-in needs none and writes nothing there."""

    def __init__(self, model, inputs, bitwidth=8, mix_bit=False, device=None):
        if isinstance(model, nn.DataParallel):
            raise InputError("[VAIQ_ERROR][QUANTIZER_TORCH_DATA_PARALLEL_NOT_ALLOWED]: torch.nn.DataParallel object "
                             "is not allowed.")
        if bitwidth != BIT_WIDTH:
            raise InputError("bitwidth {}: the built-in quantizer supports {}-bit only".format(bitwidth, BIT_WIDTH))
        if mix_bit:
            raise InputError("mix_bit: not supported by the built-in quantizer")
        self._model = model
        self._inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        self._bitwidth = bitwidth
        self._chain = qat_chain(model)
        example = self._inputs[0] if self._inputs else None   # the real tool traces the model with it
        if not (isinstance(example, torch.Tensor) and example.dim() == 2 and
                example.shape[1] == self._chain.input_size):
            raise InputError("inputs: expected a tensor of shape (batch, {}) for {}, got {}".format(
                self._chain.input_size, self._chain.net_name,
                tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__))
        for message in self._chain.messages:   # what the real tool says about these layers
            print(message)
        self._trainable_model = None
        self._deployable = None   # the model export_xmodel writes

    def trainable_model(self, calib_dir="", allow_reused_module=False):
        """The model with its quantizers; with calib_dir, their thresholds start from that
        folder's quant_info.json (no warm-up)."""
        model = trainable(self._model, self._chain, self._bitwidth)
        if calib_dir:
            positions = read_quant_info(calib_dir, self._chain)[0]
            for section, key, quantizer in quantizers(model, self._chain):
                quantizer.set_fix_position(positions[section][key])
        self._trainable_model = model
        return model

    def positions(self, trained_model):
        """The fix positions of the trained thresholds, {"param": {key: fp}, "output": {...}}."""
        positions = {"param": {}, "output": {}}
        for section, key, quantizer in quantizers(trained_model, self._chain):
            if quantizer.warmup_enabled[0]:
                print(NOT_TRAINED.format(key))
            positions[section][key] = quantizer.fix_position()
        return positions

    def to_deployable(self, trained_model, output_dir):
        """Write output_dir/quant_info.json (legalized), output_dir/test/quant_info.json (as
        trained) and output_dir/deployable.pth (the trained float parameters, with the keys of
        the model as given); return the deployable model."""
        if self._trainable_model is None:
            raise InputError(MUST_CALL.format("trainable_model"))
        trained = trained_model.state_dict()
        model = copy.deepcopy(self._model)
        _load_state(model, collections.OrderedDict((key, trained.get(key)) for key in model.state_dict()),
                    "the trained model")
        model.eval()
        positions = self.positions(trained_model)
        write_quant_info(os.path.join(output_dir, TEST_DIR), self._chain, positions)
        legalize(self._chain, positions)
        write_quant_info(output_dir, self._chain, positions)
        torch_save(model.state_dict(), os.path.join(output_dir, DEPLOYABLE))
        self._deployable = DeployableModel(self._deploy_chain(model), positions)
        return self._deployable

    def deployable_model(self, src_dir, used_for_xmodel=False):
        """The deployable model of src_dir (to_deployable's folder); run one forward of
        batch 1 on it before export_xmodel."""
        path = os.path.join(src_dir, DEPLOYABLE)
        model = copy.deepcopy(self._model)
        _load_state(model, load_torch_file(path, "deployable model"), path)
        model.eval()
        chain = self._deploy_chain(model)
        positions, bias_corrected, _ = read_quant_info(src_dir, chain)
        bias_corr = read_bias_corr(src_dir, chain) if bias_corrected else None
        self._deployable = DeployableModel(chain, positions, bias_corr)
        return self._deployable

    def _deploy_chain(self, model):
        return qat_chain(model, DEPLOY_GRAPH.format(type(model).__name__))

    def _exported(self):
        if self._deployable is None:
            raise InputError(MUST_CALL.format("deployable_model"))
        return self._deployable.quant_model

    def export_xmodel(self, output_dir, deploy_check=False, dynamic_batch=False):
        """<Net>_0_int.xmodel and, with deploy_check, deploy_check_data_int/<Net>_0/ of the
        deployable model's last forward."""
        quant_model = self._exported()
        if quant_model.dumps and export.deploy_batch(quant_model) != 1:
            print(BATCH_SIZE_ERROR[RELEASE])
        export.export_xmodel(quant_model, output_dir, deploy_check)

    def export_torch_script(self, output_dir, verbose=False):
        export.export_torch_script(self._exported(), output_dir)

    def export_onnx_model(self, output_dir, verbose=False, dynamic_batch=False, opset_version=None, native_onnx=True,
                          dump_layers=False, check_model=False, opt_graph=False):
        export.export_onnx_model(self._exported(), output_dir)

