"""Which quantizer runs, and the calls that differ between its releases.

The real vai_q_pytorch (pytorch_nndct, in a Vitis AI docker) is used where it can be
imported; elsewhere the built-in one (vaiq), which computes the same bit for bit in
the release it is told to follow. The releases the flow meets (docs/dockers.md):
2.5, the last with DPUCADF8H, and 3.5. Every call whose name differs between them
is made here, by what the installed quantizer has.
"""
import functools
import re

from flow.checked_io import InputError
from vaiq.options import DEFAULT_RELEASE, RELEASES

BUILTIN, NNDCT = "builtin", "nndct"


class Backend(object):
    def __init__(self, name, release, torch_quantizer, version):
        self.name = name                      # BUILTIN or NNDCT
        self.release = release                # "2.5" or "3.5": file formats and defaults
        self.torch_quantizer = torch_quantizer
        self.version = version                # what the record says ran

    def describe(self):
        return "{}, vai_q_pytorch {}".format(self.name, self.release)


def release_of(version, torch_quantizer):
    """"2.5" or "3.5" of an installed pytorch_nndct: from its __version__ ("3.5.0+b2b2279+torch2.13.0+cpu");
    a 2.5 source build says "0.1.0", and is told by its API (export_traced_torch_script, where 3.x has
    export_torch_script)."""
    match = re.match(r"(\d+)\.(\d+)", version or "")
    if match and "{}.{}".format(*match.groups()) in RELEASES:
        return "{}.{}".format(*match.groups())
    return "3.5" if hasattr(torch_quantizer, "export_torch_script") else "2.5"


def _import_real(name, what):
    """pytorch_nndct and the names `what` imports from it, for --backend NAME (auto,
    nndct, builtin); None where the built-in runs (builtin, or auto without the package)."""
    if name not in ("auto", NNDCT):
        return None
    try:
        import pytorch_nndct
    except ImportError:
        if name == NNDCT:
            raise InputError("--backend nndct: pytorch_nndct is not installed (it comes with the Vitis AI "
                             "docker: conda activate vitis-ai-pytorch); use --backend builtin")
        return None
    try:
        return (pytorch_nndct,) + what()
    except ImportError as e:
        raise InputError("--backend {}: pytorch_nndct {} lacks what this stage calls ({}); use --backend "
                         "builtin".format(name, getattr(pytorch_nndct, "__version__", ""), e))


def load(name, release=None):
    """The Backend for --backend NAME (auto, nndct, builtin) and --vai_release (None: the
    installed real quantizer's release, or the built-in's default)."""
    def what():
        from pytorch_nndct.apis import torch_quantizer
        return (torch_quantizer,)
    real = _import_real(name, what)
    if real:
        pytorch_nndct, torch_quantizer = real
        version = getattr(pytorch_nndct, "__version__", "")
        installed = release_of(version, torch_quantizer)
        if release is not None and release != installed:
            raise InputError("--vai_release {}: the installed pytorch_nndct is {} ({}); the built-in follows "
                             "another release with --backend builtin".format(release, version, installed))
        return Backend(NNDCT, installed, torch_quantizer, version)
    from vaiq import torch_quantizer
    release = release or DEFAULT_RELEASE
    assert release in RELEASES
    return Backend(BUILTIN, release, functools.partial(torch_quantizer, release=release),
                   "built-in, release {}".format(release))


def export_torch_script(quantizer, output_dir):
    """TorchScript of the deployed network: export_torch_script in 3.x,
    export_traced_torch_script in 2.5."""
    export = getattr(quantizer, "export_torch_script", None) or getattr(quantizer, "export_traced_torch_script")
    export(output_dir=output_dir)


def fast_finetune(backend, quantizer, run_fn, run_args, last_batch):
    """quantizer.fast_finetune(run_fn, run_args). The real 2.5 learns the batch size from the
    first layer's 4-D outputs only, so for dense layers it stays None and its memory check
    fails (TypeError in adaquant.is_cached); 3.x also counts dense outputs. Given here as 3.x
    finds it, the last batch's rows; 2.5 uses it only for that check and to halve the
    learning rate at batch 1."""
    if backend.name == NNDCT and backend.release == "2.5":
        quantizer.processor.advanced_quant_setup()
        quantizer.processor.adaquant._batch_size = last_batch
    quantizer.fast_finetune(run_fn, run_args)


class QatBackend(object):
    """The QatProcessor that runs quantization-aware training (vai_q_pytorch_qat.py), and the
    QuantStub class its models take."""

    def __init__(self, name, qat_processor, quant_stub, version):
        self.name = name                      # BUILTIN or NNDCT
        self.QatProcessor = qat_processor
        self.QuantStub = quant_stub
        self.version = version

    def describe(self):
        return "{}, vai_q_pytorch {}".format(self.name, self.version)


def load_qat(name):
    """The QatBackend for --backend NAME (auto, nndct, builtin): pytorch_nndct's QatProcessor
    where it imports (auto, nndct), else the built-in one (vaiq.qat, release 3.5's)."""
    def what():
        from pytorch_nndct import QatProcessor
        from pytorch_nndct.nn import QuantStub
        return QatProcessor, QuantStub
    real = _import_real(name, what)
    if real:
        pytorch_nndct, qat_processor, quant_stub = real
        version = getattr(pytorch_nndct, "__version__", "") or "unknown version"
        return QatBackend(NNDCT, qat_processor, quant_stub, version.split("+")[0])
    from vaiq.qat import RELEASE, QatProcessor
    from vaiq.nn import QuantStub
    return QatBackend(BUILTIN, QatProcessor, QuantStub, RELEASE)
