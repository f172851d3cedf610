"""The fake-quantized model: the forward vai_q_pytorch runs in calib and test mode
(spec: "Calibration", "Test mode"; layers.md).

Calib: parameters get their positions once, on the first forward; every
activation gets a candidate position per batch, and uses the mode of its
history so far; bias correction runs per batch. Test: the positions of
quant_info.json, parameters quantized once, no history, no correction.
A layer followed by an activation is one DPU op: the activation's output
carries the quantization and the layer's own output is left as is.
"""
import collections

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bias_correction import BiasCorrection
from .fixpoint import (HALF_AWAY, HALF_UP, INPUT_SCOPE, PARAM_SCOPE, fake_quantize, fake_quantize_within_int32,
                       fix_position, overflow_mask, search, searched_values, within_int32)
from dpu.int_model import LEAKY_RELU_ALPHA
from .trace import DENSE, LEAKY_RELU, RELU, RELU6


def layer_forward(layer, x, weight, bias):
    """A Linear, or a BatchNorm1d whose statistics are folded into weight (scale) and
    bias (offset): the real quantizer runs it as batch_norm with mean 0, var 1, eps 0."""
    if layer.kind == DENSE:
        return F.linear(x, weight, bias)
    n = weight.shape[0]
    return F.batch_norm(x, torch.zeros(n), torch.ones(n), weight, bias, False, 0.0, 0.0)


def activate(layer, x):
    if layer.activation == RELU:
        return F.relu(x)
    if layer.activation == LEAKY_RELU:
        return F.leaky_relu(x, LEAKY_RELU_ALPHA)   # the slope the DPU has, whatever the model's
    if layer.activation == RELU6:
        return F.relu6(x)
    return x


def float_network(x, params, chain):
    """The float model's forward on float parameters [(weight, bias), ...] (BatchNorm1d
    folded), with the DPU's leaky slope: the targets of fast finetune."""
    for layer, (weight, bias) in zip(chain.layers, params):
        x = activate(layer, layer_forward(layer, x, weight, bias))
    return x


def quantized_network(x, params, chain, positions, round_params=True):
    """The test-mode forward with float parameters `params` [(weight, bias), ...], put on
    their grids first (round_params), or used as they are: fast finetune's network runs
    the layers it has not tuned yet with their calibrated biases, off the grid, as the
    real quantizer does (it rounds a layer's parameters only when it resets the layer)."""
    param, output = positions["param"], positions["output"]
    x = fake_quantize(x, output[chain.input_tensor], HALF_UP)
    for layer, (weight, bias) in zip(chain.layers, params):
        if round_params:
            weight = fake_quantize(weight, param[layer.weight_key], HALF_AWAY)
            bias = fake_quantize(bias, param[layer.bias_key], HALF_AWAY)
        x = fake_quantize(activate(layer, layer_forward(layer, x, weight, bias)), output[layer.output_tensor], HALF_UP)
    return x


def bias_corrections(chain, float_params, params):
    """{Linear node: float bias - bias} as vai_q_pytorch saves it (bias_corr.pth)."""
    return {layer.node: (float_bias - bias).tolist()
            for layer, (_, float_bias), (_, bias) in zip(chain.layers, float_params, params) if layer.kind == DENSE}


def history_mode(history):
    """The most frequent value of a list or Counter; the smallest among equally frequent ones."""
    counts = collections.Counter(history)
    return min(counts, key=lambda value: (-counts[value], value))


