"""How good is int8? Float, default calibration, fast finetune, and the best that
choosing activation positions alone can reach, on calibration and held-out rows.

    python tools/quant_quality.py [--data_dir data --calib_data test.npy --heldout_data valid.npy]

Prints a table and saves a bar plot. Uses the built-in quantizer (the default
calibration is bit-identical to vai_q_pytorch). The table's last row is quantization-aware
training with the recipe's defaults: vai_q_pytorch_qat.py --mode train, run into a temporary
folder (a minute or two), or the result in --qat_result (docs/qat.md).
"""
import copy
import itertools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository's modules

from flow import start_stage

start_stage(__name__)   # first: kernels pinned and Ctrl-C handled before torch is imported

from flow.checked_io import ArgumentParser, positive_int


def parse_args():
    """The flags; needs only argparse, so that --help answers before torch is imported."""
    parser = ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))   # the first paragraph
    parser.add_argument("--data_dir", default="data", help="folder of the calibration and held-out data")
    parser.add_argument("--calib_data", default="test.npy", help="rows to calibrate (and finetune) on, in --data_dir")
    parser.add_argument("--heldout_data", default="valid.npy", help="rows the models are also measured on, in "
                        "--data_dir")
    parser.add_argument("--input_size", type=positive_int, default=2, help="features per row of the data")
    parser.add_argument("--checkpoint_dir", default="checkpoints", help="folder of --model_name")
    parser.add_argument("--model_name", default="ffn_state_dict.pth",
                        help="float state dict: a file name in --checkpoint_dir, or a path")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="rows per calibration forward")
    parser.add_argument("--qat_result", metavar="DIR",
                        help="measure this vai_q_pytorch_qat.py --mode train result (e.g. qat_result) instead of "
                        "training one with the recipe's defaults (default: train one)")
    parser.add_argument("--plot", default=os.path.join("benchmark_results", "quant_quality.png"),
                        help="the bar plot, a .png file")
    return parser.parse_args()


if __name__ == "__main__":
    parse_args()    # --help and bad flags answer here, before the seconds that torch takes to import

import subprocess

import torch

from flow.checked_io import InputError, atomic_path, check_output_dir, cli, require_dir
from losses import regression_metrics
from preprocessors import load_ffn, make_dataloader
from set_seed import set_seed
from vaiq import torch_quantizer
from vaiq.legalize import legalize
from vaiq.quant_info import read_bias_corr, read_quant_info
from vaiq.quant_model import QuantModel

SEARCH_RADIUS = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def qat_train(args, output_dir):
    """vai_q_pytorch_qat.py --mode train with the recipe's defaults into output_dir (the stage
    itself, so that the row is what `make qat` gives); its seconds."""
    start = time.perf_counter()
    command = [sys.executable, os.path.join(REPO, "vai_q_pytorch_qat.py"), "--mode", "train", "--backend", "builtin",
               "--data_dir", args.data_dir, "--input_size", str(args.input_size), "--checkpoint_dir",
               args.checkpoint_dir, "--model_name", args.model_name, "--output_dir", output_dir]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if done.returncode != 0:
        raise InputError("QAT training: {}".format((done.stderr.strip().splitlines() or ["failed"])[-1]))
    return time.perf_counter() - start


def qat_model(model, result_dir, x):
    """The deployable model of a QAT result, as a function of the rows: it rounds the tensor it
    is given in place, so it gets a copy."""
    from vaiq import QatProcessor
    from vaiq.qat import qat_form

    require_dir(result_dir, "QAT result folder")
    deployable = QatProcessor(qat_form(model), (x[:1],)).deployable_model(result_dir)
    return lambda rows: deployable(rows.clone())


def mse(model, x, y):
    with torch.no_grad():
        return regression_metrics(model(x), y)["mse"]


def calibrate(model, x, y, batch_size, output_dir, finetune):
    """Calib (and fast finetune) through the quantizer's API; returns the seconds of each part."""
    times = {}
    start = time.perf_counter()
    quantizer = torch_quantizer("calib", model, (x[:1],), output_dir=output_dir)
    with torch.no_grad():
        for first in range(0, len(x), batch_size):
            quantizer.quant_model(x[first:first + batch_size])
    times["calib"] = time.perf_counter() - start
    if finetune:
        start = time.perf_counter()
        quantizer.fast_finetune(mse, (quantizer.quant_model, x, y))
        times["finetune"] = time.perf_counter() - start
    quantizer.export_quant_config()
    return times


def test_model(model, x, output_dir, finetune):
    start = time.perf_counter()
    quantizer = torch_quantizer("test", model, (x[:1],), output_dir=output_dir)
    if finetune:
        quantizer.load_ft_param()
    with torch.no_grad():
        quantizer.quant_model(x)
    return quantizer, time.perf_counter() - start


EXHAUSTIVE_LIMIT = 625   # every choice for up to four activations (the FFN: input and three layers)
MAX_PASSES = 4           # of the one-tensor-at-a-time search beyond that


