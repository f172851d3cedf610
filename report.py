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
import csv
import os
from collections import OrderedDict

from flow import start_stage

start_stage(__name__)   # first: kernels pinned and Ctrl-C handled before torch is imported

from flow.checked_io import ArgumentParser, positive_int

PAGE = "README.md"
LOSS_PNG, PREDICTIONS_PNG, ERRORS_PNG, QAT_LOSS_PNG = "loss.png", "predictions.png", "errors.png", "qat_loss.png"
REPORT_FILES = (PAGE, LOSS_PNG, PREDICTIONS_PNG, ERRORS_PNG, QAT_LOSS_PNG)
LOGS = ("train", "valid")
# Batch of the float forward; fixed, so the float32 sums (and the page) are the same every run.
BATCH_SIZE = 64
# Without a Software entry the PNG holds only pixels: no version, no date.
PNG_METADATA = {"Software": None}
DPI = 100


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

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from flow.checked_io import InputError, atomic_path, check_output_dir, cli, load_npy, require_file  # noqa: E402
from losses import predict, regression_metrics  # noqa: E402
from model import FFN  # noqa: E402
from preprocessors import checkpoint_path, load_ffn, make_dataloader  # noqa: E402
from dpu.simulation import load_model  # noqa: E402
from dpu import reference  # noqa: E402
from vaiq.legalize import (SHIFT_BIAS_MAX, SHIFT_CUT_MAX, SHIFT_CUT_MIN, check_layer,  # noqa: E402
                           shift_bias, shift_bias_min, shift_cut)


# ---------------------------------------------------------------- inputs

def read_log(path):
    """(epochs, losses) from a Catalyst csv log with columns step,loss[,r2]; None if there is no file."""
    if not os.path.exists(path):
        return None
    require_file(path, "training log")
    epochs, losses = [], []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"step", "loss"} <= set(reader.fieldnames):
                raise InputError("{}: expected a header with columns step,loss, found {}".format(
                    path, ",".join(reader.fieldnames or []) or "an empty file"))
            for row in reader:
                try:
                    epochs.append(int(row["step"]))
                    losses.append(float(row["loss"]))
                except (TypeError, ValueError):
                    raise InputError("{}: line {}: step {!r}, loss {!r}; expected an integer and a number".format(
                        path, reader.line_num, row["step"], row["loss"]))
    except (OSError, UnicodeDecodeError, csv.Error) as e:  # csv.Error: e.g. a field over the size limit
        raise InputError("{}: cannot read the training log ({})".format(path, getattr(e, "strerror", None) or e))
    return np.array(epochs), np.array(losses)


def read_logs(log_dir):
    """({name: (epochs, losses)} of the logs found, [notes on the page about the rest])."""
    logs, notes = OrderedDict(), []
    for name in LOGS:
        path = os.path.join(log_dir, name + ".csv")
        log = read_log(path)
        if log is None:
            notes.append("`{}` not found".format(path))
        elif len(log[0]) == 0:
            notes.append("`{}` holds no epochs".format(path))
        else:
            logs[name] = log
            bad = log[0][~(log[1] > 0) | ~np.isfinite(log[1])]
            if len(bad):
                # A log-scale axis cannot show them; say so rather than drop them silently.
                notes.append("`{}`: loss not positive and finite at epoch(s) {}, not plotted".format(
                    path, ", ".join(str(e) for e in bad)))
    return logs, notes


def load_int8_model(quant_dir, input_size):
    """The deployed network (IntModel) of <quant_dir>/FFN_int.xmodel."""
    path = os.path.join(quant_dir, FFN.__name__ + "_int.xmodel")
    if not os.path.exists(path):
        raise InputError("{}: xmodel not found; run `vai_q_pytorch_quant.py --quant_mode test --deploy` "
                         "first".format(path))
    model = load_model(path)
    if model.input_size != input_size:
        raise InputError("{}: the network takes {} inputs, --input_size is {}".format(
            path, model.input_size, input_size))
    return model, path


# ---------------------------------------------------------------- plots

def save(fig, path):
    fig.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    plt.close(fig)


