"""Trained quantization thresholds (TQT, Jain et al., arXiv:1903.08066): the quantizer that
vai_q_pytorch 3.5's QatProcessor puts on every quantized tensor (spec qat.md: "The quantizers").

A quantizer holds log_threshold = log2 of its threshold t. Forward: the tensor on the int8
grid of scale 2^ceil(log_threshold) / 128, i.e. at fix position 7 - ceil(log_threshold),
by the same fix kernel as post-training quantization (fixpoint.fake_quantize). Backward:
the straight-through estimator for the tensor and the TQT gradient for log_threshold. On its
first forward the quantizer sets its threshold from the tensor it sees (the warm-up).
"""
import math

import numpy as np
import torch
import torch.nn as nn

from .fixpoint import HALF_AWAY, HALF_UP, fake_quantize

PARAM, OUTPUT = "param", "output"   # the tensor types of the real tool's quantizers
ROUNDING = {PARAM: HALF_AWAY, OUTPUT: HALF_UP}
KERNEL_MODE = {HALF_UP: 2, HALF_AWAY: 3}   # the real fix kernel's numbers for the two roundings
PARAM_EPS = 1e-6                           # added to the weights before their mean (3-sigma warm-up)
PARAM_SIGMAS = 3
NUMPY1_BUFFER = 8192                       # values numpy 1.x reduces at a time


def fix_position(log_threshold, bitwidth):
    """The fix position of threshold 2^log_threshold: scale 2^ceil(log t) / 2^(b-1) is 2^-fp."""
    return int(bitwidth - 1 - math.ceil(float(log_threshold)))


class TQTQuantize(torch.autograd.Function):
    """x on the grid of its threshold; gradients as TQT's equations 7 and 8."""

    @staticmethod
    def forward(ctx, x, log_threshold, domain, rounding):
        scale = 2 ** torch.ceil(log_threshold) / domain          # a power of two, in float32
        ctx.save_for_backward(x, scale, domain - 1, -domain, log_threshold)
        return fake_quantize(x, -int(math.log2(scale.item())), rounding)

    @staticmethod
    def backward(ctx, grad_output):
        x, scale, q_max, q_min, log_threshold = ctx.saved_tensors
        scaled = x / scale
        # The kernel's rounding for the range test: halves up also for negative values
        # (-1.5 -> -1), where torch.round would take the even neighbour.
        negative_half = (scaled < 0) & (scaled - torch.floor(scaled) == 0.5)
        rounded = torch.where(negative_half, torch.ceil(scaled), torch.round(scaled))
        below, above = rounded < q_min, rounded > q_max
        inside = ~below & ~above
        # d(out)/d(log_threshold) = scale * ln 2 * (rounded - scaled) inside the range,
        # times q_min below it and q_max above it; summed over the tensor.
        grad_log = grad_output * scale * math.log(2)
        grad_log = torch.where(inside, grad_log * (rounded - scaled), grad_log)
        grad_log = torch.where(below, grad_log * q_min, grad_log)
        grad_log = torch.where(above, grad_log * q_max, grad_log)
        # Straight through inside the range, zero outside (0 * g: a negative g gives -0.0, as there).
        grad_x = torch.where(inside, grad_output, 0 * grad_output)
        return grad_x, grad_log.sum().expand_as(log_threshold), None, None


def _sum(y):
    """np.sum of a float32 array as numpy 1.x adds it, which vai_q_pytorch pins: pairwise
    within buffers of 8192 values, the buffers' sums one after the other (numpy 2 adds the
    whole array pairwise, which differs in the last bits beyond 8192 values)."""
    y = y.ravel()
    sums = [np.sum(y[k:k + NUMPY1_BUFFER]) for k in range(0, y.size, NUMPY1_BUFFER)] or [np.float32(0)]
    total = sums[0]
    for part in sums[1:]:
        total = np.float32(total + part)
    return total


def _mean(y):
    """np.mean of numpy 1.x: the float32 sum over the count, rounded once to float32."""
    return np.float32(float(_sum(y)) / y.size)


def three_sigma(x):
    """A parameter's initial threshold: |mean(x + 1e-6)| + 3 std(x), the mean and the std
    float32 as np.mean and np.std give them. numpy 1.x adds the two in float64 (an int or a
    float meeting a float32 scalar gives float64 there), so the sum is taken in float64."""
    y = x.detach().cpu().numpy().astype(np.float32)
    mean = _mean(y + np.float32(PARAM_EPS))
    deviation = y - _mean(y)
    std = np.sqrt(_mean(deviation * deviation))
    return float(np.abs(mean)) + PARAM_SIGMAS * float(std)


