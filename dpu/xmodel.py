"""The XIR graph file (`<Net>_int.xmodel`) of the integer network: write, read, compare.

The writer produces the op list that vai_q_pytorch 3.5 writes for a chain of
DPU ops: the input, every parameter as a const (last layer first, bias before
weight), then per op a matmul or scale and an optional activation (relu,
leaky-relu, relu6), each value followed by its fix op, at the model's batch.
It leaves out the op registry (`op_defs`) that
the quantizer copies into every file, because XIR ignores it on read.

The reader accepts such files from any release (1.3 and 3.5 name their ops
differently): it follows the op args, not the names, and reports every problem
as an XmodelError that names the file.
"""
import os

import numpy as np

from flow.checked_io import InputError, write_bytes
from . import reference, xmodel_pb2
from dpu.int_model import (ACTIVATIONS, BIT_WIDTH, FIX_POINT_LIMIT, LEAKY_RELU, LEAKY_RELU_ALPHA, MATMUL, Q_MAX, Q_MIN,
                            SCALE, IntLayer, IntModel)


class XmodelError(InputError):
    """An .xmodel file that is not a valid integer Linear/ReLU network."""


MAX_FILE_BYTES = 64 * 1024 * 1024   # an FFN file is ~80 KB; refuse anything absurd before parsing
FLOAT = 4                           # Tensor.data_type of every tensor before compilation
FLOAT_BITS = 32
ROUND_MODE = "DPU_ROUND"
SUPPORTED_OP_TYPES = ("data", "const", "fix", MATMUL, SCALE) + ACTIVATIONS
SCALE_AXIS = -1                     # a scale op (BatchNorm1d) works on the channels, the last axis
# The attributes every fix op carries, with the AttrValue member XIR reads
# them from: a value stored in another member (e.g. an int64 fix_point) is
# misread silently by XIR, so the reader refuses it.
FIX_ATTRS = (("fix_point", "int32_value"), ("bit_width", "int32_value"),
             ("round_mode", "string_value"), ("if_signed", "bool_value"))


def fix_name(op_name):
    """The fix op that follows `op_name`."""
    return op_name + "_fix"


# ---------------------------------------------------------------- writing

def build_graph(model):
    """The serial_v2.Graph message of an IntModel, as vai_q_pytorch 3.5 writes it."""
    _check_model(model)
    graph = xmodel_pb2.Graph(graph_name=model.net_name)
    for op in _topological(_vertices(model)):
        _add_op(graph, *op)
    graph.subg_root.subgraph_name = "root"
    graph.subg_root.op_name.extend(op.op_name for op in graph.op_node)
    return graph


def _vertices(model):
    """(name, type, shape, attrs, args) of every op, in the order the quantizer creates
    them: each parameter (const, then its fix) in quant_info order, the input and its
    fix, then the compute ops in graph order, each followed by its fix."""
    ops = []

    def fix(producer, shape, fp):
        ops.append((fix_name(producer), "fix", shape,
                    {"fix_point": ("int32_value", int(fp)), "bit_width": ("int32_value", BIT_WIDTH),
                     "round_mode": ("string_value", ROUND_MODE), "if_signed": ("bool_value", True)},
                    [("input", [producer])]))

    for layer in model.layers:
        for name, q, fp in ((layer.weight_op_name, layer.weight, layer.fp_w), (layer.bias_op_name, layer.bias, layer.fp_b)):
            shape = list(np.shape(q))
            ops.append((name, "const", shape, {"shape": ("int32_vec_value", shape), "data_type": ("string_value", "float32"),
                                               "data": ("bytes_value", reference.dequantize(q, fp).astype("<f4").tobytes())}, []))
            fix(name, shape, fp)
    in_shape = [model.batch, model.input_size]
    ops.append((model.input_op_name, "data", in_shape,
                {"shape": ("int32_vec_value", in_shape), "data_type": ("string_value", "FLOAT32")}, []))
    fix(model.input_op_name, in_shape, model.fp_in)
    x = fix_name(model.input_op_name)
    for layer in model.layers:
        out_shape = [model.batch, layer.out_features]
        if layer.kind == MATMUL:
            ops.append((layer.op_name, MATMUL, out_shape,
                        {"transpose_a": ("bool_value", False), "transpose_b": ("bool_value", True)},
                        [("input", [x, fix_name(layer.weight_op_name)]), ("bias", [fix_name(layer.bias_op_name)])]))
        else:
            ops.append((layer.op_name, SCALE, out_shape, {"axis": ("int32_value", SCALE_AXIS)},
                        [("input", [x]), ("scale", [fix_name(layer.weight_op_name)]),
                         ("bias", [fix_name(layer.bias_op_name)])]))
        if layer.activation:
            attrs = {"alpha": ("float_value", LEAKY_RELU_ALPHA)} if layer.activation == LEAKY_RELU else {}
            ops.append((layer.activation_op_name, layer.activation, out_shape, attrs, [("input", [layer.op_name])]))
        fix(layer.output_op_name, out_shape, layer.fp_out)
        x = fix_name(layer.output_op_name)
    return ops