def plot_loss(logs, path, title="Training and validation loss per epoch", ylabel="MSE loss (log scale)"):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, (epochs, losses) in logs.items():
        shown = np.isfinite(losses) & (losses > 0)
        ax.plot(epochs[shown], losses[shown], marker="o", markersize=3, label=name)
    if "valid" in logs:
        # The training run keeps the weights of the epoch with the lowest validation loss.
        epochs, losses = logs["valid"]
        finite = np.where(np.isfinite(losses), losses, np.inf)
        if np.isfinite(finite).any():
            best = int(np.argmin(finite))
            ax.plot(epochs[best], losses[best], "*", color="C3", markersize=14,
                    label="lowest valid loss (epoch {})".format(epochs[best]))
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save(fig, path)


def plot_predictions(targets, outputs, data_name, path):
    """One panel per model: predicted vs target, with y = x; `outputs` is {title: (values, mse)}."""
    values = np.concatenate([targets] + [v for v, _ in outputs.values()])
    pad = 0.05 * (values.max() - values.min() or 1.0)
    limits = (values.min() - pad, values.max() + pad)
    # constrained layout keeps the figure title, panel titles and labels apart.
    fig, axes = plt.subplots(1, len(outputs), figsize=(5.2 * len(outputs), 5.6), squeeze=False,
                             constrained_layout=True)
    for ax, (title, (predicted, mse)) in zip(axes[0], outputs.items()):
        # The y = x line goes under the points, so rows on it stay visible.
        ax.plot(limits, limits, color="0.3", linestyle="--", linewidth=0.8, zorder=1, label="y = x")
        ax.scatter(targets, predicted, s=6, alpha=0.5, linewidths=0, zorder=2, label="rows")
        ax.set_xlim(limits)
        ax.set_ylim(limits)
        ax.set_aspect("equal")
        ax.set_title("{}\nmse {:.3e}".format(title, mse))
        ax.set_xlabel("target")
        ax.set_ylabel("predicted")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", markerscale=3)
    fig.suptitle("Predicted vs target on {} ({} rows)".format(data_name, len(targets)))
    save(fig, path)


def plot_errors(errors, fp_out, path):
    """One histogram per error ({title: values}), with +-1 output LSB marked."""
    lsb = 2.0 ** -fp_out
    fig, axes = plt.subplots(1, len(errors), figsize=(6 * len(errors), 4.4), squeeze=False,
                             constrained_layout=True)
    for ax, (title, error) in zip(axes[0], errors.items()):
        # Symmetric around 0 and at least +-1.5 LSB wide, so the LSB marks are always inside.
        reach = max(np.abs(error).max(), 1.5 * lsb)
        counts, _, _ = ax.hist(error, bins=np.linspace(-reach, reach, 61), color="C0")
        ax.set_ylim(0, 1.25 * counts.max())  # room for the legend above the bars
        for sign in (-1, 1):
            ax.axvline(sign * lsb, color="C3", linestyle="--", linewidth=1.2,
                       label="\u00b11 output LSB = 2^-{} = {:g}".format(fp_out, lsb) if sign > 0 else None)
        ax.set_title("{}: max |error| {:.3g} = {:.2f} LSB".format(title, np.abs(error).max(),
                                                                   np.abs(error).max() / lsb))
        ax.set_xlabel("error")
        ax.set_ylabel("rows")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right")
    fig.suptitle("Errors of the int8 model ({} rows)".format(len(next(iter(errors.values())))))
    save(fig, path)


# ---------------------------------------------------------------- the page

