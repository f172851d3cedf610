"""Bias correction during calibration (spec: "Bias correction").

Each batch nudges a Linear's bias against the mean quantization error of its
output, until the signal-to-noise estimate settles. The tensors (forward, error,
noise, the update) are float32 torch and the bookkeeping (eff, dev, their
averages, the thresholds, the step) is float64, in the order of the spec
("Bias correction: Arithmetic"), so the result matches vai_q_pytorch bitwise.
"""
import numpy as np
import torch

class BiasCorrection:
    def __init__(self, weight, bias, rate):
        self.rate = rate   # --nndct_param_corr_rate: 0.05 in release 3.5, 0.1 in 2.5 (options.py)
        self.weight = weight.detach().clone()   # the float parameters the error is measured against
        self.bias = bias.detach().clone()
        self.eff_avg = np.float64(0)   # numpy float64 scalars, as in the real quantizer
        self.dev_avg = np.float64(0)
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
        # log10 of float32 tensors, then float64 from there on (the real one takes .numpy()).
        eff = 1.25 * np.float64(torch.log10(ref.pow(2).mean() / noise).item())
        dev = abs(eff - self.eff_avg)
        if not dev > 0:
            self.stopped = True
            return None
        self.eff_avg = (4 * self.eff_avg + eff) / 5
        self.dev_avg = (4 * self.dev_avg + dev) / 5
        step = self.rate / 2 if self.eff_avg > 4.0 else self.rate
        with np.errstate(divide="ignore", invalid="ignore"):   # an average of exactly 0 gives inf, as there
            settled = self.dev_avg / self.eff_avg < 0.05 or abs(dev - self.dev_avg / dev) < 0.05
        if self.eff_avg > 4.3 or settled:
            self.stopped = True
            return None
        return step
