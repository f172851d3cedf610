"""The report's page and plots (report.py parses, computes the outputs, and calls these):
the training logs read, the loss, prediction and error plots, the layer table of an
xmodel's fix positions and DPU shifts, and the Markdown page. Same inputs, same bytes."""
import csv
import os
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from dpu.shifts import (SHIFT_BIAS_MAX, SHIFT_CUT_MAX, SHIFT_CUT_MIN, check_layer, shift_bias,  # noqa: E402
                        shift_bias_min, shift_cut)
from dpu.simulation import load_model  # noqa: E402
from flow.checked_io import InputError, require_file  # noqa: E402

PAGE = "README.md"
LOSS_PNG, PREDICTIONS_PNG, ERRORS_PNG, QAT_LOSS_PNG = "loss.png", "predictions.png", "errors.png", "qat_loss.png"
REPORT_FILES = (PAGE, LOSS_PNG, PREDICTIONS_PNG, ERRORS_PNG, QAT_LOSS_PNG)
LOGS = ("train", "valid")
# Without a Software entry the PNG holds only pixels: no version, no date.
PNG_METADATA = {"Software": None}
DPI = 100



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


def load_int8_model(quant_dir, input_size, net):
    """The deployed network (IntModel) of <quant_dir>/<net>_int.xmodel."""
    path = os.path.join(quant_dir, net + "_int.xmodel")
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