def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def layer_table(int_model):
    """(Markdown lines, number of layers outside the DPU ranges) of the xmodel's layers."""
    rows, n_bad = [], 0
    for layer, i in zip(int_model.layers, int_model.input_positions()):
        cut, bias = shift_cut(i, layer.fp_w, layer.fp_out), shift_bias(i, layer.fp_w, layer.fp_b)
        if layer.kind == "matmul":   # the layers the quantizer legalizes
            problems = check_layer(i, layer.fp_w, layer.fp_b, layer.fp_out)
            n_bad += bool(problems)
            verdict = "out of range: " + "; ".join(problems) if problems else "ok"
        else:
            verdict = "scale: not legalized, placed by the compiler"
        rows.append([layer.name, layer.kind, layer.activation or "none", i, layer.fp_w, layer.fp_b, layer.fp_out,
                     cut, "{}..{}".format(SHIFT_CUT_MIN, SHIFT_CUT_MAX),
                     bias, "{}..{}".format(shift_bias_min(cut), SHIFT_BIAS_MAX), verdict])
    header = ["layer", "op", "activation", "input", "weight", "bias", "output", "shift_cut", "shift_cut range",
              "shift_bias", "shift_bias range", "DPU"]
    return table(header, rows), n_bad


def hls_line(path, hls_out, int8_out):
    """The page's line on the hls4ml C simulation against the DPU arithmetic."""
    differ = int((hls_out != int8_out).sum())
    return "hls4ml C simulation for the U250 (`{}`, `hls4ml_project.py`): {} the DPU arithmetic on {} " \
        "rows.".format(path, "equal to" if not differ else "differs from", len(int8_out)) + \
        ("" if not differ else " ({} rows differ)".format(differ))


def page(paths, log_notes, metrics, diff, int_model, pngs):
    """The Markdown text of README.md."""
    lsb = 2.0 ** -int_model.fp_out
    lines = ["# FFN report", "",
             "Float model `{}`, int8 model `{}` run in integer DPU arithmetic (equal to the quantizer's "
             "test mode), both on {} rows of `{}`.".format(paths["checkpoint"], paths["xmodel"],
                                                          metrics["rows"], paths["data"]),
             "", "## Training", ""]
    if LOSS_PNG in pngs:
        lines += ["![Training and validation loss per epoch]({})".format(LOSS_PNG), ""]
    if log_notes:
        missing = "" if LOSS_PNG in pngs else "No training loss plot: "
        lines += [missing + "; ".join(log_notes) + ".", ""]
    if QAT_LOSS_PNG in pngs:
        lines += ["Quantization-aware training (`{}`): the training loss of the fake-quantized network and "
                  "the int8 MSE on the validation rows, per epoch; the epoch with the lowest is kept.".format(
                      paths["qat"]), "", "![QAT loss per epoch]({})".format(QAT_LOSS_PNG), ""]
    lines += ["## Accuracy on `{}`".format(paths["data"]), ""]
    lines += table(["model", "mse", "r^2"],
                   [[name, "{:.6e}".format(m["mse"]), "{:.6f}".format(m["r^2"])]
                    for name, m in metrics["models"].items()])
    lines += [""] + ([metrics["hls"], ""] if "hls" in metrics else []) + [
              "int8 vs float: mse {:.3e}, largest |int8 - float| {:.4g} = {:.2f} output LSB "
              "(1 LSB = 2^-{} = {:g}).".format(diff["mse"], diff["max"], diff["max"] / lsb, int_model.fp_out, lsb),
              "", "![Predicted vs target]({})".format(PREDICTIONS_PNG),
              "", "![Errors of the int8 model]({})".format(ERRORS_PNG), ""]
    rows, n_bad = layer_table(int_model)
    lines += ["## Int8 layers of `{}`".format(paths["xmodel"]), "",
              "Fix positions fp (value = q * 2^-fp) of each layer's input, weight, bias and output; "
              "shift_cut = input + weight - output scales the accumulator to the output, "
              "shift_bias = input + weight - bias aligns the bias to it. "
              "DPU: ok when both shifts are inside the hardware ranges.", ""]
    lines += rows + [""]
    if n_bad:
        lines += ["{} layer(s) outside the DPU ranges: the DPU compiler (vai_c_xir) refuses such "
                  "layers.".format(n_bad), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    check_output_dir(args.output_dir, own_files=REPORT_FILES)
    paths = {"data": os.path.join(args.data_dir, args.eval_data),
             "checkpoint": checkpoint_path(args.checkpoint_dir, args.model_name)}
    # Everything is read and checked before anything is written.
    int_model, paths["xmodel"] = load_int8_model(args.quant_dir, args.input_size)
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
