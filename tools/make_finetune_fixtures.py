"""The fixtures of tests/test_finetune.py: fast finetune by the real vai_q_pytorch.

    python tools/make_finetune_fixtures.py --real35 PYTHON [--real25 PYTHON] [--output tests/fixtures/finetune]

PYTHON is a command that runs a Python with pytorch_nndct 3.5 (as for
tools/real_quantizer_check.py). For each case below the real quantizer runs
vai_q_pytorch_quant.py --backend nndct with the pinned kernels (flow/kernels.py):
`--quant_mode calib --fast_finetune`, then `--quant_mode test --fast_finetune
--save_outputs`; the case's folder gets case.json (the script's flags), the inputs
the case needs (a random FFN's model.pth and calib.npy; the golden case p1 is read
from tests/fixtures/golden) and expected/: param.pth, bias_corr.pth (when bias
correction is on), quant_info.json and test_outputs.npy, as the real one wrote them;
and passes.npz: what the real quantizer's fast finetune computed inside, seen through
hooks on its AdvancedQuantProcessor: the network loss of every evaluation, in order
("net_losses"), and each tuned layer's weight and bias at the end of each pass, before
they go back on their grids ("layer{k}_pass{p}_weight", "..._bias", k and p from 0).
With --real25 (a Python with pytorch_nndct 2.5) the same runs give expected25/:
param.pth, bias_corr.pth and test_outputs.npy (2.5's quant_info.json names nodes its
own way; the built-in keeps 3.5's names).
tests/test_finetune.py runs the built-in on the same cases and compares.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)   # a tool of the repository: its packages and shared modules

from flow import start_stage  # noqa: E402

start_stage(__name__)   # first: kernels pinned and Ctrl-C handled before torch is imported

import numpy as np  # noqa: E402

from flow.checked_io import ArgumentParser, cli  # noqa: E402

SCRIPT = os.path.join(REPO, "vai_q_pytorch_quant.py")
OUTPUT = os.path.join(REPO, "tests", "fixtures", "finetune")
GOLDEN_P1 = os.path.join("..", "..", "golden", "p1_trained_in2")   # relative to the case's folder

# Random FFNs: (name, seed, input_size, scale of the parameters, std of the inputs, rows,
# batch size, bias correction). Chosen so that passes do improve some layers (r2: the
# last layer, through its quantized output; r3, r4: many small batches), that two end
# in a batch of 1 row (learning rates halved: r2, r4) and one runs without bias
# correction (r1).
RANDOM = [
    ("r1_in4_corr_off", 2, 4, 4.0, 0.5, 200, 64, False),
    ("r2_in2_last_row_alone", 3, 2, 0.25, 8.0, 129, 64, True),
    ("r3_in2_batch8", 5, 2, 4.0, 1.0, 640, 8, True),
    ("r4_in2_batch16_last_row_alone", 7, 2, 1.0, 8.0, 321, 16, True),
]
# The calib run, in the real quantizer's Python: the script's main with hooks that
# record what passes.npz holds (written to {out}). Arguments: the script's flags.
DRIVER = r'''
import sys
sys.path.insert(0, {repo!r})
import numpy as np
import vai_q_pytorch_quant as script
from pytorch_nndct.qproc import adaquant

processor = adaquant.AdvancedQuantProcessor
arrays, losses, tuned = {{}}, [], []
tune, measure = processor.optimize_layer_v2, processor.calc_net_loss

def optimize_layer(self, qnode, *args, **kwargs):
    tuned.append([qnode.module, 0])
    return tune(self, qnode, *args, **kwargs)

def net_loss(self, *args, **kwargs):
    if tuned:   # a pass has ended: the layer as trained, before its parameters are rounded
        layer, passes = tuned[-1]
        name = "layer{{}}_pass{{}}_".format(len(tuned) - 1, passes)
        arrays[name + "weight"] = layer.weight.detach().numpy().copy()
        arrays[name + "bias"] = layer.bias.detach().numpy().copy()
        tuned[-1][1] += 1
    loss = measure(self, *args, **kwargs)
    losses.extend(loss.avg)
    return loss

processor.optimize_layer_v2, processor.calc_net_loss = optimize_layer, net_loss
sys.argv = [{script!r}] + sys.argv[1:]
code = script.main(sys.argv[1:])
np.savez({out!r}, net_losses=np.array(losses, dtype=np.float64), **arrays)
sys.exit(code)
'''
FILES = ("param.pth", "bias_corr.pth", "quant_info.json", "passes.npz")


def make_random(folder, seed, input_size, scale, std, rows, batch, param_corr):
    """model.pth, calib.npy and case.json of a random FFN in `folder`."""
    import torch
    from model import FFN
    torch.manual_seed(seed)
    model = FFN(input_size)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(scale)
    rng = np.random.default_rng(seed)
    x = rng.normal(0, std, (rows, input_size))
    y = np.sin(x).sum(axis=1, keepdims=True)
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "calib.npy"), np.hstack([x, y]).astype(np.float32))
    torch.save(model.state_dict(), os.path.join(folder, "model.pth"))
    return {"data_dir": ".", "calib_data": "calib.npy", "checkpoint_dir": ".", "model_name": "model.pth",
            "input_size": input_size, "batch_size": batch, "nndct_options": [] if param_corr else
            ["--nndct_param_corr", "False"]}


def p1_case():
    return {"data_dir": GOLDEN_P1, "calib_data": "calib.npy", "checkpoint_dir": GOLDEN_P1,
            "model_name": "float_state_dict.pth", "input_size": 2, "batch_size": 64, "nndct_options": []}


def script_flags(folder, case):
    """The script's flags of a case, paths made absolute."""
    def path(p):
        return os.path.normpath(os.path.join(folder, p))
    return (["--data_dir", path(case["data_dir"]), "--calib_data", case["calib_data"],
             "--checkpoint_dir", path(case["checkpoint_dir"]), "--model_name", case["model_name"],
             "--input_size", str(case["input_size"]), "--batch_size", str(case["batch_size"])]
            + case["nndct_options"])


