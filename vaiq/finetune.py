"""Fast finetune (AdaQuant) as vai_q_pytorch 3.5 and 2.5 run it by default (their
"finetune_v2"): after calibration, each Linear layer in graph order gets passes
of Adam over the calibration batches and keeps the parameters with the lowest
network loss seen. What it computes, in the quantizer's order:

- the reference is the quantizer's model as calibration left it, run in float:
  weights on their grids, biases as bias correction left them. Its outputs on
  the batches are the targets of the network loss; each layer's output (before
  the activation) on the batches rounded to the input's grid, the targets of
  that layer's loss;
- the network loss: the mean over the batches of each batch's root mean square
  error of the test-mode output against the reference's, parameters used as
  they are (a layer's are rounded only when its passes end);
- a layer's loss, per batch: the MSE of its output against the reference
  layer's, plus the MSE of its weight against the reference weight. Its input is
  the test-mode output of the layers before it; its parameters are used off the
  grid during a pass, and its output, when no activation follows, is quantized
  with the straight-through estimator;
- after each pass the layer's parameters go back on their grids and the network
  loss is measured: a lower one is kept; otherwise the layer returns to the kept
  parameters, its learning rates are halved, and it stops once both are below
  MIN_LR or the loss repeats the previous failed pass's (a layer no pass improved
  keeps its calibrated parameters, off the grid).
Fix positions stay as calibrated; BatchNorm1d layers are not tuned.
"""
import math

import torch
import torch.nn.functional as F

from flow.checked_io import Progress

from .fixpoint import HALF_AWAY, HALF_UP, fake_quantize
from .quant_model import float_network, layer_forward, quantized_network
from .trace import DENSE

LR = 0.01                 # --nndct_finetune_lr_factor's default: learning rate per unit of std
FINE_GRID = 4.5           # quantization efficiency (SQNR / 8 dB) above which the rate is cut tenfold
STEPS = 100               # passes over the batches per layer, at most: a progress step each
MIN_LR = 1e-5             # a layer stops once its learning rates are halved below this
SAME_LOSS = 1e-6          # relative tolerance under which two network losses count as equal
NO_PREVIOUS_LOSS = 1000.0  # the "previous failed loss" before any failure, as the quantizer starts it


class _QuantizedOutput(torch.autograd.Function):
    """Fake quantization in the forward, identity in the backward (the quantizer
    rounds the output tensor in place, outside autograd)."""

    @staticmethod
    def forward(ctx, x, fp):
        return fake_quantize(x, fp, HALF_UP)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def network_loss(batches, targets, params, chain, positions):
    """Mean over the batches of the RMS error of the test-mode outputs; a float64
    running sum divided by the count, as the quantizer averages."""
    total = 0.0
    with torch.no_grad():
        for x, target in zip(batches, targets):
            out = quantized_network(x, params, chain, positions, round_params=False)
            total += math.sqrt(F.mse_loss(target, out).item())
    return total / len(batches)


def quantization_efficiency(quantized, reference):
    """SQNR in units of 8 dB, in float32 (inf when the two are equal)."""
    noise = torch.mean(torch.pow(reference - quantized, 2))
    return 10 * torch.log10(torch.mean(torch.pow(reference, 2)) / noise) / 8.0


def learning_rates(weight, bias, reference_weight, last_batch_rows, lr=LR):
    """Adam's learning rates of a layer: lr times the std of the tensor,
    halved when the batches end in a single row, cut tenfold (and halved again)
    when the weight is already close to the reference; none for a single bias."""
    batch_factor = 0.5 if last_batch_rows == 1 else 1
    factor = lr * batch_factor
    if quantization_efficiency(weight, reference_weight) > FINE_GRID:
        factor = 0.1 * factor * batch_factor
    lr_bias = 0.0 if bias.numel() == 1 else factor * bias.std().item()
    return factor * weight.std().item(), lr_bias


