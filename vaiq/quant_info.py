"""quant_info.json and bias_corr.pth: the calibration result (spec: "Files").

Written in the release 3.x form with the exact text layout of vai_q_pytorch;
read in that form and in the flat release 1.3 form, whose activation names
come from the traced graph and are matched to ours by position.
"""
import hashlib
import json
import math
import os

import torch

from flow.checked_io import InputError, load_torch_file, torch_save, write_text

from dpu.int_model import BIT_WIDTH, FIX_POINT_LIMIT

QUANT_INFO = "quant_info.json"
BIAS_CORR = "bias_corr.pth"
FT_PARAMS = "param.pth"    # fast finetune's float parameters
# The release whose arithmetic the built-in quantizer reproduces.
VERSION = "3.5.0+builtin+torch{}".format(torch.__version__.split("+")[0])


class QuantInfoError(InputError):
    pass


def graph_md5(chain):
    """The md5 of the quantizer's node types and their wiring (layers.md, "File layout
    rules"): the same for every FFN size, 266ba1edd5084e1cb1978d5d9074b774 for model.py's."""
    types = chain.node_types()
    nodes = [{"op": t, "input_ops": types[k - 1:k], "output_ops": types[k + 1:k + 2]} for k, t in enumerate(types)]
    return hashlib.md5(json.dumps({"nodes": nodes}, indent=2, separators=(",", ": ")).encode()).hexdigest()


def _section(name, entries):
    """One section as vai_q_pytorch lays it out (jsoncpp's styled writer)."""
    lines = ['  "{}":'.format(name), "  {"]
    lines.append(",\n".join('    "{}":[[{},{}]]'.format(key, BIT_WIDTH, fp) for key, fp in entries) or "")
    lines.append("  }")
    return "\n".join(lines)


def format_quant_info(chain, positions, bias_corrected, fast_finetuned=False):
    param = [(key, positions["param"][key]) for key in chain.param_tensors()]
    output = [(key, positions["output"][key]) for key in chain.activation_tensors()]
    parts = [
        _section("param", param),
        _section("output", output),
        _section("input", []),
        '  "fast_finetuned":{}'.format(json.dumps(fast_finetuned)),
        '  "bias_corrected":{}'.format(json.dumps(bias_corrected)),
        '  "version":{}'.format(json.dumps(VERSION)),
        '  "graph_md5":{}'.format(json.dumps(graph_md5(chain))),
    ]
    return "{\n" + ",\n".join(parts) + "\n}"


def write_quant_info(output_dir, chain, positions, bias_corr=None, ft_params=None):
    """quant_info.json, with bias_corr.pth when bias correction ran and param.pth
    ({layer: (weight, bias)}) after fast finetune; stale ones are removed."""
    for section in ("param", "output"):   # checked before anything is written
        for key, fp in positions[section].items():
            check_range(os.path.join(output_dir, QUANT_INFO), key, fp)
    for name, content in ((BIAS_CORR, bias_corr), (FT_PARAMS, _state_dict(ft_params))):
        path = os.path.join(output_dir, name)
        if content is not None:
            torch_save(content, path)
        elif os.path.isfile(path):
            os.remove(path)
    write_text(os.path.join(output_dir, QUANT_INFO),
               format_quant_info(chain, positions, bias_corr is not None, ft_params is not None))


def _state_dict(ft_params):
    if ft_params is None:
        return None
    state = {}
    for name, (weight, bias) in ft_params.items():
        state[name + ".weight"], state[name + ".bias"] = weight.detach().clone(), bias.detach().clone()
    return state


def read_ft_params(output_dir, chain):
    """{layer name: (weight, bias)} from param.pth, checked against the model."""
    path = os.path.join(output_dir, FT_PARAMS)
    if not os.path.isfile(path):
        raise QuantInfoError("{}: not found; run --quant_mode calib --fast_finetune first".format(path))
    state = load_torch_file(path, "fast finetune parameter file")
    if not isinstance(state, dict):
        raise QuantInfoError("{}: expected a state dict".format(path))
    params = {}
    for layer in chain.layers:
        pair = []
        for key, reference in zip(("weight", "bias"), layer.float_params()):
            tensor = state.get("{}.{}".format(layer.name, key))
            if not isinstance(tensor, torch.Tensor) or tensor.shape != reference.shape:
                raise QuantInfoError("{}: {}.{} is missing or has the wrong shape".format(path, layer.name, key))
            if not torch.isfinite(tensor).all():
                raise QuantInfoError("{}: {}.{} holds NaN or Inf".format(path, layer.name, key))
            pair.append(tensor.float())
        params[layer.name] = tuple(pair)
    if len(state) != 2 * len(chain.layers):
        raise QuantInfoError("{}: holds {} tensors, the model has {}".format(path, len(state), 2 * len(chain.layers)))
    return params


