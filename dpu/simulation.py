"""An xmodel on the integer DPU reference: loading it as a runnable network, running
it on a .npy of rows, and checking the quantizer's deploy-check dumps against it.
simulate.py, the pre-flight checks, the hls4ml route and the report use these."""
import os

import numpy as np

from flow.checked_io import InputError, load_npy, require_dir, require_file

from . import reference


def load_model(path):
    """The IntModel of an .xmodel, checked to be runnable with one output."""
    require_file(path, "xmodel")
    from dpu.xmodel import read_xmodel

    model = read_xmodel(path)
    try:
        reference.check_model(model)
    except ValueError as e:
        raise InputError("{}: {}".format(path, e))
    n_out = model.layers[-1].weight.shape[0]
    if n_out != 1:
        raise InputError("{}: the network has {} outputs, expected 1 (one target column)".format(
            path, n_out))
    return model


def _has_dumps(folder):
    return any(name.endswith(".bin") for name in os.listdir(folder))


def dump_folder(path, net_name):
    """The folder holding the .bin dumps: `path` itself or its `<Net>` subfolder."""
    require_dir(path, "deploy-check folder")
    nested = os.path.join(path, net_name)
    if not _has_dumps(path) and os.path.isdir(nested):
        path = nested
    if not _has_dumps(path):
        raise InputError("{}: no .bin dumps in the deploy-check folder".format(path))
    return path


def mean_squared_error(outputs, targets):
    """In float64, of the float32 outputs against the targets as stored."""
    return float(np.mean((outputs[:, 0].astype(np.float64) - targets.astype(np.float64)) ** 2))


def load_data(data_path, model):
    """(features, targets) of a .npy of (rows, input_size + 1); InputError for bad data."""
    data = load_npy(data_path, n_columns=model.input_size + 1)
    return data[:, :-1], data[:, -1]


def run_reference(path, model, data_path):
    """The integer reference of the xmodel at `path` on a .npy of (rows, input_size + 1):
    (features, float32 outputs, MSE against the last column, or None when the network has
    more than one output). InputError for bad data, or for fix positions too far apart
    for 64-bit integers."""
    features, targets = load_data(data_path, model)
    try:
        outputs = reference.outputs(model, features)
    except ValueError as e:
        raise InputError("{}: {}".format(path, e))
    mse = mean_squared_error(outputs, targets) if outputs.shape[1] == 1 else None
    return features, outputs, mse


def deploy_rows(features, model, data_path):
    """The rows of the deploy run: the first model.batch rows of the data."""
    if len(features) < model.batch:
        raise InputError("{}: has {} row{}, fewer than the xmodel's batch {}: the deploy check needs the "
                         "{} rows of the deploy run first".format(
                             data_path, len(features), "" if len(features) == 1 else "s", model.batch,
                             model.batch))
    return features[:model.batch]


def deploy_check(model, rows, folder):
    """The folder's dumps against the integer forward of the deploy rows: (all DumpChecks,
    those that differ, the check of the int8 input dump if it differs, else None).
    A differing input means the rows are not those of the deploy run."""
    checks = reference.compare_dumps(reference.deploy_dumps(model, rows), folder)
    bad = [check for check in checks if not check.ok]
    input_dump = model.input_op_name + reference.FIX_SUFFIX + ".bin"
    differing_input = next((check for check in bad if check.name == input_dump), None)
    return checks, bad, differing_input


def check_dumps(model, rows, folder):
    """(all DumpChecks, whether all match, text for the summary line)."""
    checks, bad, differing_input = deploy_check(model, rows, folder)
    if not bad:
        return checks, True, "deploy check: all {} tensors match".format(len(checks))
    text = "deploy check: {} of {} tensors differ".format(len(bad), len(checks))
    overflow = reference.overflow_explanation(rows, model.fp_in)
    if differing_input is not None and overflow:
        text += " ({})".format(overflow)
    elif differing_input is not None:
        text += " (the input differs: {}?)".format(
            "is row 0 of the data the deploy row" if len(rows) == 1 else
            "are rows 0 to {} of the data the deploy rows".format(len(rows) - 1))
    return checks, False, text
