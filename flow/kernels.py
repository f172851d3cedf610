"""Pinned CPU kernels: the same bytes from every stage on any x86-64 CPU.

torch chooses its CPU kernels by the machine's vector width: ATen's AVX2 or AVX-512
loops, MKL's code path for sgemm. Their sums round differently in the last bit, so
the float outputs, bias correction, training and everything after them differ from
one CPU to the next, for the real vai_q_pytorch as for the built-in quantizer. Three
settings, read by torch, MKL and OpenMP when they start, make the results the same
everywhere; the golden cases of the real quantizer were made under them:

  ATEN_CPU_CAPABILITY=default   ATen's scalar kernels, present on every CPU
  MKL_CBWR=COMPATIBLE           MKL's conditional-numerical-reproducibility path
  OMP_NUM_THREADS=1             one thread (set_seed.THREADS sets torch's too)

pin() sets them unless the user did, so it must run before torch is imported: every
stage script calls flow.start_stage first, and the tests' conftest calls pin().
NATIVE_KERNELS=1 leaves torch's own choice (faster, other last bits). Only the
standard library is imported here; sqrt_fingerprint imports torch when it is called.

One kernel no setting pins: torch.sqrt of a float tensor is MKL's vector sqrt, which
refines the CPU's rsqrtps estimate, and rsqrtps gives other bits on another CPU design.
torch.optim.Adam divides by it. So the project's own trainings (run.py, the QAT stage) take
adam(), whose fused step computes the square root exactly; fast finetune, which must step as
the real quantizer does, keeps torch's Adam, and the tests that compare its steps with the
goldens ask sqrt_fingerprint first (docs/reproducibility.md).
"""
import os
import sys

PINS = (("ATEN_CPU_CAPABILITY", "default"), ("MKL_CBWR", "COMPATIBLE"), ("OMP_NUM_THREADS", "1"))
OPT_OUT = "NATIVE_KERNELS"
NATIVE_NOTE = "kernels: native, results may differ from the committed ones in the last bits"

# What torch's dispatcher and MKL accept; any other value is ignored by them without a
# word, and the run would silently not be the one asked for.
ATEN_CAPABILITIES = ("default", "avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx", "vsx", "zvector", "sve256")
MKL_BRANCHES = ("AUTO", "COMPATIBLE", "SSE2", "SSSE3", "SSE4_1", "SSE4_2", "AVX", "AVX2", "AVX512_MIC", "AVX512",
                "AVX512_MIC_E1", "AVX512_E1")


# sqrt_fingerprint() where the committed results and the golden cases were made (AMD EPYC,
# torch 2.13.0). torch 1.10.1 and 1.13.1 bring another MKL, whose sqrt gives other bits again.
COMMITTED_SQRT = "cb5abf53b4a10f51"


class KernelSettingError(ValueError):
    pass


def _check(name, value):
    if name == "ATEN_CPU_CAPABILITY" and value not in ATEN_CAPABILITIES:
        raise KernelSettingError("ATEN_CPU_CAPABILITY={!r}: not a capability torch knows ({})".format(
            value, ", ".join(ATEN_CAPABILITIES)))
    if name == "MKL_CBWR":
        branch, _, strict = value.upper().partition(",")
        if branch not in MKL_BRANCHES or strict not in ("", "STRICT"):
            raise KernelSettingError("MKL_CBWR={!r}: not an MKL code path ({}, optionally followed by ',STRICT')".format(
                value, ", ".join(MKL_BRANCHES)))
    if name == "OMP_NUM_THREADS" and not (value.isdigit() and int(value) > 0):
        raise KernelSettingError("OMP_NUM_THREADS={!r}: not a positive whole number".format(value))


def pin(environ=os.environ):
    """Set the pins in `environ` where the user set nothing. Returns the settings of the
    user's that differ from the pins (empty: pinned). KernelSettingError for a value
    torch, MKL or OpenMP would not take."""
    if environ.get(OPT_OUT, "") not in ("", "0", "1"):
        raise KernelSettingError("{}={!r}: expected 1 (torch's own kernels) or 0".format(OPT_OUT, environ[OPT_OUT]))
    native = environ.get(OPT_OUT) == "1"
    differ = ["{}=1".format(OPT_OUT)] if native else []
    for name, pinned in PINS:
        value = environ.get(name)
        if value is None:
            if not native:
                environ[name] = pinned
            continue
        _check(name, value)
        if value.upper() != pinned.upper() and name != "OMP_NUM_THREADS":   # threads: set_seed.THREADS
            differ.append("{}={}".format(name, value))
    return differ


def pin_or_exit(script):
    """pin() for a command: a bad value ends it with one line and exit code 2; unpinned
    kernels are noted in one line."""
    try:
        differ = pin()
    except KernelSettingError as e:
        sys.stderr.write("{}: error: {}\n".format(script, e))
        sys.exit(2)
    if differ:
        sys.stderr.write("{}: note: {} ({})\n".format(script, NATIVE_NOTE, ", ".join(differ)))


def sqrt_fingerprint():
    """The bits of torch.sqrt on this machine, as 16 hex digits: the square roots of 8197 float32
    values spread over [1, 4), both exponent parities. Call it after pin()."""
    import hashlib

    import numpy
    import torch

    values = numpy.arange(0x3F800000, 0x40800000, 2047, dtype=numpy.uint32).view(numpy.float32)
    return hashlib.sha256(torch.sqrt(torch.from_numpy(values)).numpy().tobytes()).hexdigest()[:16]


def adam(params, **options):
    """torch.optim.Adam, the same bits on any x86-64 CPU: from torch 2.4 on its fused CPU step,
    an ATen loop whose square root is the exact one (under the pins, the scalar loop), not MKL's
    (see above). Older torch has no fused CPU Adam and gets the usual one."""
    import torch

    params = list(params)
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 4):
        try:
            return torch.optim.Adam(params, fused=True, **options)
        except RuntimeError:   # a 2.4 pre-release without the CPU kernel
            pass
    return torch.optim.Adam(params, **options)