def shifted(positions, tensors, shifts, chain):
    """Activation positions moved by `shifts`, then legalized as at export."""
    candidate = copy.deepcopy(positions)
    for tensor, shift in zip(tensors, shifts):
        candidate["output"][tensor] += shift
    legalize(chain, candidate)
    return candidate


def position_search(chain, output_dir, x, y):
    """(MSE, model, shifts) of the lowest int8 MSE on (x, y) over the choices of
    activation positions within SEARCH_RADIUS of the calibrated ones (calibrated
    parameters and bias correction kept): every choice while there are at most
    EXHAUSTIVE_LIMIT, else one tensor at a time until no change helps (deep models)."""
    positions, bias_corrected, _ = read_quant_info(output_dir, chain)
    bias_corr = read_bias_corr(output_dir, chain) if bias_corrected else None
    tensors = chain.activation_tensors()
    offsets = range(-SEARCH_RADIUS, SEARCH_RADIUS + 1)
    best = None

    def consider(shifts):
        nonlocal best
        quant = QuantModel(chain, calib=False, positions=shifted(positions, tensors, shifts, chain),
                           bias_corr=bias_corr)
        value = mse(quant, x, y)
        if best is None or value < best[0]:
            best = (value, quant, tuple(shifts))

    if len(offsets) ** len(tensors) <= EXHAUSTIVE_LIMIT:
        for shifts in itertools.product(offsets, repeat=len(tensors)):
            consider(shifts)
        return best
    consider((0,) * len(tensors))
    for _ in range(MAX_PASSES):
        start = best[2]
        for k in range(len(tensors)):
            current = best[2]
            for offset in offsets:
                consider(current[:k] + (offset,) + current[k + 1:])
        if best[2] == start:
            break
    return best


def save_plot(path, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _, _ in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.38
    for k, (label, column) in enumerate((("calibration rows", 1), ("held-out rows", 2))):
        ax.bar([i + (k - 0.5) * width for i in range(len(rows))], [row[column] for row in rows], width, label=label)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names)
    ax.set_yscale("log")
    ax.set_ylabel("MSE against the targets")
    ax.set_title("FFN on the DPU: float vs int8")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def main():
    args = parse_args()
    if os.path.isdir(args.plot):
        raise InputError("{}: is a folder, --plot needs a .png file name".format(args.plot))
    check_output_dir(os.path.dirname(args.plot) or ".")

    set_seed(42)
    model = load_ffn(args.checkpoint_dir, args.model_name, args.input_size)
    data = {}
    for name, file in (("calib", args.calib_data), ("heldout", args.heldout_data)):
        dataset = make_dataloader(args.data_dir, file, False, 1, input_size=args.input_size).dataset
        data[name] = (dataset.features, dataset.targets)
    x, y = data["calib"]

    with tempfile.TemporaryDirectory() as tmp:
        default_dir, ft_dir = os.path.join(tmp, "default"), os.path.join(tmp, "finetuned")
        times = calibrate(model, x, y, args.batch_size, default_dir, finetune=False)
        default, times["test"] = test_model(model, x, default_dir, finetune=False)
        ft_times = calibrate(model, x, y, args.batch_size, ft_dir, finetune=True)
        finetuned, _ = test_model(model, x, ft_dir, finetune=True)
        times["finetune"] = ft_times["finetune"]
        start = time.perf_counter()
        _, best, shifts = position_search(default.chain, default_dir, x, y)
        times["position search"] = time.perf_counter() - start
        qat_dir = args.qat_result or os.path.join(tmp, "qat_result")
        if args.qat_result is None:
            times["QAT training"] = qat_train(args, qat_dir)
        qat = qat_model(model, qat_dir, x)

    models = [("float", model), ("int8 default", default.quant_model), ("int8 fast finetune", finetuned.quant_model),
              ("int8 best positions", best), ("int8 QAT", qat)]
    rows = [(name, mse(m, *data["calib"]), mse(m, *data["heldout"])) for name, m in models]
    base = rows[1][1]
    print("{:<22} {:>14} {:>14} {:>12}".format("model", "calib MSE", "held-out MSE", "vs default"))
    for name, calib_mse, heldout_mse in rows:
        print("{:<22} {:>14.4e} {:>14.4e} {:>11.3f}x".format(name, calib_mse, heldout_mse, calib_mse / base))
    print("best position shifts (input, layer outputs): {}".format(list(shifts)))
    print("QAT ({}): trained on train.npy, its epoch chosen on valid.npy".format(
        args.qat_result or "the recipe's defaults"))
    print("times: " + ", ".join("{} {:.2f} s".format(k, v) for k, v in times.items()))
    save_plot(args.plot, rows)
    print("quality: {} calibration rows of {}, held-out {}; plot -> {}".format(
        len(x), args.calib_data, args.heldout_data, args.plot))


if __name__ == "__main__":
    cli(main)
