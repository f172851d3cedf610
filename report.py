"""After the flow: a Markdown report of the training and the int8 network, with plots.

    python report.py [--data_dir data] [--eval_data test.npy] [--input_size 2]
                     [--checkpoint_dir checkpoints] [--model_name ffn_state_dict.pth]
                     [--log_dir logs] [--quant_dir quantize_result] [--output_dir report]
                     [--hls_outputs FILE.npy] [--qat_dir qat_result]

Writes <output_dir>/README.md and the plots it shows:
  loss.png         training and validation loss per epoch (<log_dir>/train.csv, valid.csv)
  predictions.png  predicted vs target of the float and the int8 model on the eval data
  errors.png       int8 - float and int8 - target, with the output LSB marked
  qat_loss.png     with a QAT result (vai_q_pytorch_qat.py, <qat_dir>/train.csv, valid.csv):
                   its training loss and int8 validation MSE per epoch; the QAT xmodel
                   gets a row of its own in the accuracy table
The int8 outputs come from <quant_dir>/FFN_int.xmodel run in integer DPU
arithmetic (dpu/reference.py), which equals the quantizer's test mode. The page also
tables each layer's fix positions and DPU shifts, and the mse and r^2 of both
models. Missing training logs are noted on the page; the rest is still made.
With --hls_outputs (the C-simulation outputs that hls4ml_project.py saved on the same
rows; `make report` passes the file of `make hls`), they get a row beside the DPU's and
their equality with it is stated; a missing file is noted on the page.

The folder is built aside and swapped in whole, so an interrupted run leaves
the previous report; the same inputs give the same bytes.
"""
import os
from collections import OrderedDict

from flow import start_stage

start_stage(__name__)   # first: kernels pinned and Ctrl-C handled before torch is imported

from flow.checked_io import ArgumentParser, positive_int

# Batch of the float forward; fixed, so the float32 sums (and the page) are the same every run.
BATCH_SIZE = 64


