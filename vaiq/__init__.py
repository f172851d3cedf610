"""The built-in quantizer: what vai_q_pytorch (pytorch_nndct) computes for chains of
Linear and ReLU layers, bit for bit, for machines without the Vitis AI docker."""

__all__ = ["torch_quantizer", "QatProcessor"]


def __getattr__(name):
    # Imported on first use: the xmodel reader and the integer DPU (simulate.py,
    # compile.sh) need neither torch nor the quantizer.
    if name == "torch_quantizer":
        from .quantizer import torch_quantizer
        return torch_quantizer
    if name == "QatProcessor":
        from .qat import QatProcessor
        return QatProcessor
    raise AttributeError(name)
