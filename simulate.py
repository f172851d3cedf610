"""Run an .xmodel on the integer DPU reference (dpu/reference.py).

    python simulate.py XMODEL --data data/test.npy [--check DEPLOY_CHECK_DIR]
                       [--input_size N] [--output FILE.npy]

Prints the MSE of the integer outputs against the data's targets (last
column). With --check, the first N rows of the data (N = the xmodel's batch)
must be the rows of the quantizer's deploy run: every tensor dumped in the
deploy-check folder is compared exactly with the integer forward of those
rows; one summary line, a line per tensor with --verbose or where one differs,
and the exit code is 1 if any differs.
"""
import os

from flow import start_stage

start_stage(__name__)   # first: kernels pinned and Ctrl-C handled before torch is imported

from dpu.simulation import check_dumps, deploy_rows, dump_folder, load_model, run_reference
from flow.checked_io import ArgumentParser, InputError, cli, positive_int, save_npy

EXIT_MISMATCH = 1


def parse_args():
    parser = ArgumentParser(description="Run an .xmodel on the integer DPU reference.")
    parser.add_argument("xmodel", help="the quantizer's <Net>_int.xmodel")
    parser.add_argument("--data", required=True,
                        help=".npy array (rows, input_size + 1): features, then the target")
    parser.add_argument("--check", metavar="DEPLOY_CHECK_DIR",
                        help="deploy_check_data_int/<Net> folder (or deploy_check_data_int) of "
                             "the deploy run on the first rows of --data, as many as the xmodel's "
                             "batch; every dump must match exactly (default: none, no deploy check)")
    parser.add_argument("--input_size", type=positive_int,
                        help="the expected number of features, checked against the xmodel (default: the "
                             "xmodel's)")
    parser.add_argument("--output", metavar="FILE.npy",
                        help="save the outputs, float32 (rows, 1) (default: not saved)")
    parser.add_argument("--verbose", action="store_true",
                        help="with --check: one line per tensor even when all match")
    return parser.parse_args()


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
        checks, all_match, text = check_dumps(model, rows, folder)
        if args.verbose or not all_match:
            for check in checks:
                print("  " + check.describe())
        summary.append(text)
    print("simulate {}: {}".format(os.path.basename(args.xmodel), ", ".join(summary)))
    return 0 if all_match else EXIT_MISMATCH


if __name__ == "__main__":
    cli(main)