def run(python, folder, case, out, passes=True):
    """calib --fast_finetune, then test --fast_finetune into `out`, by the real quantizer;
    passes: with the hooks that write passes.npz (3.5's AdvancedQuantProcessor)."""
    flags = script_flags(folder, case) + ["--backend", "nndct", "--output_dir", out]
    driver = SCRIPT
    if passes:
        driver = os.path.join(out, "driver.py")
        with open(driver, "w") as f:
            f.write(DRIVER.format(repo=REPO, script=SCRIPT, out=os.path.join(out, "passes.npz")))
    command = shlex.split(python)
    for script, mode in ((driver, ["--quant_mode", "calib", "--fast_finetune"]),
                         (SCRIPT, ["--quant_mode", "test", "--fast_finetune", "--save_outputs",
                                   os.path.join(out, "test_outputs.npy")])):
        done = subprocess.run(command + [script] + flags + mode, cwd=out,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        if done.returncode != 0:
            sys.exit("{}: {} failed:\n{}".format(os.path.basename(folder), " ".join(mode), done.stdout[-3000:]))


def cases(output):
    """[(folder, case)], the random ones made first when their folder is missing."""
    found = [(os.path.join(output, "p1_trained_in2"), p1_case())]
    for name, *spec in RANDOM:
        folder = os.path.join(output, name)
        case_file = os.path.join(folder, "case.json")
        if os.path.isfile(case_file):
            with open(case_file) as f:
                found.append((folder, json.load(f)))
        else:
            found.append((folder, make_random(folder, *spec)))
    return found


def main():
    parser = ArgumentParser(description="Fast finetune fixtures from the real vai_q_pytorch 3.5 and 2.5.")
    parser.add_argument("--real35", metavar="PYTHON", help="command of a Python with pytorch_nndct 3.5: "
                        "expected/ (with passes.npz)")
    parser.add_argument("--real25", metavar="PYTHON", help="command of a Python with pytorch_nndct 2.5: "
                        "expected25/ (its parameters, corrections and test outputs)")
    parser.add_argument("--output", default=OUTPUT, help="the fixtures' folder (default: %(default)s)")
    args = parser.parse_args()
    if not (args.real35 or args.real25):
        parser.error("give --real35 and/or --real25")
    for folder, case in cases(args.output):
        name = os.path.basename(folder)
        for python, expected_name, passes in ((args.real35, "expected", True), (args.real25, "expected25", False)):
            if not python:
                continue
            out = tempfile.mkdtemp(prefix="ft_" + name + "_")
            try:
                run(python, folder, case, out, passes)
                expected = os.path.join(folder, expected_name)
                os.makedirs(expected, exist_ok=True)
                for f in (FILES if passes else ("param.pth", "bias_corr.pth")) + ("test_outputs.npy",):
                    if os.path.isfile(os.path.join(out, f)):
                        shutil.copyfile(os.path.join(out, f), os.path.join(expected, f))
                with open(os.path.join(folder, "case.json"), "w") as f:
                    json.dump(case, f, indent=1)
                    f.write("\n")
                outputs = np.load(os.path.join(out, "test_outputs.npy"))
                print("{}: {} rows, written to {}".format(name, len(outputs), expected))
            finally:
                shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    cli(main)
