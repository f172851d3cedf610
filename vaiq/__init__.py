"""The built-in quantizer: what vai_q_pytorch (pytorch_nndct) computes for chains of
Linear and ReLU layers, bit for bit, for machines without the Vitis AI docker."""
from .quantizer import torch_quantizer

__all__ = ["torch_quantizer"]