def kl_j(x, bitwidth):
    """An activation's initial threshold: the KL-J search of Settle et al. (arXiv:1805.07941,
    Algorithm 1) over a histogram of |x| with numpy's 'sqrt' bins. With no more bins than
    2^(b-1) (a tensor of fewer than about 128^2 values) there is nothing to search and the
    threshold is the histogram's top edge, max|x|."""
    y = np.abs(x.detach().cpu().numpy())
    hist, edges = np.histogram(y, "sqrt", range=(0, np.max(y)), density=True)
    hist, edges = hist.astype(y.dtype), edges.astype(y.dtype)
    cdf = np.cumsum(hist / np.sum(hist))
    levels = 2 ** (bitwidth - 1)
    if levels + 1 > len(edges) - 1:
        return edges[-1]
    width = float(edges[1] - edges[0])    # the candidate thresholds are float64 (numpy 1.x), as there
    candidates, divergences = [], []
    nonzero = np.nonzero(cdf)
    for i in range(levels + 1, len(edges)):
        candidates.append((i + 0.5) * width)
        p = np.copy(cdf)
        p[i - 1:] = 1
        # p squeezed onto `levels` points and stretched back: what a threshold at bin i keeps.
        squeezed = np.interp(np.linspace(0.0, 1.0, levels), np.linspace(0.0, 1.0, i), p[:i])
        q = np.copy(p)
        q[:i] = np.interp(np.linspace(0.0, 1.0, i), np.linspace(0.0, 1.0, levels), squeezed)
        a, b = cdf[nonzero], q[nonzero]
        divergences.append(np.sum((a - b) * np.log2(a / b)))
    return candidates[int(np.argmin(divergences))]


class TQTQuantizer(nn.Module):
    """One tensor's quantizer. State dict: log_threshold, bitwidth and warmup_enabled, as the
    real TQTQuantizer saves them (quant_enabled and domain are buffers it leaves out, and a
    loaded bitwidth is ignored: the constructor's holds)."""

    def __init__(self, bitwidth, tensor_type):
        super().__init__()
        self.register_buffer("quant_enabled", torch.tensor([1], dtype=torch.uint8))
        self.register_buffer("bitwidth", torch.tensor([bitwidth], dtype=torch.uint8))
        self.register_buffer("domain", torch.tensor([2 ** (bitwidth - 1)]).float())
        self.tensor_type = tensor_type
        self.rounding = ROUNDING[tensor_type]
        self.log_threshold = nn.Parameter(torch.tensor([0.0]))
        self.register_buffer("warmup_enabled", torch.tensor([1], dtype=torch.uint8))

    def initial_threshold(self, x):
        t = three_sigma(x) if self.tensor_type == PARAM else kl_j(x, int(self.bitwidth.item()))
        return torch.tensor([t], dtype=x.dtype)

    def forward(self, x):
        if not self.quant_enabled[0]:
            return x
        if self.warmup_enabled[0]:
            self.warmup_enabled[0] = 0
            self.log_threshold.data[0] = torch.log2(self.initial_threshold(x))[0]
        return TQTQuantize.apply(x, self.log_threshold, self.domain, self.rounding)

    def fix_position(self):
        return fix_position(self.log_threshold.item(), int(self.bitwidth.item()))

    def set_fix_position(self, fp):
        """Threshold 2^(b-1-fp), warm-up off: a position from quant_info.json (calib_dir)."""
        self.log_threshold.data = torch.tensor([float(int(self.bitwidth.item()) - 1 - fp)])
        self.warmup_enabled[0] = 0

    def enable_quant(self, enabled=True):
        self.quant_enabled[0] = 1 if enabled else 0
        return self

    def enable_warmup(self, enabled=True):
        self.warmup_enabled[0] = 1 if enabled else 0
        return self

    def freeze(self, frozen=True):
        self.log_threshold.requires_grad = not frozen
        return self

    def extra_repr(self):
        return "quant_enabled={}, bitwidth={}, rounding_mode={}".format(
            self.quant_enabled, self.bitwidth, KERNEL_MODE[self.rounding])

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in ("quant_enabled", "domain"):
            destination.pop(prefix + name)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        bitwidth = self.bitwidth.clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self.bitwidth.copy_(bitwidth)
        for name in ("quant_enabled", "domain", "bitwidth"):
            if prefix + name in missing_keys:
                missing_keys.remove(prefix + name)