def train_pass(layer, weight, bias, optimizers, inputs, targets, ref_weight, output_fp):
    """One Adam step per batch on the layer's loss; weight and bias are trained in place."""
    for x, target in zip(inputs, targets):
        out = layer_forward(layer, x, weight, bias)
        if not layer.activation:   # with an activation, the layer's output is not quantized
            out = _QuantizedOutput.apply(out, output_fp)
        loss = F.mse_loss(out, target) + F.mse_loss(weight, ref_weight)
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()


def tune_layer(k, params, reference, batches, targets, chain, positions, net_loss, progress, steps, lr):
    """Layer k's passes; params[k] is replaced by the kept parameters. Returns the
    network loss with them (the next layer's to beat)."""
    layer = chain.layers[k]
    param, output = positions["param"], positions["output"]
    ref_weight = reference[k][0]
    with torch.no_grad():
        inputs = [quantized_network(x, params[:k], chain, positions, round_params=False) for x in batches]
        layer_targets = [layer_forward(layer, float_network(x, reference[:k], chain), *reference[k]) for x in batches]
    weight, bias = (t.detach().clone().requires_grad_(True) for t in params[k])
    lr_weight, lr_bias = learning_rates(weight.detach(), bias.detach(), ref_weight, len(batches[-1]), lr)
    optimizers = [torch.optim.Adam([weight], lr=lr_weight), torch.optim.Adam([bias], lr=lr_bias)]
    kept = (weight.detach().clone(), bias.detach().clone())
    start_loss, previous = net_loss, NO_PREVIOUS_LOSS
    for passes in range(1, steps + 1):
        train_pass(layer, weight, bias, optimizers, inputs, layer_targets, ref_weight, output[layer.output_tensor])
        with torch.no_grad():
            weight.copy_(fake_quantize(weight, param[layer.weight_key], HALF_AWAY))
            bias.copy_(fake_quantize(bias, param[layer.bias_key], HALF_AWAY))
        params[k] = (weight.detach(), bias.detach())
        loss = network_loss(batches, targets, params, chain, positions)
        progress.advance()
        if loss < net_loss:
            kept, net_loss = (weight.detach().clone(), bias.detach().clone()), loss
            continue
        with torch.no_grad():
            weight.copy_(kept[0])
            bias.copy_(kept[1])
        for optimizer in optimizers:
            optimizer.param_groups[0]["lr"] /= 2.
        rates = [optimizer.param_groups[0]["lr"] for optimizer in optimizers]
        if max(rates) < MIN_LR or math.isclose(loss, previous, rel_tol=SAME_LOSS):
            break
        previous = loss
    params[k] = kept
    progress.advance(steps - passes)   # the passes a stop left out
    progress.note("layer {}/{}: {} of {} passes, loss vs float outputs {:.3e} -> {:.3e}".format(
        k + 1, len(params), passes, steps, start_loss, net_loss))
    return net_loss


def fast_finetune(chain, positions, reference, batches, targets, steps=STEPS, lr=LR):
    """The tuned parameters [(weight, bias), ...]: those of a layer that no pass
    improved stay as calibrated, the others are on their grids.

    positions: those the quantizer calibrated (before legalization);
    reference: the calibrated parameters, as the reference model runs them in float;
    batches: the calibration inputs, batch by batch as the run function fed them;
    targets: the reference model's outputs on them;
    steps: passes per layer at most; lr: the learning rate per unit of std."""
    params = [(w.clone(), b.clone()) for w, b in reference]
    # The quantizer rounds its cached input batches in place at its first test-mode
    # forward (the first network loss): from then on its reference model sees them
    # rounded too, so the first layer's float target is its output on the rounded input.
    batches = [fake_quantize(x, positions["output"][chain.input_tensor], HALF_UP) for x in batches]
    tuned = [k for k, layer in enumerate(chain.layers) if layer.kind == DENSE]
    with torch.enable_grad(), Progress("fast finetune", len(tuned) * steps) as progress:
        net_loss = network_loss(batches, targets, params, chain, positions)
        for k in tuned:
            net_loss = tune_layer(k, params, reference, batches, targets, chain, positions, net_loss, progress,
                                  steps, lr)
    return [(w.detach().clone(), b.detach().clone()) for w, b in params]
