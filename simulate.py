"""Run an .xmodel on the integer DPU reference (vaiq/dpu.py).

    python simulate.py XMODEL --data data/test.npy [--check DEPLOY_CHECK_DIR]
                       [--input_size N] [--output FILE.npy]

Prints the MSE of the integer outputs against the data's targets (last
column). With --check, the first N rows of the data (N = the xmodel's batch)
must be the rows of the quantizer's deploy run: every tensor dumped in the
deploy-check folder is compared exactly with the integer forward of those
rows, one line per tensor, and the exit code is 1 if any differs.
"""
import os

from interruption import exit_on_interrupt

exit_on_interrupt(__name__)   # first: the imports below take a second or more

import numpy as np

from checked_io import (ArgumentParser, InputError, cli, load_npy, positive_int,
                        require_dir, require_file, save_npy)
from vaiq import dpu

EXIT_MISMATCH = 1


def parse_args():
    parser = ArgumentParser(description="Run an .xmodel on the integer DPU reference.")
    parser.add_argument("xmodel", help="the quantizer's <Net>_int.xmodel")
    parser.add_argument("--data", required=True,
                        help=".npy array (rows, input_size + 1): features, then the target")
    parser.add_argument("--check", metavar="DEPLOY_CHECK_DIR",
                        help="deploy_check_data_int/<Net> folder (or deploy_check_data_int) of "
                             "the deploy run on the first rows of --data, as many as the xmodel's "
                             "batch; every dump must match exactly")
    parser.add_argument("--input_size", type=positive_int,
                        help="the expected number of features (checked against the xmodel)")
    parser.add_argument("--output", metavar="FILE.npy",
                        help="save the outputs, float32 (rows, 1)")
    return parser.parse_args()


def load_model(path):
    """The IntModel of an .xmodel, checked to be runnable with one output."""
    require_file(path, "xmodel")
    from vaiq.xmodel import read_xmodel

    model = read_xmodel(path)
    try:
        dpu.check_model(model)
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
        outputs = dpu.outputs(model, features)
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
    checks = dpu.compare_dumps(dpu.deploy_dumps(model, rows), folder)
    bad = [check for check in checks if not check.ok]
    input_dump = model.input_op_name + dpu.FIX_SUFFIX + ".bin"
    differing_input = next((check for check in bad if check.name == input_dump), None)
    return checks, bad, differing_input


def check_dumps(model, rows, folder):
    """Print one line per dumped tensor; return (all match, text for the summary line)."""
    checks, bad, differing_input = deploy_check(model, rows, folder)
    for check in checks:
        print("  " + check.describe())
    if not bad:
        return True, "deploy check: all {} tensors match".format(len(checks))
    text = "deploy check: {} of {} tensors differ".format(len(bad), len(checks))
    overflow = dpu.overflow_explanation(rows, model.fp_in)
    if differing_input is not None and overflow:
        text += " ({})".format(overflow)
    elif differing_input is not None:
        text += " (the input differs: {}?)".format(
            "is row 0 of the data the deploy row" if len(rows) == 1 else
            "are rows 0 to {} of the data the deploy rows".format(len(rows) - 1))
    return False, text


def main():
    args = parse_args()
    if args.output is not None and not args.output.endswith(".npy"):
        raise InputError("{}: --output must be a .npy file".format(args.output))
    model = load_model(args.xmodel)
    if args.input_size is not None and args.input_size != model.input_size:
        raise InputError("{}: takes {} inputs, but --input_size is {}".format(
            args.xmodel, model.input_size, args.input_size))
    folder = dump_folder(args.check, model.net_name) if args.check else None
    features, outputs, mse = run_reference(args.xmodel, model, args.data)
    rows = deploy_rows(features, model, args.data) if folder is not None else None
    summary = ["{} rows".format(len(features)), "MSE {:.6e}".format(mse)]
    if args.output is not None:
        save_npy(args.output, outputs)
        summary.append("outputs in {}".format(args.output))
    all_match = True
    if folder is not None:
        all_match, text = check_dumps(model, rows, folder)
        summary.append(text)
    print("simulate {}: {}".format(os.path.basename(args.xmodel), ", ".join(summary)))
    return 0 if all_match else EXIT_MISMATCH


if __name__ == "__main__":
    cli(main)
