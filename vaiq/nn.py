"""Modules a model imports to be trained by vaiq.qat (spec qat.md: "What the tool needs from
the model"), standing in for pytorch_nndct.nn: a model written for the real QatProcessor runs
on the built-in one with its import line changed to `from vaiq.nn import QuantStub`.
"""
import torch
import torch.nn as nn


class QuantStubF(torch.autograd.Function):
    """The stub's own op: a copy forward and backward. The quantizer meets it in the traced
    graph (the network input's quantized tensor is named after it, and the real tool finds
    stubs by this class name); numerically it is nothing."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output.clone()


class QuantStub(nn.Module):
    """Marks where quantization starts: the QAT quantizer puts the network input's quantizer on
    this module's output. Tensors pass through (as copies); a list or tuple is passed element by
    element, and a single element comes back alone, as pytorch_nndct.nn.QuantStub does."""

    def forward(self, inputs):
        if isinstance(inputs, torch.Tensor):
            return QuantStubF.apply(inputs)
        if not isinstance(inputs, (list, tuple)):
            return inputs
        outputs = [self.forward(x) for x in inputs]
        return outputs[0] if len(outputs) == 1 else outputs
