"""Bias correction during calibration (spec: "Bias correction").

Each batch nudges a Linear's bias against the mean quantization error of its
output, until the signal-to-noise estimate settles. All arithmetic is float32
torch, in the order of the spec, so the result matches vai_q_pytorch bitwise.
"""
import torch

RATE = 0.05


class BiasCorrection:
    def __init__(self, weight, bias):
        self.weight = weight.detach().clone()   # the float parameters the error is measured against
        self.bias = bias.detach().clone()
        self.eff_avg = torch.zeros((), dtype=torch.float32)
        self.dev_avg = torch.zeros((), dtype=torch.float32)
        self.stopped = False

    def update(self, x, out, bias):
        """One batch: x is the layer's quantized input, out its output with the
        current parameters; `bias` (the layer's current bias) is corrected in place."""
        if self.stopped:
            return
        ref = torch.add(torch.matmul(x, self.weight.t()), self.bias)
        err = out - ref
        noise = err.pow(2).mean()
        step = self._step(ref, noise)
        if step is not None:
            bias.copy_(torch.sub(bias, err.mean(dim=0), alpha=step))

    def _step(self, ref, noise):
        """This batch's step size, or None when correction stops (before updating)."""
        if not noise > 0:
            self.stopped = True
            return None
        eff = 1.25 * torch.log10(ref.pow(2).mean() / noise)
        dev = torch.abs(eff - self.eff_avg)
        if not dev > 0:
            self.stopped = True
            return None
        self.eff_avg = (4 * self.eff_avg + eff) / 5
        self.dev_avg = (4 * self.dev_avg + dev) / 5
        step = RATE / 2 if self.eff_avg > 4.0 else RATE
        if (self.eff_avg > 4.3 or self.dev_avg / self.eff_avg < 0.05
                or torch.abs(dev - self.dev_avg / dev) < 0.05):
            self.stopped = True
            return None
        return step
