"""Fast finetune (AdaQuant): after calibration, adjust the quantized layers'
weights and biases, one layer at a time in graph order, so that the quantized
network's output on the calibration data matches the float network's output.
Fix positions stay as calibrated and legalized, so the DPU shifts stay legal.

Each layer is tuned against the network output rather than its own output:
with few, narrow layers an error that a later layer amplifies matters more
than one it absorbs, and this objective sees the difference (README: the
quality table).

The quantization in the loss uses the straight-through estimator: the forward
rounds exactly as the DPU does, the backward treats rounding as identity.
Each layer keeps the parameters with the lowest exactly-quantized loss seen,
so finetuning never makes the calibration loss worse.
"""
import torch
import torch.nn.functional as F

from flow.checked_io import Progress

from .fixpoint import fake_quantize
from .quant_model import float_network, quantized_network

STEPS = 300          # Adam steps per layer
LR = 3e-3            # a fraction of an int8 grid step at positions 6 to 8


def ste(x, fp, mode):
    """Fake quantization in the forward, identity in the backward."""
    return x + (fake_quantize(x, fp, mode) - x).detach()


def fast_finetune(chain, positions, float_params, start_params, x_float, steps=STEPS, lr=LR):
    """[(weight, bias), ...] in float, to be quantized at `positions` as test mode does.

    float_params: the float model's parameters, which give the target outputs;
    start_params: where finetuning starts (the calibrated, bias-corrected ones);
    x_float: the calibration inputs, all rows.
    (One torch thread, as every stage sets in set_seed.py, runs it several times faster.)"""
    with torch.no_grad():
        target = float_network(x_float, float_params, chain)
    params = [(w.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True))
              for w, b in start_params]

    def exact_loss():
        with torch.no_grad():
            return F.mse_loss(quantized_network(x_float, params, chain, positions, fake_quantize), target).item()

    # A bar over every Adam step on a terminal; in a log, a line per layer.
    with Progress("fast finetune", len(params) * steps) as progress:
        for k, layer_params in enumerate(params):
            optimizer = torch.optim.Adam(layer_params, lr=lr)
            start_loss = best_loss = exact_loss()
            best = [t.detach().clone() for t in layer_params]
            for _ in range(steps):
                optimizer.zero_grad()
                F.mse_loss(quantized_network(x_float, params, chain, positions, ste), target).backward()
                optimizer.step()
                loss = exact_loss()
                if loss < best_loss:
                    best_loss, best = loss, [t.detach().clone() for t in layer_params]
                progress.advance()
            with torch.no_grad():
                for tensor, kept in zip(layer_params, best):
                    tensor.copy_(kept)
            progress.note("layer {}/{}: {} steps, loss vs float outputs {:.3e} -> {:.3e}".format(
                k + 1, len(params), steps, start_loss, best_loss))
    return [(w.detach(), b.detach()) for w, b in params]
