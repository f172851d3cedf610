"""The fake-quantized model: the forward vai_q_pytorch runs in calib and test mode
(spec: "Calibration", "Test mode").

Calib: parameters get their positions once, on the first forward; every
activation gets a candidate position per batch, and uses the mode of its
history so far; bias correction runs per batch. Test: the positions of
quant_info.json, parameters quantized once, no history, no correction.
A Linear followed by a ReLU is one DPU op: the ReLU's output carries the
quantization and the Linear's own output is left as is.
"""
import collections
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bias_correction import BiasCorrection
from .fixpoint import HALF_AWAY, HALF_UP, INPUT_SCOPE, PARAM_SCOPE, fake_quantize, fix_position, overflow_mask


def quantized_network(x, params, chain, positions, quantize):
    """The test-mode forward with float parameters `params` [(weight, bias), ...]
    put on their grids by `quantize` (fake_quantize: exact; ste: trainable)."""
    param, output = positions["param"], positions["output"]
    x = quantize(x, output[chain.input_tensor], HALF_UP)
    for layer, (weight, bias) in zip(chain.layers, params):
        x = F.linear(x, quantize(weight, param[layer.weight_key], HALF_AWAY),
                     quantize(bias, param[layer.bias_key], HALF_AWAY))
        if layer.relu:
            x = F.relu(x)
        x = quantize(x, output[layer.output_tensor], HALF_UP)
    return x


def history_mode(history):
    """The most frequent value of a list or Counter; the smallest among equally frequent ones."""
    counts = collections.Counter(history)
    return min(counts, key=lambda value: (-counts[value], value))


class QuantModel(nn.Module):
    def __init__(self, chain, calib, positions=None, bias_corr=None, param_corr=True):
        super().__init__()
        self.chain = chain
        self.calib = calib
        self.positions = positions if positions is not None else {"param": {}, "output": {}}
        self.history = {key: collections.Counter() for key in chain.activation_tensors()}
        # Float parameters, kept apart from the caller's model (it stays unchanged).
        self.linears = nn.ModuleList(copy.deepcopy(layer.linear) for layer in chain.layers)
        for linear in self.linears:
            linear.requires_grad_(False)
        self.float_params = [(lin.weight.detach().clone(), lin.bias.detach().clone()) for lin in self.linears]
        self.corrections = None
        self.dumps = None      # when a dict, the forward records every tensor it computes
        self.capture = None    # when a list, the forward appends every input batch (fast finetune)
        self.params_ready = False
        self.overflow_warned = set()   # tensors whose int32 overflow was reported
        if calib:
            if param_corr:
                self.corrections = [BiasCorrection(w, b) for w, b in self.float_params]
        else:
            self.use_test_params(self.float_params, bias_corr)

    def calibrate_params(self):
        """First calib forward: each parameter's position from its float values,
        then the parameter is replaced by its quantized value, in place."""
        param = self.positions["param"]
        for layer, linear in zip(self.chain.layers, self.linears):
            for key, tensor in ((layer.weight_key, linear.weight), (layer.bias_key, linear.bias)):
                param[key] = fix_position(tensor, PARAM_SCOPE, HALF_AWAY, key)
                tensor.data = fake_quantize(tensor.data, param[key], HALF_AWAY)
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
        for layer, linear, (weight, bias) in zip(self.chain.layers, self.linears, params):
            if bias_corr:
                bias = torch.sub(bias, torch.tensor(bias_corr[layer.node], dtype=bias.dtype))
            linear.weight.data = fake_quantize(weight, param[layer.weight_key], HALF_AWAY)
            linear.bias.data = fake_quantize(bias, param[layer.bias_key], HALF_AWAY)
        self.params_ready = True

    def activation(self, key, x, scope):
        """Fake-quantize an activation; in calib mode its position is the mode of
        the per-batch history, this batch's candidate included."""
        if self.calib:
            self.history[key][fix_position(x, scope, HALF_UP, key)] += 1
            self.positions["output"][key] = history_mode(self.history[key])
        fp = self.positions["output"][key]
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
        for k, (layer, linear) in enumerate(zip(self.chain.layers, self.linears)):
            out = F.linear(x, linear.weight, linear.bias)
            if layer.relu:
                self.record(layer.node, out)
            else:
                out = self.activation(layer.node, out, PARAM_SCOPE)
            if self.corrections is not None:
                self.corrections[k].update(x, out, linear.bias.data)
            if layer.relu:
                out = self.activation(layer.relu_node, F.relu(out), PARAM_SCOPE)
            x = out
        return x

    def corrected_biases(self):
        """{Linear node: float bias - final bias} as vai_q_pytorch saves it (bias_corr.pth),
        or None when bias correction is off."""
        if self.corrections is None:
            return None
        return {
            layer.node: (b - linear.bias.data).tolist()
            for layer, linear, (_, b) in zip(self.chain.layers, self.linears, self.float_params)
        }
