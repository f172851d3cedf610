"""Two quantize_result folders compared by their numbers, whichever release wrote them.

Releases 2.5 and 3.5 name nodes, dumps and bias_corr.pth keys differently (2.5 after its
traced graph) and lay out quant_info.json differently; the numbers are what must agree.
So everything is compared in graph order: the positions of each section, the bias
corrections to the last bit, the xmodel's ops and constants with the names left out, and
every deploy dump, paired through shape.txt (which lists the tensors in graph order in
both releases) and the parameters' names (the same in both).
"""
import dataclasses
import json
import os
import re

import numpy as np

from dpu.xmodel import read_xmodel
from flow.checked_io import load_torch_file


def positions(folder):
    """{section: [[bits, fp], ...] in file order} of a quant_info.json in either layout."""
    with open(os.path.join(folder, "quant_info.json")) as f:
        info = json.load(f)
    return {section: [value[0] if isinstance(value[0], list) else value for value in info[section].values()]
            for section in ("param", "output")}


def bias_corrections(folder):
    """The bias corrections in graph order, as float64 bytes; None without bias_corr.pth."""
    path = os.path.join(folder, "bias_corr.pth")
    if not os.path.exists(path):
        return None
    return [np.array(value, dtype=np.float64).tobytes() for value in load_torch_file(path).values()]


def xmodel_numbers(path):
    """The IntModel of an xmodel with its op names left out: sizes, positions, batch, and each
    layer's kind, activation and int8 constants."""
    model = read_xmodel(path)
    names = ("name", "op_name", "activation_op_name", "weight_op_name", "bias_op_name")
    layers = [{key: value.tolist() if isinstance(value, np.ndarray) else value
               for key, value in dataclasses.asdict(layer).items() if key not in names} for layer in model.layers]
    return model.input_size, model.fp_in, model.batch, layers


def dump_file(name):
    """The dump file of a tensor name: FFN::FFN/Linear[l1]/33 -> FFN__FFN_Linear_l1__33."""
    return re.sub(r"[/\[\].]", "_", name.replace("::", "__"))


def _shape_entries(folder):
    with open(os.path.join(folder, "shape.txt")) as f:
        return [line.rsplit(": ", 1)[1] for line in f.read().splitlines() if line]


def dumps(folder):
    """[(file name, bytes), ...] of a deploy_check_data_int/<Net> folder in graph order: the
    activations as shape.txt lists them, then the parameters by name; each float dump,
    then its _fix dump where there is one."""
    activations = [dump_file(name) for name in _shape_entries(folder)]
    params = sorted(f[:-len(".bin")] for f in os.listdir(folder)
                    if f.endswith(".bin") and not f.endswith("_fix.bin") and f[:-len(".bin")] not in activations)
    files = []
    for stem in activations + params:
        for name in (stem + ".bin", stem + "_fix.bin"):
            path = os.path.join(folder, name)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    files.append((name, f.read()))
    return files


def differences(ours, theirs, net="FFN"):
    """What differs between two quantize_result folders, in graph order, as texts (empty
    when the numbers all agree). Compares what both folders hold."""
    found = []
    if positions(ours) != positions(theirs):
        found.append("positions: {} != {}".format(positions(ours), positions(theirs)))
    if bias_corrections(ours) != bias_corrections(theirs):
        found.append("bias_corr.pth values differ")
    xmodel = net + "_int.xmodel"
    if all(os.path.exists(os.path.join(folder, xmodel)) for folder in (ours, theirs)):
        if xmodel_numbers(os.path.join(ours, xmodel)) != xmodel_numbers(os.path.join(theirs, xmodel)):
            found.append("{}: ops or constants differ".format(xmodel))
        ours_dumps = dumps(os.path.join(ours, "deploy_check_data_int", net))
        theirs_dumps = dumps(os.path.join(theirs, "deploy_check_data_int", net))
        if len(ours_dumps) != len(theirs_dumps):
            found.append("deploy dumps: {} files against {}".format(len(ours_dumps), len(theirs_dumps)))
        found += ["deploy dump {} (theirs {}) differs".format(a[0], b[0])
                  for a, b in zip(ours_dumps, theirs_dumps) if a[1] != b[1]]
    return found
