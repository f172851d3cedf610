"""The built-in quantizer against the real vai_q_pytorch, release by release.

    python tools/real_quantizer_check.py --real35 PYTHON [--real25 PYTHON] [--random 8] [--scale_rows 100000]

PYTHON is a command that runs a Python with pytorch_nndct installed: inside a Vitis AI
docker plain `python` (2.5 in the 2.5 docker, 3.5 in the 3.5 one); elsewhere a build
of Xilinx's sources, e.g. "chroot /srv/bullseye /opt/venv/bin/python" (split into words
as a shell would; it must see this checkout and the system's temporary folder at the
same paths). For each release given:

1. stages: vai_q_pytorch_quant.py --backend nndct (calib, test --evaluate, deploy) on
   the committed data and checkpoint, in a copy; then calib and test with --fast_finetune
   by the real quantizer and by the built-in, their test outputs compared;
2. differential: the golden cases of that release (tests/fixtures/golden, and vai25/
   for 2.5) and --random FFNs, each quantized by the real quantizer and by the built-in
   (--vai_release of that release): positions, bias corrections, test outputs, the
   xmodel's ops and constants and every dump, by their numbers
   (quantization/compare.py); the real one's against the golden files too;
3. scale: calibrating --scale_rows rows of an FFN(64) in batches of 64, the quantizer's
   own work (building it, the forwards, exporting) timed in each, fastest of --rounds.

Every process runs with the pinned kernels (flow/kernels.py). Exit code 1 if any
comparison differs. Not part of `make test`: `make test-real-quantizers`.
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

from flow.checked_io import ArgumentParser, InputError, cli, positive_int  # noqa: E402
from quantization import compare  # noqa: E402

GOLDEN = os.path.join(REPO, "tests", "fixtures", "golden")
GOLDEN_OF = {"3.5": GOLDEN, "2.5": os.path.join(GOLDEN, "vai25")}
SCRIPT = os.path.join(REPO, "vai_q_pytorch_quant.py")

# One calibration of an FFN(64) on random rows, timed inside the process: the quantizer's
# own work, without Python's and torch's start-up. Prints the seconds.
SCALE_DRIVER = r'''
import os, sys, tempfile, time
sys.path.insert(0, {repo!r})
import flow; flow.start_stage("__main__")
import torch
from model import FFN
if {real}:
    from pytorch_nndct.apis import torch_quantizer
else:
    from vaiq import torch_quantizer
torch.set_num_threads(1)
torch.manual_seed(0)
model = FFN(64).eval()
x = torch.randn({rows}, 64, generator=torch.Generator().manual_seed(0))
out = tempfile.mkdtemp()
start = time.perf_counter()
quantizer = torch_quantizer("calib", model, (x[:64],), output_dir=out, device=torch.device("cpu"))
with torch.no_grad():
    for first in range(0, {rows}, 64):
        quantizer.quant_model(x[first:first + 64])
quantizer.export_quant_config()
print("SECONDS", time.perf_counter() - start)
'''


def parse_args():
    parser = ArgumentParser(description="The built-in quantizer against the real vai_q_pytorch, release by release.")
    parser.add_argument("--real35", metavar="PYTHON", help="command of a Python with pytorch_nndct 3.5 (default: none)")
    parser.add_argument("--real25", metavar="PYTHON", help="command of a Python with pytorch_nndct 2.5 (default: none)")
    parser.add_argument("--random", type=positive_int, default=8, help="random FFNs per release (default: 8)")
    parser.add_argument("--scale_rows", type=positive_int, default=100000,
                        help="rows of the FFN(64) calibration timed in both (default: 100000)")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="timed calibrations per quantizer, taking turns; the fastest counts (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random FFNs (default: 0)")
    args = parser.parse_args()
    if not (args.real35 or args.real25):
        parser.error("give --real35 and/or --real25: a Python with pytorch_nndct (inside the docker: python)")
    return args


def run(command, cwd):
    result = subprocess.run(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True)
    if result.returncode != 0:
        raise InputError("{} (in {}) ended with exit code {}:\n{}".format(
            " ".join(command), cwd, result.returncode, result.stdout[-3000:]))
    return result.stdout


def golden_case_args(folder):
    with open(os.path.join(folder, "case.json")) as f:
        info = json.load(f)
    words = ["--data_dir", folder, "--calib_data", info["calib_data"], "--checkpoint_dir", folder,
             "--model_name", info["model_name"], "--input_size", str(info["input_size"]),
             "--batch_size", str(info["batch_size"])]
    if info["subset_len"] is not None:
        words += ["--subset_len", str(info["subset_len"])]
    return words + info["nndct_options"], info.get("deploy_batch", 1)


def random_case(work, rng):
    """A random FFN checkpoint and rows in `work`: (flags, deploy batch)."""
    import torch
    from model import FFN
    input_size = int(rng.integers(1, 7))
    torch.manual_seed(int(rng.integers(1 << 30)))
    model = FFN(input_size)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(float(rng.choice([0.25, 1.0, 4.0])))
    rows = int(rng.integers(64, 600))
    data = np.hstack([rng.normal(0, float(rng.choice([0.5, 2.0, 8.0])), (rows, input_size)),
                      rng.normal(0, 1, (rows, 1))])
    os.makedirs(os.path.join(work, "data"))
    np.save(os.path.join(work, "data", "calib.npy"), data)
    torch.save(model.state_dict(), os.path.join(work, "model.pth"))
    flags = ["--data_dir", "data", "--calib_data", "calib.npy", "--model_name", "model.pth", "--checkpoint_dir", ".",
             "--input_size", str(input_size), "--batch_size", str(int(rng.choice([16, 50, 64, 128])))]
    if rng.random() < 0.3:
        flags += ["--nndct_param_corr", "False"]
    return flags, int(rng.choice([1, 4]))


def differ(real, builtin):
    found = compare.differences(builtin, real)
    a, b = np.load(builtin + "_outputs.npy"), np.load(real + "_outputs.npy")
    if a.tobytes() != b.tobytes():
        found.append("test outputs: {} of {} rows differ".format(int((a != b).any(axis=1).sum()), len(a)))
    return found


def differential(release, python, args, scratch):
    """(cases compared, [failures])."""
    cases, failures = [], []
    golden_root = GOLDEN_OF[release]
    for name in sorted(os.listdir(golden_root)):
        folder = os.path.join(golden_root, name)
        if os.path.isfile(os.path.join(folder, "case.json")):
            flags, batch = golden_case_args(folder)
            cases.append((name, flags, batch, os.path.join(folder, "expected")))
    rng = np.random.default_rng(args.seed)
    for k in range(args.random):
        work = os.path.join(scratch, "random{}".format(k))
        flags, batch = random_case(work, rng)
        cases.append(("random{}".format(k), flags, batch, None))
    for name, flags, batch, expected in cases:
        work = os.path.join(scratch, name)
        os.makedirs(work, exist_ok=True)
        real = quantize(python, work, flags, batch, release, True)
        builtin = quantize([sys.executable], work, flags, batch, release, False)
        found = ["built-in: " + text for text in differ(real, builtin)]
        if expected:
            golden = compare.differences(real, os.path.join(expected, "quantize_result"))
            outputs = np.load(real + "_outputs.npy").tobytes() == np.load(os.path.join(expected, "test_outputs.npy")).tobytes()
            found += ["real vs golden: " + text for text in golden] + ([] if outputs else ["real vs golden: test outputs differ"])
        print("  {:<28} {}".format(name, "equal" if not found else "; ".join(found)))
        failures += ["{} {}: {}".format(release, name, text) for text in found]
    return len(cases), failures


def quantize(python, work, flags, batch, release, real):
    """calib, test (outputs saved) and deploy at `batch` of one case in `work` with the real
    quantizer or the built-in as `release`; returns the result folder."""
    backend = ["--backend", "nndct"] if real else ["--backend", "builtin", "--vai_release", release]
    result = os.path.join(work, "real" if real else "builtin")
    common = flags + backend + ["--output_dir", result]
    run(python + [SCRIPT] + common + ["--quant_mode", "calib"], work)
    run(python + [SCRIPT] + common + ["--quant_mode", "test", "--save_outputs", result + "_outputs.npy"], work)
    run(python + [SCRIPT] + common + ["--quant_mode", "test", "--deploy", "--deploy_batch", str(batch)], work)
    return result


def stages(release, python, scratch):
    """The committed data and checkpoint through calib, test --evaluate and deploy with --backend nndct."""
    work = os.path.join(scratch, "stages")
    for folder in ("data", "checkpoints"):
        shutil.copytree(os.path.join(REPO, folder), os.path.join(work, folder))
    lines = []
    for mode in (["--quant_mode", "calib"], ["--quant_mode", "test", "--evaluate"], ["--quant_mode", "test", "--deploy"]):
        out = run(python + [SCRIPT, "--backend", "nndct", "--batch_size", "64"] + mode, work)
        lines += [line for line in out.splitlines() if line.startswith(("calib (", "test (", "   mse"))]
    return lines


def fast_finetune(release, python, scratch):
    """calib --fast_finetune and test --fast_finetune on the committed data and checkpoint
    with the real quantizer and the built-in as `release`: (line, [failures])."""
    work = os.path.join(scratch, "stages")
    mse, outputs = {}, {}
    for name, command, backend in (("real", python, ["--backend", "nndct"]),
                                   ("built-in", [sys.executable], ["--backend", "builtin", "--vai_release", release])):
        common = [SCRIPT, "--batch_size", "64", "--fast_finetune", "--output_dir", "ft_" + name] + backend
        run(command + common + ["--quant_mode", "calib"], work)
        out = run(command + common + ["--quant_mode", "test", "--evaluate", "--save_outputs", name + "_ft.npy"], work)
        mse[name] = [line.split()[-1] for line in out.splitlines() if line.startswith("   mse")][0]
        outputs[name] = np.load(os.path.join(work, name + "_ft.npy")).tobytes()
    same = outputs["real"] == outputs["built-in"]
    line = "fast finetune: int8 mse real {}, built-in {}: test outputs {}".format(
        mse["real"], mse["built-in"], "equal" if same else "differ")
    return line, [] if same else ["{} fast finetune: test outputs differ".format(release)]


def scale(python, rows, rounds):
    """Fastest seconds of the FFN(64) calibration in `python` (real) and in this one (built-in)."""
    times = {"real": [], "built-in": []}
    for _ in range(rounds):
        for name, command, real in (("real", python, True), ("built-in", [sys.executable], False)):
            out = run(command + ["-c", SCALE_DRIVER.format(repo=REPO, real=real, rows=rows)], REPO)
            times[name].append(float(out.split("SECONDS")[-1].split()[0]))
    return {name: min(values) for name, values in times.items()}


def main():
    args = parse_args()
    failures = []
    for release, command in (("3.5", args.real35), ("2.5", args.real25)):
        if not command:
            continue
        python = shlex.split(command)
        version = run(python + ["-c", "import pytorch_nndct; print('VERSION', getattr(pytorch_nndct, '__version__', '?'))"],
                      REPO).split("VERSION")[-1].split()[0]
        print("release {}: pytorch_nndct {} ({})".format(release, version, command))
        scratch = tempfile.mkdtemp(prefix="real-quantizer-{}-".format(release))
        try:
            for line in stages(release, python, scratch):
                print("  stages: " + line)
            line, found = fast_finetune(release, python, scratch)
            print("  " + line)
            failures += found
            count, found = differential(release, python, args, scratch)
            print("  differential: {} cases, {} differ".format(count, len(set(f.split(":")[0] for f in found))))
            failures += found
            seconds = scale(python, args.scale_rows, args.rounds)
            print("  calibration of {} rows of FFN(64), pinned: real {:.2f} s, built-in {:.2f} s: {:.2f}x".format(
                args.scale_rows, seconds["real"], seconds["built-in"], seconds["built-in"] / seconds["real"]))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    for failure in failures:
        print("DIFFERS: " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    cli(main)