def _position(path, key, value):
    """(bit width, fix position) from [[8, 6]] (3.x) or [8, 6] (1.3)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)):
        raise QuantInfoError("{}: {} has {!r}, expected [[bit_width, fix_position]]".format(path, key, value))
    if value[0] != BIT_WIDTH:
        raise QuantInfoError("{}: {} has bit width {}, the built-in quantizer uses {}".format(path, key, value[0], BIT_WIDTH))
    check_range(path, key, value[1])
    return value[1]


def check_range(path, key, fp):
    if abs(fp) > FIX_POINT_LIMIT:   # as the xmodel reader; far beyond would overflow the scales
        raise QuantInfoError("{}: {} has fix position {}, outside [-{limit}, {limit}]; its values are out of "
                             "reach of int8".format(path, key, fp, limit=FIX_POINT_LIMIT))


def _match(path, section, found, expected, by_position):
    """{our name: value} from the file's section; 1.3 activation names map by position."""
    if set(found) == set(expected):
        return {key: found[key] for key in expected}
    if by_position and len(found) == len(expected):
        return dict(zip(expected, found.values()))
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    raise QuantInfoError("{}: '{}' does not match the model (missing {}, unexpected {}); was it made for another model?".format(
        path, section, missing, extra))


def read_quant_info(output_dir, chain):
    """(positions, bias_corrected, fast_finetuned) from a quant_info.json of release 3.x or 1.3."""
    path = os.path.join(output_dir, QUANT_INFO)
    if not os.path.isfile(path):
        raise QuantInfoError("{}: not found; run --quant_mode calib first".format(path))
    try:
        with open(path, "rb") as f:
            info = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise QuantInfoError("{}: not valid JSON ({})".format(path, e))
    except RecursionError:
        raise QuantInfoError("{}: not valid JSON (nested too deeply)".format(path))
    if not isinstance(info, dict) or not isinstance(info.get("param"), dict) or not isinstance(info.get("output"), dict):
        raise QuantInfoError("{}: expected an object with 'param' and 'output' sections".format(path))
    param = _match(path, "param", info["param"], chain.param_tensors(), by_position=False)
    output = _match(path, "output", info["output"], chain.activation_tensors(), by_position=True)
    positions = {
        "param": {key: _position(path, key, value) for key, value in param.items()},
        "output": {key: _position(path, key, value) for key, value in output.items()},
    }
    if "bias_corrected" in info:
        bias_corrected = info["bias_corrected"]
    else:  # release 1.3 did not say; it wrote bias_corr.pth when it corrected
        bias_corrected = os.path.isfile(os.path.join(output_dir, BIAS_CORR))
    if not isinstance(bias_corrected, bool) or not isinstance(info.get("fast_finetuned", False), bool):
        raise QuantInfoError("{}: 'bias_corrected' and 'fast_finetuned' must be true or false".format(path))
    return positions, bias_corrected, info.get("fast_finetuned", False)


def read_bias_corr(output_dir, chain):
    """{Linear node: correction list}, checked against the model's layers."""
    path = os.path.join(output_dir, BIAS_CORR)
    if not os.path.isfile(path):
        raise QuantInfoError("{}: not found, but {} says the bias was corrected; run --quant_mode calib again".format(
            path, QUANT_INFO))
    corr = load_torch_file(path, "bias correction file")
    if not isinstance(corr, dict):
        raise QuantInfoError("{}: expected a dict of per-layer corrections; run --quant_mode calib again".format(path))
    linears = [layer for layer in chain.layers if layer.kind == "dense"]
    corr = _match(path, "bias correction", corr, [layer.node for layer in linears], by_position=True)
    for layer in linears:
        values = corr[layer.node]
        if not isinstance(values, (list, tuple)) or not all(isinstance(v, float) for v in values):
            raise QuantInfoError("{}: {} is not a list of floats; run --quant_mode calib again".format(path, layer.node))
        if not all(math.isfinite(v) for v in values):
            raise QuantInfoError("{}: {} holds NaN or Inf; run --quant_mode calib again".format(path, layer.node))
        if len(values) != layer.out_features:
            raise QuantInfoError("{}: {} has {} values, the layer has {} outputs (a file of another model?); run "
                                 "--quant_mode calib again".format(path, layer.node, len(values), layer.out_features))
    return corr