class QuantModel(nn.Module):
    def __init__(self, chain, calib, positions=None, bias_corr=None, param_corr=True, corr_rate=0.05):
        super().__init__()
        self.chain = chain
        self.calib = calib
        self.positions = positions if positions is not None else {"param": {}, "output": {}}
        self.history = {key: collections.Counter() for key in chain.activation_tensors()}
        self.history_modes = {}   # history_mode of each history, kept as it grows
        # Float parameters, kept apart from the caller's model (it stays unchanged);
        # `params` are the ones in use, on their grids once calibrated.
        self.float_params = [layer.float_params() for layer in chain.layers]
        self.params = [(w.clone(), b.clone()) for w, b in self.float_params]
        self.corrections = None
        self.dumps = None      # when a dict, the forward records every tensor it computes
        self.capture = None    # when a list, the forward appends every input batch (fast finetune)
        self.params_ready = False
        self.overflow_warned = set()   # tensors whose int32 overflow was reported
        if calib:
            if param_corr:   # Linear layers only: BatchNorm1d parameters are not corrected
                self.corrections = [BiasCorrection(w, b, corr_rate) if layer.kind == DENSE else None
                                    for layer, (w, b) in zip(chain.layers, self.float_params)]
        else:
            self.use_test_params(self.float_params, bias_corr)

    def calibrate_params(self):
        """First calib forward: each parameter's position from its float values,
        then the parameter is replaced by its quantized value, in place."""
        param = self.positions["param"]
        for layer, pair in zip(self.chain.layers, self.params):
            for key, tensor in zip((layer.weight_key, layer.bias_key), pair):
                param[key] = fix_position(tensor, PARAM_SCOPE, HALF_AWAY, key)
                tensor.copy_(fake_quantize(tensor, param[key], HALF_AWAY))
        self.params_ready = True

    def use_test_params(self, params, bias_corr=None, positions=None):
        """Switch to test mode: fixed positions, and the float parameters `params`
        [(weight, bias), ...] on their grids, with the saved bias correction
        subtracted from the float bias first."""
        self.calib = False
        self.corrections = None
        if positions is not None:
            self.positions = positions
        param = self.positions["param"]
        self.params = []
        for layer, (weight, bias) in zip(self.chain.layers, params):
            if bias_corr and layer.node in bias_corr:
                bias = torch.sub(bias, torch.tensor(bias_corr[layer.node], dtype=bias.dtype))
            self.params.append((fake_quantize(weight, param[layer.weight_key], HALF_AWAY),
                                fake_quantize(bias, param[layer.bias_key], HALF_AWAY)))
        self.params_ready = True

    def activation(self, key, x, scope, non_negative=False):
        """Fake-quantize an activation; in calib mode its position is the mode of
        the per-batch history, this batch's candidate included. non_negative: x is
        a ReLU's output."""
        found = None
        if self.calib:
            mode = self.history_modes.get(key)
            found = search(x, scope, HALF_UP, key, non_negative, wanted=mode)
            self.history[key][found.position] += 1
            if found.position != mode:   # else the mode only became more frequent
                self.history_modes[key] = history_mode(self.history[key])
            self.positions["output"][key] = self.history_modes[key]
        fp = self.positions["output"][key]
        if found is not None and within_int32(found.x_min, found.x_max, fp):
            # The search saw x's range: nothing to warn about, and the same bits from fewer
            # kernels (or none, where the search computed them).
            quantized = searched_values(found, fp, x)
            if quantized is None:
                quantized = fake_quantize_within_int32(x, fp, HALF_UP, found.x_min, found.x_max)
            x = quantized
        else:
            self.warn_overflow(key, x, fp)
            x = fake_quantize(x, fp, HALF_UP)
        self.record(key, x)
        return x

    def warn_overflow(self, key, x, fp):
        """Say once per tensor when an outlier becomes -128 (spec: "Numbers", Overflow)."""
        if key in self.overflow_warned:
            return
        mask = overflow_mask(x, fp, HALF_UP)
        if mask.any():
            self.overflow_warned.add(key)
            n = int(mask.sum())
            print("warning: {}: {} value{} beyond the int32 range at fix position {} (first {:.6g}) became -128, "
                  "as in vai_q_pytorch; the DPU saturates such a value to 127".format(
                      key, n, "s" if n > 1 else "", fp, float(x[mask][0])))

    def record(self, key, x):
        if self.dumps is not None:
            self.dumps[key] = x.detach()   # no copy: nothing changes these tensors in place

    def forward(self, x):
        if self.capture is not None:
            self.capture.append(x.detach().float().clone())
        if self.calib and not self.params_ready:
            self.calibrate_params()
        x = self.activation(self.chain.input_tensor, x.float(), INPUT_SCOPE)
        for k, (layer, (weight, bias)) in enumerate(zip(self.chain.layers, self.params)):
            out = layer_forward(layer, x, weight, bias)
            if layer.activation:
                self.record(layer.node, out)
            else:
                out = self.activation(layer.node, out, PARAM_SCOPE)
            if self.corrections is not None and self.corrections[k] is not None:
                self.corrections[k].update(x, out, bias)
            if layer.activation:
                out = self.activation(layer.act_node, activate(layer, out), PARAM_SCOPE,
                                      non_negative=layer.activation in (RELU, RELU6))
            x = out
        return x

    def corrected_biases(self):
        """bias_corrections of the parameters in use, or None when bias correction is off."""
        if self.corrections is None:
            return None
        return bias_corrections(self.chain, self.float_params, self.params)
