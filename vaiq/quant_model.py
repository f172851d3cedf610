"""The fake-quantized model: the forward vai_q_pytorch runs in calib and test mode
(spec: "Calibration", "Test mode").

Calib: parameters get their positions once, on the first forward; every
activation gets a candidate position per batch, and uses the mode of its
history so far; bias correction runs per batch. Test: the positions of
quant_info.json, parameters quantized once, no history, no correction.
A Linear followed by a ReLU is one DPU op: the ReLU's output carries the
quantization and the Linear's own output is left as is.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bias_correction import BiasCorrection
from .fixpoint import HALF_AWAY, HALF_UP, INPUT_SCOPE, PARAM_SCOPE, fake_quantize, fix_position


def history_mode(history):
    """The most frequent value; the smallest among equally frequent ones."""
    return min(set(history), key=lambda value: (-history.count(value), value))


class QuantModel(nn.Module):
    def __init__(self, chain, calib, positions=None, bias_corr=None, param_corr=True):
        super().__init__()
        self.chain = chain
        self.calib = calib
        self.positions = positions if positions is not None else {"param": {}, "output": {}}
        self.history = {key: [] for key in chain.activation_tensors()}
        # Float parameters, kept apart from the caller's model (it stays unchanged).
        self.linears = nn.ModuleList(copy.deepcopy(layer.linear) for layer in chain.layers)
        for linear in self.linears:
            linear.requires_grad_(False)
        self.corrections = None
        self.dumps = None      # when a dict, the forward records every tensor it computes
        if calib:
            self.params_ready = False
            if param_corr:
                self.corrections = [BiasCorrection(lin.weight, lin.bias) for lin in self.linears]
        else:
            self.quantize_params(bias_corr or {})

    def quantize_params(self, bias_corr=None):
        """Put weights and biases on their grids. Calib chooses the positions from the
        float values; test takes them from quant_info.json, with the saved correction
        subtracted from the float bias first."""
        param = self.positions["param"]
        for layer, linear in zip(self.chain.layers, self.linears):
            if self.calib:
                param[layer.weight_key] = fix_position(linear.weight, PARAM_SCOPE, HALF_AWAY)
                param[layer.bias_key] = fix_position(linear.bias, PARAM_SCOPE, HALF_AWAY)
            elif bias_corr and layer.node in bias_corr:
                correction = torch.tensor(bias_corr[layer.node], dtype=linear.bias.dtype)
                linear.bias.data = torch.sub(linear.bias.data, correction)
            linear.weight.data = fake_quantize(linear.weight.data, param[layer.weight_key], HALF_AWAY)
            linear.bias.data = fake_quantize(linear.bias.data, param[layer.bias_key], HALF_AWAY)
        self.params_ready = True

    def activation(self, key, x, scope):
        """Fake-quantize an activation; in calib mode its position is the mode of
        the per-batch history, this batch's candidate included."""
        if self.calib:
            self.history[key].append(fix_position(x, scope, HALF_UP))
            self.positions["output"][key] = history_mode(self.history[key])
        x = fake_quantize(x, self.positions["output"][key], HALF_UP)
        self.record(key, x)
        return x

    def record(self, key, x):
        if self.dumps is not None:
            self.dumps[key] = x.detach().clone()

    def forward(self, x):
        if self.calib and not self.params_ready:
            self.quantize_params()
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
        """{Linear node: float bias - final bias} as vai_q_pytorch saves it (bias_corr.pth)."""
        return {
            layer.node: (correction.bias - linear.bias.data).tolist()
            for layer, linear, correction in zip(self.chain.layers, self.linears, self.corrections)
        }