def _topological(ops):
    """XIR's op order: the reverse of a depth-first post-order, started from each op in
    creation order, that follows a producer's consumers in their creation order."""
    index = {op[0]: k for k, op in enumerate(ops)}
    consumers = [[] for _ in ops]
    for k, op in enumerate(ops):
        for _, producers in op[4]:
            for producer in producers:
                consumers[index[producer]].append(k)
    done, order = [False] * len(ops), []
    for root in range(len(ops)):
        if done[root]:
            continue
        done[root] = True
        stack = [(root, iter(consumers[root]))]
        while stack:   # iterative: a deep network must not hit Python's recursion limit
            k, pending = stack[-1]
            nxt = next((c for c in pending if not done[c]), None)
            if nxt is None:
                stack.pop()
                order.append(k)
            else:
                done[nxt] = True
                stack.append((nxt, iter(consumers[nxt])))
    return [ops[k] for k in reversed(order)]


def serialize_graph(graph):
    """The file bytes, the same every time (map entries sorted by key).

    Only the order of map entries may differ between protobuf runtimes (upb puts
    "data_type" before "data", the pure-Python runtime after); XIR does not care.
    """
    return graph.SerializeToString(deterministic=True)


def write_xmodel(model, path):
    write_bytes(path, serialize_graph(build_graph(model)))


def _add_op(graph, name, op_type, shape, attrs, args):
    op = graph.op_node.add(op_name=name, op_type=op_type)
    for key, (member, value) in attrs.items():
        _set_attr(op.op_attr[key], member, value)
    for arg_name, producers in args:
        op.args.add(arg_name=arg_name, arg_ops=producers)
    op.output_tensor.tensor_name = name
    op.output_tensor.tensor_dim.extend(shape)
    op.output_tensor.data_type = FLOAT
    op.output_tensor.tensor_bit_width = FLOAT_BITS


def _set_attr(attr, member, value):
    if member == "bytes_value":
        attr.bytes_value.value = value
    elif member == "int32_vec_value":
        attr.int32_vec_value.SetInParent()   # selects the member even for an empty vector
        attr.int32_vec_value.value.extend(int(v) for v in value)
    else:
        setattr(attr, member, value)


def _check_model(model):
    """Refuse an IntModel that would give a file XIR rejects (a bug upstream, hence ValueError):
    the shapes and int8 values the DPU reference checks, then what only the file needs."""
    reference.check_model(model)
    fps = [model.fp_in]
    for layer in model.layers:
        if layer.activation and not layer.activation_op_name:
            raise ValueError("layer {}: {} without activation_op_name".format(layer.name, layer.activation))
        fps += [layer.fp_w, layer.fp_b, layer.fp_out]
    if any(abs(int(fp)) > FIX_POINT_LIMIT for fp in fps):
        raise ValueError("fix positions {} outside [-{limit}, {limit}]".format(fps, limit=FIX_POINT_LIMIT))


# ---------------------------------------------------------------- reading

def read_xmodel(path):
    """The IntModel that an .xmodel file holds; XmodelError for anything else."""
    return graph_to_model(read_graph(path), path)