def parse_args(argv=None):
    """The flags; needs only argparse, so that --help and bad flags answer before torch is imported."""
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="data", help="folder of --eval_data")
    parser.add_argument("--eval_data", default="test.npy", help="rows to evaluate both models on, in --data_dir")
    parser.add_argument("--input_size", type=positive_int, default=2, help="features per row of the data")
    parser.add_argument("--checkpoint_dir", default="checkpoints", help="folder of --model_name")
    parser.add_argument("--model_name", default="ffn_state_dict.pth", help="float state dict: a file name in --checkpoint_dir, or a path")
    parser.add_argument("--log_dir", default="logs", help="train.csv and valid.csv of the training")
    parser.add_argument("--quant_dir", default="quantize_result",
                        help="the quantizer's --output_dir, with FFN_int.xmodel")
    parser.add_argument("--output_dir", default="report", help="folder of README.md and the plots; replaced whole")
    parser.add_argument("--qat_dir", default="qat_result",
                        help="vai_q_pytorch_qat.py's --output_dir: its loss curve and its xmodel's accuracy, "
                             "when it holds them")
    parser.add_argument("--hls_outputs", metavar="FILE.npy",
                        help="hls4ml_project.py --save_outputs on the same rows, shown beside the DPU's "
                             "(default: none, no hls4ml row)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()    # --help and bad flags answer here, before the seconds that torch takes to import

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dpu import reference  # noqa: E402
from dpu.simulation import load_model  # noqa: E402
from flow.checked_io import InputError, atomic_path, check_output_dir, cli, load_npy  # noqa: E402
from losses import predict, regression_metrics  # noqa: E402
from model import FFN  # noqa: E402
from preprocessors import checkpoint_path, load_ffn, make_dataloader  # noqa: E402
from reporting.page import (ERRORS_PNG, LOSS_PNG, PAGE, PREDICTIONS_PNG, QAT_LOSS_PNG, REPORT_FILES,  # noqa: E402
                            layer_table, load_int8_model, page, plot_errors, plot_loss, plot_predictions, read_logs,
                            hls_line)


# ---------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    check_output_dir(args.output_dir, own_files=REPORT_FILES)
    paths = {"data": os.path.join(args.data_dir, args.eval_data),
             "checkpoint": checkpoint_path(args.checkpoint_dir, args.model_name)}
    # Everything is read and checked before anything is written.
    int_model, paths["xmodel"] = load_int8_model(args.quant_dir, args.input_size, FFN.__name__)
    loader = make_dataloader(args.data_dir, args.eval_data, False, BATCH_SIZE, input_size=args.input_size)
    model = load_ffn(args.checkpoint_dir, args.model_name, args.input_size)
    logs, log_notes = read_logs(args.log_dir)
    qat_logs, _ = read_logs(args.qat_dir) if os.path.isdir(args.qat_dir) else ({}, [])
    qat_xmodel = os.path.join(args.qat_dir, FFN.__name__ + "_0_int.xmodel")   # the QAT deploy's name
    paths["qat"] = args.qat_dir

    float_out, targets = predict(model, loader, "float")
    int8_out = torch.from_numpy(reference.outputs(int_model, loader.dataset.features.numpy()))
    metrics = {"rows": len(targets),
               "models": OrderedDict([("float", regression_metrics(float_out, targets)),
                                      ("int8", regression_metrics(int8_out, targets))])}
    if os.path.isfile(qat_xmodel):
        qat_out = reference.outputs(load_model(qat_xmodel), loader.dataset.features.numpy())
        metrics["models"]["int8 QAT ({})".format(qat_xmodel)] = regression_metrics(torch.from_numpy(qat_out), targets)
    float_np, int8_np, targets_np = (t.numpy().astype(np.float64).ravel() for t in (float_out, int8_out, targets))
    diff = {"mse": regression_metrics(int8_out, float_out)["mse"], "max": float(np.abs(int8_np - float_np).max())}
    if args.hls_outputs and not os.path.exists(args.hls_outputs):
        metrics["hls"] = "No hls4ml C simulation: `{}` not found (`make hls`, Python 3.10 or newer).".format(
            args.hls_outputs)
    elif args.hls_outputs:
        hls_out = torch.from_numpy(load_npy(
            args.hls_outputs, n_columns=1,
            columns="one output per row: shape (rows, 1), as hls4ml_project.py --save_outputs writes it"
        ).astype(np.float32))
        if len(hls_out) != len(targets):
            raise InputError("{}: has {} rows, the eval data {}".format(args.hls_outputs, len(hls_out), len(targets)))
        metrics["models"]["int8, hls4ml C simulation"] = regression_metrics(hls_out, targets)
        metrics["hls"] = hls_line(args.hls_outputs, hls_out, int8_out)

    pngs = ([LOSS_PNG] if logs else []) + [PREDICTIONS_PNG, ERRORS_PNG] + ([QAT_LOSS_PNG] if qat_logs else [])
    with atomic_path(args.output_dir) as tmp:
        os.mkdir(tmp)
        if logs:
            plot_loss(logs, os.path.join(tmp, LOSS_PNG))
        if qat_logs:
            plot_loss(qat_logs, os.path.join(tmp, QAT_LOSS_PNG), "Quantization-aware training: loss per epoch",
                      "MSE (log scale); valid: the int8 network")
        plot_predictions(targets_np, OrderedDict(
            [("float: {}".format(args.model_name), (float_np, metrics["models"]["float"]["mse"])),
             ("int8: {} (DPU arithmetic)".format(os.path.basename(paths["xmodel"])),
              (int8_np, metrics["models"]["int8"]["mse"]))]),
            os.path.basename(paths["data"]), os.path.join(tmp, PREDICTIONS_PNG))
        plot_errors(OrderedDict([("int8 - float", int8_np - float_np), ("int8 - target", int8_np - targets_np)]),
                    int_model.fp_out, os.path.join(tmp, ERRORS_PNG))
        with open(os.path.join(tmp, PAGE), "w", encoding="utf-8", newline="\n") as f:
            f.write(page(paths, log_notes, metrics, diff, int_model, pngs))

    _, n_bad = layer_table(int_model)
    m = metrics["models"]
    print("report: wrote {} with {}; {} rows of {}: mse float {:.3e}, int8 {:.3e} (r^2 {:.6f}, {:.6f}); "
          "{}/{} layers in DPU range{}".format(
              os.path.join(args.output_dir, PAGE), ", ".join(pngs), metrics["rows"], paths["data"],
              m["float"]["mse"], m["int8"]["mse"], m["float"]["r^2"], m["int8"]["r^2"],
              len(int_model.layers) - n_bad, len(int_model.layers),
              "" if logs else "; no training logs in " + args.log_dir))
    return 0


if __name__ == "__main__":
    cli(main)
