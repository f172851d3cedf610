"""The legalization vai_q_pytorch applies at export (spec: "DPU legalization"):
positions moved into the DPU's shift ranges (dpu/shifts.py)."""
from dpu.shifts import SHIFT_BIAS_MAX, SHIFT_CUT_MAX, SHIFT_CUT_MIN, check_layer, shift_bias, shift_bias_min, shift_cut


def linear_layers(chain):
    """(index, layer) of the Linear layers, the ones the quantizer legalizes (a
    BatchNorm1d's scale op is left as calibrated; where it runs is up to the compiler)."""
    return [(k, layer) for k, layer in enumerate(chain.layers) if layer.kind == "dense"]


def check_positions(chain, positions):
    """Problems of every Linear layer, as "layer: problem" texts (empty when all are legal)."""
    param, output = positions["param"], positions["output"]
    return ["{}: {}".format(layer.name, problem)
            for k, layer in linear_layers(chain)
            for problem in check_layer(output[chain.input_of(k)], param[layer.weight_key],
                                       param[layer.bias_key], output[layer.output_tensor])]


def legalize_layer(i, w, b, o):
    """(w, b, o) moved into the DPU ranges the way vai_q_pytorch does, and what changed."""
    changes = []
    cut = shift_cut(i, w, o)
    if cut < SHIFT_CUT_MIN:
        o, changes = o + cut, changes + ["output {} -> {} (shift_cut {})".format(o, o + cut, cut)]
    elif cut > SHIFT_CUT_MAX:
        new_w = w - (cut - SHIFT_CUT_MAX)
        w, changes = new_w, changes + ["weight {} -> {} (shift_cut {})".format(w, new_w, cut)]
    # The lower bound uses shift_cut as it was before the adjustment above.
    bias, low = shift_bias(i, w, b), shift_bias_min(cut)
    if bias < low:
        new_b = b + bias - low
        b, changes = new_b, changes + ["bias {} -> {} (shift_bias {})".format(b, new_b, bias)]
    elif bias > SHIFT_BIAS_MAX:
        new_w = w - (bias - SHIFT_BIAS_MAX)
        w, changes = new_w, changes + ["weight {} -> {} (shift_bias {})".format(w, new_w, bias)]
    return w, b, o, changes


def legalize(chain, positions):
    """Legalize every Linear layer in graph order, in place; a changed output position is
    the next layer's input. Returns one text per change, naming the layer."""
    param, output = positions["param"], positions["output"]
    changes = []
    for k, layer in linear_layers(chain):
        i = output[chain.input_of(k)]
        w, b, o = param[layer.weight_key], param[layer.bias_key], output[layer.output_tensor]
        w, b, o, layer_changes = legalize_layer(i, w, b, o)
        param[layer.weight_key], param[layer.bias_key], output[layer.output_tensor] = w, b, o
        changes += ["{}: {}".format(layer.name, change) for change in layer_changes]
    return changes