def read_graph(path):
    """Parse an .xmodel file into a Graph message, refusing files too big to be an FFN."""
    if os.path.isdir(path):
        raise XmodelError("{}: is a folder, expected an .xmodel file".format(path))
    if not os.path.isfile(path):
        what = "not a regular file" if os.path.exists(path) else "xmodel file not found"
        raise XmodelError("{}: {}".format(path, what))
    too_big = XmodelError("{}: over the {} MiB limit for an xmodel; not parsed".format(
        path, MAX_FILE_BYTES // (1024 * 1024)))
    try:
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise too_big
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)   # the file may grow meanwhile
    except OSError as e:
        raise XmodelError("{}: cannot read ({})".format(path, e.strerror or e))
    if len(data) > MAX_FILE_BYTES:
        raise too_big
    if not data:
        raise XmodelError("{}: is empty, not an xmodel".format(path))
    return parse_graph(data, path)


def parse_graph(data, source):
    graph = xmodel_pb2.Graph()
    try:
        graph.ParseFromString(data)
    except Exception:  # DecodeError, or whatever the pure-Python runtime raises on garbage
        raise XmodelError("{}: not a valid xmodel (protobuf parse error)".format(source))
    return graph


def graph_to_model(graph, source):
    """Validate a Graph as data -> fix -> ((matmul | scale) [-> activation] -> fix)* and return its IntModel."""
    return _GraphReader(graph, source).model()


def _show(value, limit=120):
    """A value from the file fit for a one-line message: control characters escaped, long text cut."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
    return text if len(text) <= limit else text[:limit] + "..."


def _kind(attr):
    """The AttrValue member that is set, as a type name: "int32", "string", ... or "empty"."""
    member = attr.WhichOneof("value")
    return member[:-len("_value")] if member else "empty"


class _GraphReader:
    def __init__(self, graph, source):
        self.graph = graph
        self.source = source
        self.ops = {}          # name -> OPNode, in file order
        self.consumers = {}    # name -> names of the ops that take it as an arg
        self.used = set()      # ops reached from the input; every op must be
        self._index()

    def error(self, template, *values):
        """An XmodelError naming the file; `values` come from the file and are shown safely."""
        return XmodelError("{}: {}".format(self.source, template.format(*[_show(v) for v in values])))

    def _index(self):
        names = [op.op_name for op in self.graph.op_node]
        for op in self.graph.op_node:
            if not op.op_name:
                raise self.error("an op of type '{}' has no name", op.op_type)
            if op.op_name in self.ops:
                raise self.error("op name {} appears twice", op.op_name)
            if op.op_type not in SUPPORTED_OP_TYPES:
                raise self.error("op {} has unsupported type '{}' (supported: {})",
                                 op.op_name, op.op_type, ", ".join(SUPPORTED_OP_TYPES))
            # The other types' args are checked where the chain reaches them.
            if op.op_type in ("data", "const") and op.args:
                raise self.error("op {} ({}) has args; {} ops take none", op.op_name, op.op_type, op.op_type)
            for arg in op.args:
                for producer in arg.arg_ops:
                    if producer not in self.ops:
                        where = "before it is defined (ops must be in topological order)" \
                            if producer in names else "which does not exist"
                        raise self.error("op {} uses op {} {}", op.op_name, producer, where)
                    self.consumers[producer].append(op.op_name)
            self.ops[op.op_name] = op
            self.consumers[op.op_name] = []

    # ---- the chain

    def model(self):
        if not self.ops:
            raise self.error("holds no ops, not an xmodel of a network")
        data_ops = [op for op in self.graph.op_node if op.op_type == "data"]
        if len(data_ops) != 1:
            raise self.error("has {} data ops, expected 1 (the network input)", len(data_ops))
        data = data_ops[0]
        shape = self.int_vector(data, "shape")
        if len(shape) != 2 or shape[1] < 1:
            raise self.error("input {} has shape {}, expected [batch, features]", data.op_name, shape)
        if shape[0] < 1:
            raise self.error("input {} has batch {}, expected at least 1", data.op_name, shape[0])
        self.require_float32(data)
        self.use(data, shape)
        x = self.only_consumer(data, ("fix",))
        fp_in = self.fix_point(x, data.op_name, shape, activation=True)
        layers = []
        width = shape[1]
        self.batch = shape[0]
        while self.consumers[x.op_name]:
            layer, x = self.layer(self.only_consumer(x, (MATMUL, SCALE)), x, width)
            layers.append(layer)
            width = len(layer.bias)
        if not layers:
            raise self.error("has no matmul layer after the input")
        unused = [op for op in self.graph.op_node if op.op_name not in self.used]
        if unused:
            raise self.error("op {} ({}) is not part of the input -> (matmul | scale) -> activation -> fix chain",
                             unused[0].op_name, unused[0].op_type)
        return IntModel(net_name=self.graph.graph_name, input_op_name=data.op_name,
                        input_size=shape[1], fp_in=fp_in, layers=layers, batch=self.batch)

    def layer(self, op, x, width):
        """The layer of matmul or scale `op`, which reads activation fix op `x`;
        (IntLayer, its output fix op)."""
        if op.op_type == MATMUL:
            weight_op, weight, fp_w, bias_op, bias, fp_b = self.matmul_params(op, x, width)
        else:
            weight_op, weight, fp_w, bias_op, bias, fp_b = self.scale_params(op, x, width)
        out_shape = [self.batch, len(bias)]
        self.use(op, out_shape)
        after = self.only_consumer(op, ACTIVATIONS + ("fix",))
        activation = after.op_type if after.op_type in ACTIVATIONS else None
        if activation:
            self.single_input(after)
            if activation == LEAKY_RELU:
                alpha = self.attr(after, "alpha", "float_value")
                if alpha != LEAKY_RELU_ALPHA:
                    raise self.error("op {} has alpha {}; the DPU's leaky-relu takes only {} (26/256)",
                                     after.op_name, alpha, LEAKY_RELU_ALPHA)
            self.use(after, out_shape)
            output, after = after, self.only_consumer(after, ("fix",))
        else:
            output = op
        fp_out = self.fix_point(after, output.op_name, out_shape, activation=True)
        return IntLayer(name=_layer_name(weight_op.op_name, self.graph.graph_name),
                        weight=weight, bias=bias, fp_w=fp_w, fp_b=fp_b, fp_out=fp_out, op_name=op.op_name,
                        activation=activation, activation_op_name=output.op_name if activation else None,
                        weight_op_name=weight_op.op_name, bias_op_name=bias_op.op_name, kind=op.op_type), after

    def matmul_params(self, matmul, x, width):
        args = self.args(matmul, ("input", "bias"))
        if len(args["input"]) != 2 or args["input"][0] != x.op_name:
            raise self.error("matmul {} has inputs {}, expected [{}, <weight fix op>]",
                             matmul.op_name, list(args["input"]), x.op_name)
        if len(args["bias"]) != 1:
            raise self.error("matmul {} has {} bias ops, expected 1", matmul.op_name, len(args["bias"]))
        for key, expected in (("transpose_a", False), ("transpose_b", True)):
            if self.bool_attr(matmul, key) != expected:
                raise self.error("matmul {} has {} {}, expected {} (a Linear's [out, in] weight)",
                                 matmul.op_name, key, not expected, expected)
        weight_op, weight, fp_w = self.param(args["input"][1], matmul)
        bias_op, bias, fp_b = self.param(args["bias"][0], matmul)
        if weight.ndim != 2 or weight.shape[1] != width:
            raise self.error("const {} has shape {}, expected [out, {}] (the previous layer's width)",
                             weight_op.op_name, list(weight.shape), width)
        if bias.shape != weight.shape[:1]:
            raise self.error("const {} has shape {}, expected [{}] (the weight's out)",
                             bias_op.op_name, list(bias.shape), weight.shape[0])
        return weight_op, weight, fp_w, bias_op, bias, fp_b

    def scale_params(self, scale, x, width):
        args = self.args(scale, ("input", "scale", "bias"))
        for name, n in (("input", 1), ("scale", 1), ("bias", 1)):
            if len(args[name]) != n:
                raise self.error("scale {} has {} '{}' ops, expected 1", scale.op_name, len(args[name]), name)
        if args["input"][0] != x.op_name:
            raise self.error("scale {} reads {}, expected {}", scale.op_name, args["input"][0], x.op_name)
        axis = self.attr(scale, "axis", "int32_value") if "axis" in scale.op_attr else SCALE_AXIS
        if axis not in (SCALE_AXIS, 1):
            raise self.error("scale {} has axis {}, expected -1 (the channels)", scale.op_name, axis)
        weight_op, weight, fp_w = self.param(args["scale"][0], scale)
        bias_op, bias, fp_b = self.param(args["bias"][0], scale)
        for const, values in ((weight_op, weight), (bias_op, bias)):
            if values.shape != (width,):
                raise self.error("const {} has shape {}, expected [{}] (the channels)",
                                 const.op_name, list(values.shape), width)
        return weight_op, weight, fp_w, bias_op, bias, fp_b

    def param(self, fix_op_name, user):
        """A weight or bias: the fix op named by the matmul or scale and its const; (const op, int8 values, fp)."""
        fix = self.ops[fix_op_name]
        if fix.op_type != "fix":
            raise self.error("{} {} takes {} ({}) as a parameter, expected a fix op",
                             user.op_type, user.op_name, fix.op_name, fix.op_type)
        producer = self.ops[self.single_input(fix)]
        if producer.op_type != "const":
            raise self.error("fix op {} of a parameter reads {} ({}), expected a const",
                             fix.op_name, producer.op_name, producer.op_type)
        shape = self.int_vector(producer, "shape")
        fp = self.fix_point(fix, producer.op_name, shape, activation=False)
        values = self.const_values(producer, shape, fp)
        self.use(producer, shape)
        return producer, values, fp

    # ---- single ops

    def use(self, op, shape):
        """Mark `op` as part of the chain after checking its output tensor."""
        if op.op_name in self.used:
            raise self.error("op {} is used by more than one layer", op.op_name)
        if not op.HasField("output_tensor"):
            raise self.error("op {} has no output tensor", op.op_name)
        dims = list(op.output_tensor.tensor_dim)
        if dims != list(shape):
            raise self.error("op {} has an output tensor of shape {}, expected {}", op.op_name, dims, list(shape))
        self.used.add(op.op_name)

    def only_consumer(self, op, types):
        users = self.consumers[op.op_name]
        if len(users) != 1 or self.ops[users[0]].op_type not in types:
            found = ", ".join("{} ({})".format(u, self.ops[u].op_type) for u in users) or "nothing"
            raise self.error("op {} feeds {}; expected a single {} op", op.op_name, found, " or ".join(types))
        return self.ops[users[0]]

    def args(self, op, names):
        """The op's args as {name: producers}; exactly the given names, each non-empty."""
        args = {}
        for arg in op.args:
            if arg.arg_name not in names or arg.arg_name in args:
                raise self.error("op {} has an unexpected arg '{}' (expected {})",
                                 op.op_name, arg.arg_name, ", ".join(names))
            args[arg.arg_name] = list(arg.arg_ops)
        for name in names:
            if not args.get(name):
                raise self.error("op {} has no '{}' arg", op.op_name, name)
        return args

    def single_input(self, op):
        """The one producer of a fix or activation op."""
        producers = self.args(op, ("input",))["input"]
        if len(producers) != 1:
            raise self.error("op {} has {} inputs, expected 1", op.op_name, len(producers))
        return producers[0]

    def fix_point(self, fix, producer, shape, activation):
        """Check a fix op that reads `producer`; return its fix_point."""
        if self.single_input(fix) != producer:
            raise self.error("fix op {} does not read {}", fix.op_name, producer)
        values = {key: self.attr(fix, key, member) for key, member in FIX_ATTRS}
        if values["bit_width"] != BIT_WIDTH:
            raise self.error("op {} has bit_width {}; only 8-bit is supported", fix.op_name, values["bit_width"])
        if not values["if_signed"]:
            raise self.error("op {} has if_signed false; int8 values are signed", fix.op_name)
        # Parameters are consts already on their grid, so only activations depend on the rounding.
        if activation and values["round_mode"] != ROUND_MODE:
            raise self.error("op {} has round_mode '{}'; the DPU rounds activations with {}",
                             fix.op_name, values["round_mode"], ROUND_MODE)
        fp = values["fix_point"]
        if abs(fp) > FIX_POINT_LIMIT:
            raise self.error("op {} has fix_point {}, outside [-{}, {}]",
                             fix.op_name, fp, FIX_POINT_LIMIT, FIX_POINT_LIMIT)
        self.use(fix, shape)
        return fp

    def attr(self, op, key, member):
        if key not in op.op_attr:
            raise self.error("op {} has no attribute {}", op.op_name, key)
        value = op.op_attr[key]
        if value.WhichOneof("value") != member:
            raise self.error("op {}: attribute {} is {}, expected {}",
                             op.op_name, key, _kind(value), member[:-len("_value")])
        return getattr(value, member)

    def bool_attr(self, op, key):
        """A bool attribute that XIR defaults to false when absent."""
        return self.attr(op, key, "bool_value") if key in op.op_attr else False

    def int_vector(self, op, key):
        return list(self.attr(op, key, "int32_vec_value").value)

    def require_float32(self, op):
        data_type = self.attr(op, "data_type", "string_value")
        if data_type.lower() != "float32":
            raise self.error("op {} has data_type '{}', expected float32", op.op_name, data_type)

    def const_values(self, op, shape, fp):
        """The const's float32 data as int8 numbers on the 2^-fp grid."""
        self.require_float32(op)
        data = self.attr(op, "data", "bytes_value").value
        if any(d < 1 for d in shape):
            raise self.error("const {} has shape {}, expected positive sizes", op.op_name, shape)
        if len(data) != 4 * _product(shape):
            raise self.error("const {} holds {} bytes, expected 4 per element of shape {}",
                             op.op_name, len(data), shape)
        values = np.frombuffer(data, dtype="<f4").astype(np.float64).reshape(shape)
        q = np.ldexp(values, fp)
        off_grid = ~np.isfinite(q) | (q != np.round(q))
        if off_grid.any():
            raise self.error("const {}: value {} is not a multiple of 2^{} (off the grid of fix_point {})",
                             op.op_name, float(values[off_grid][0]), -fp, fp)
        outside = (q < Q_MIN) | (q > Q_MAX)
        if outside.any():
            raise self.error("const {}: value {} is outside int8 at fix_point {}",
                             op.op_name, float(values[outside][0]), fp)
        return q.astype(np.int8)


def _product(shape):
    """The number of elements, in Python integers (no overflow for absurd shapes)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _layer_name(weight_op_name, net_name):
    """The Linear's name from its weight const: "FFN__l1_weight" -> "l1"."""
    name = weight_op_name
    prefix = net_name + "__"
    if name.startswith(prefix):
        name = name[len(prefix):]
    if name.endswith("_weight"):
        name = name[:-len("_weight")]
    return name


# ---------------------------------------------------------------- comparing

def graph_summary(graph):
    """A canonical, comparable form of a Graph: what XIR reads from it.

    The op list (types, attributes with their value types, args, output
    tensors, const bytes), subg_root and graph_attr, with map entries sorted;
    op_defs (the op registry that XIR ignores) are left out.
    """
    return {
        "graph_name": graph.graph_name,
        "graph_attr": _attr_map(graph.graph_attr),
        "ops": [_op_summary(op) for op in graph.op_node],
        "subg_root": _subgraph_summary(graph.subg_root) if graph.HasField("subg_root") else None,
    }


def _op_summary(op):
    tensor = None
    if op.HasField("output_tensor"):
        t = op.output_tensor
        tensor = {"name": t.tensor_name, "dim": list(t.tensor_dim), "data_type": t.data_type,
                  "bit_width": t.tensor_bit_width, "attr": _attr_map(t.tensor_attr)}
    return {"name": op.op_name, "type": op.op_type, "attr": _attr_map(op.op_attr),
            "args": [(arg.arg_name, list(arg.arg_ops)) for arg in op.args], "output_tensor": tensor}


def _subgraph_summary(subgraph):
    return {"name": subgraph.subgraph_name, "ops": list(subgraph.op_name),
            "attr": _attr_map(subgraph.subg_attr),
            "children": [_subgraph_summary(child) for child in subgraph.subg_child]}


def _attr_map(attrs):
    return sorted((key, _kind(value), _plain(value)) for key, value in attrs.items())


def _plain(attr):
    """An AttrValue's content as plain Python values (vectors as lists, maps as sorted pairs)."""
    member = attr.WhichOneof("value")
    if member is None:
        return None
    value = getattr(attr, member)
    if member == "bytes_value":
        return value.value
    if member == "bytes_vec_value":
        return [item.value for item in value.value]
    if member.endswith("_vec_value"):
        return list(value.value)
    if member.startswith("map_"):
        return sorted((key, _map_item(item)) for key, item in value.value.items())
    return value


def _map_item(item):
    if isinstance(item, xmodel_pb2.Bytes):
        return item.value
    if hasattr(item, "value"):   # a vector message
        return list(item.value)
    return item
