"""Wall time of each stage, and of a plain PyTorch loop beside the Catalyst training.

  python tools/benchmark.py      # 10000 rows, 32 epochs, batch 64, lr 1e-1: the Makefile's recipe

Everything is written to a temporary folder (or --work_dir); the repository's
data/, checkpoints/ and logs/ are not touched. The plain loop trains the same
model on the same batches with the same optimiser, validation and best-epoch
selection, so the ratio of the two times is Catalyst's overhead. The
quantizer rows time the built-in quantizer's own work (building it on the
model, the forwards, the export) apart from the whole command, whose rest is
start-up: Python, torch and the project's imports, and loading the model.

Start-up: every stage that does not train, on a few rows, beside a bare
`python -c "import torch"`, the commands taking turns for --rounds rounds (the
fastest of each counts, so that another process's load shifts all alike); the
goal is at most 1.3x. Threads: a calibration (FFN(64), --thread_rows rows) and a
few epochs of the plain training loop on one thread and on one per core, on the
machine as it is and while one busy process runs beside them: the reason for
set_seed.THREADS.

Pinned kernels: what pinning torch's CPU kernels (flow/kernels.py) costs, stage by
stage. Each stage runs as a subprocess with the pins and with NATIVE_KERNELS=1, the two
taking turns for --pin_rounds rounds (the fastest of each counts; ratios, not absolute
times, since the machine may be shared), each setting in a folder of its own; the
stages are the Makefile's (training for --pin_epochs epochs), and the calibration work
of the built-in quantizer on --pin_rows random rows of an FFN(64)
(tools/calib_timing.py), whose goal is at most 1.25x. With --real_python PATH, a Python
where the real vai_q_pytorch (pytorch_nndct) is installed, the same calibration runs
with the real quantizer too, both pinned, taking turns: the built-in's time against
the real one's (the goal: at most 0.35x). --pinning_only runs only this part.
"""
import argparse
import collections
import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)   # a tool of the repository: its packages and shared modules

from flow import kernels, start_stage

start_stage(__name__)   # first: kernels pinned and Ctrl-C handled before torch is imported

from flow.checked_io import ArgumentParser, positive_float, positive_int, seed  # noqa: E402


def non_negative_int(text):
    value = int(text) if text.strip().lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError("must be a whole number, 0 or more, got {!r}".format(text))
    return value


def parse_args():
    """The flags; needs only argparse, so that --help and bad flags answer before torch is imported."""
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_samples", type=positive_int, default=10000, help="rows of the generated data")
    parser.add_argument("--input_size", type=positive_int, default=2, help="features per row and the FFN's inputs")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="rows per batch, training and quantizer")
    parser.add_argument("--lr", type=positive_float, default=1e-1, help="learning rate of the training")
    parser.add_argument("--n_epochs", type=positive_int, default=32, help="epochs of the two trainings")
    parser.add_argument("--seed", type=seed, default=42, help="seed of the data, the weights and the shuffling")
    parser.add_argument("--work_dir", help="keep the outputs here (default: a temporary folder, removed at the end)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds of the start-up commands")
    parser.add_argument("--thread_rows", type=positive_int, default=20000, help="rows of the thread measurement")
    parser.add_argument("--thread_epochs", type=positive_int, default=4, help="epochs of the thread measurement")
    parser.add_argument("--pin_rounds", type=non_negative_int, default=3,
                        help="rounds of the pinned-against-native measurement, each stage a subprocess (0: not measured)")
    parser.add_argument("--pin_epochs", type=positive_int, default=4,
                        help="training epochs of the pinned-against-native measurement")
    parser.add_argument("--pin_rows", type=positive_int, default=100000,
                        help="random rows of the FFN(64) calibration timed pinned and native (and against the real "
                             "quantizer)")
    parser.add_argument("--real_python", metavar="PATH",
                        help="a Python in which pytorch_nndct (the real vai_q_pytorch) imports: time the same "
                             "calibration with it, both pinned, taking turns (default: none; where it does not "
                             "import, a note says so)")
    parser.add_argument("--pinning_only", action="store_true",
                        help="measure only what the pinned kernels cost (and --real_python's calibration)")
    return parser.parse_args()


if __name__ == "__main__":
    parse_args()

import torch

from flow.checked_io import cli, torch_save  # noqa: E402
from losses import MSE
from model import FFN
from preprocessors import make_dataloader
from runner import evaluate, train
from set_seed import DEVICE, THREADS, set_seed
from vaiq.quantizer import torch_quantizer

MAX_OVERHEAD = 2.0  # Catalyst training time / plain loop time that is still acceptable
MAX_STARTUP = 1.3   # a stage's start-up / a bare `import torch` that is still acceptable
MAX_PINNED = 1.25   # the built-in's calibration work, pinned / native kernels: the goal
MAX_VS_REAL = 0.35  # the built-in's calibration work / the real quantizer's, both pinned: the goal

Row = collections.namedtuple("Row", ["stage", "seconds", "note"])


def timed(rows, stage, fn, *args):
    """Run fn(*args), append its wall time to `rows`; fn returns (result, note)."""
    start = time.perf_counter()
    result, note = fn(*args)
    rows.append(Row(stage, time.perf_counter() - start, note))
    return result


def print_table(rows):
    width = max(len(row.stage) for row in rows)
    print("{:<{w}}  {:>8}  {}".format("stage", "seconds", "note", w=width))
    for row in rows:
        print("{:<{w}}  {:>8.3f}  {}".format(row.stage, row.seconds, row.note, w=width))


# ---------------------------------------------------------------- stages

def stage_generate_data(args, data_dir):
    subprocess.run([sys.executable, os.path.join(REPO, "generate_data.py"), "--n_samples", str(args.n_samples),
                    "--input_size", str(args.input_size), "--seed", str(args.seed), "--output_dir", data_dir],
                   check=True, stdout=subprocess.DEVNULL)
    return data_dir, "python generate_data.py --n_samples {} (start-up included)".format(args.n_samples)


def loaders(args, data_dir):
    return [make_dataloader(data_dir, name + ".npy", name == "train", args.batch_size,
                            input_size=args.input_size, seed=args.seed) for name in ("train", "valid")]


def stage_train_catalyst(args, data_dir, log_dir):
    set_seed(args.seed)
    model = FFN(args.input_size).to(DEVICE)
    train_loader, valid_loader = loaders(args, data_dir)
    # The console lines are produced (their cost is part of the stage) but not shown,
    # so that the table stays readable; not on a terminal, there are no progress bars.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        best = train(model, train_loader, valid_loader, args.lr, args.n_epochs, args.seed, log_dir)
    return best, "best epoch {}, valid mse {:.3g}".format(best.epoch, best.valid_loss)


def stage_train_plain(args, data_dir):
    """The same training without Catalyst: the reference for its overhead."""
    set_seed(args.seed)
    model = FFN(args.input_size).to(DEVICE)
    train_loader, valid_loader = loaders(args, data_dir)
    optimizer = kernels.adam(model.parameters(), lr=args.lr)
    criterion = MSE()
    best_loss, best_epoch, best_state = float("inf"), 0, None
    for epoch in range(1, args.n_epochs + 1):
        model.train()
        for batch in train_loader:
            loss = criterion(model(batch["features"]), batch["targets"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        valid_loss = evaluate(model, valid_loader)["mse"]
        if valid_loss < best_loss:
            best_loss, best_epoch, best_state = valid_loss, epoch, copy.deepcopy(model.state_dict())
    return best_state, "best epoch {}, valid mse {:.3g}".format(best_epoch, best_loss)


def stage_evaluate(args, data_dir, state_dict):
    model = FFN(args.input_size).to(DEVICE)
    model.load_state_dict(state_dict)
    loader = make_dataloader(data_dir, "test.npy", False, args.batch_size, input_size=args.input_size)
    metrics = evaluate(model, loader)
    return metrics, "test mse {:.3g}, r^2 {:.6f}".format(metrics["mse"], metrics["r^2"])


def stage_quantizer(mode, model, data_dir, batch_size, output_dir):
    """The quantizer's own work in one mode: build it on the model, run every batch,
    export (calib); what a script spends beyond its start-up (imports excluded)."""
    loader = make_dataloader(data_dir, "test.npy", False, batch_size, input_size=model.l1.in_features)
    quantizer = torch_quantizer(mode, model, (torch.randn(batch_size, model.l1.in_features),),
                                output_dir=output_dir)
    with torch.no_grad():
        for batch in loader:
            quantizer.quant_model(batch["features"])
    if mode == "calib":
        quantizer.export_quant_config()
    return None, "{} rows in batches of {}".format(len(loader.dataset), batch_size)


def stage_command(mode, work_dir, batch_size, input_size):
    """The whole vai_q_pytorch_quant.py command, start-up included."""
    command = [sys.executable, os.path.join(REPO, "vai_q_pytorch_quant.py"),
               "--quant_mode", mode, "--batch_size", str(batch_size), "--input_size", str(input_size),
               "--backend", "builtin",
               "--output_dir", os.path.join(work_dir, "quantize_result_cli")]
    subprocess.run(command, cwd=work_dir, check=True, stdout=subprocess.DEVNULL)
    return None, "python vai_q_pytorch_quant.py --quant_mode {}".format(mode)


def startup_commands(work_dir, input_size):
    """(name, command) of every stage that does not train, each on a few rows, after
    `import torch` alone; run in work_dir, whose data/ and checkpoints/ the stages wrote."""
    here = REPO
    quant = [os.path.join(here, "vai_q_pytorch_quant.py"), "--subset_len", "10", "--batch_size", "10",
             "--input_size", str(input_size), "--backend", "builtin", "--output_dir", "startup_q"]
    return [
        ("import torch", ["-c", "import torch"]),
        ("generate_data.py", [os.path.join(here, "generate_data.py"), "--n_samples", "20", "--output_dir",
                              "startup_data", "--input_size", str(input_size)]),
        ("run.py --evaluate", [os.path.join(here, "run.py"), "--evaluate", "--input_size", str(input_size),
                               "--model_name", os.path.join("checkpoints", "ffn_state_dict.pth"), "--eval_data",
                               "valid.npy"]),
        ("quant float", quant + ["--quant_mode", "float"]),
        ("quant calib", quant + ["--quant_mode", "calib"]),
        ("quant test", quant + ["--quant_mode", "test", "--evaluate"]),
        ("quant deploy", quant + ["--quant_mode", "test", "--deploy"]),
        ("simulate.py", [os.path.join(here, "simulate.py"), os.path.join("startup_q", "FFN_int.xmodel"), "--data",
                         os.path.join("data", "valid.npy")]),
    ]


def measure_startup(work_dir, input_size, rounds):
    """{name: fastest wall time} of the start-up commands, taking turns round by round."""
    times = collections.defaultdict(list)
    for _ in range(rounds):
        for name, command in startup_commands(work_dir, input_size):
            start = time.perf_counter()
            subprocess.run([sys.executable] + command, cwd=work_dir, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def print_startup(times, rounds):
    torch_time = times["import torch"]
    print("start-up, fastest of {} rounds taking turns (goal: at most {:.1f}x a bare import torch):".format(
        rounds, MAX_STARTUP))
    for name, seconds in times.items():
        ratio = seconds / torch_time
        verdict = "" if name == "import torch" else ("ok" if ratio <= MAX_STARTUP else "over")
        print("  {:<18} {:>7.3f} s  {:>5.2f}x  {}".format(name, seconds, ratio, verdict))


def calibrate_random_ffn(rows, input_size=64, batch_size=64, seed=0):
    """The quantizer's calibration of an untrained FFN(input_size) on random rows:
    a bigger, still tiny, version of this project's work."""
    generator = torch.Generator().manual_seed(seed)
    model = FFN(input_size).eval()
    x = torch.randn(rows, input_size, generator=generator)
    with tempfile.TemporaryDirectory() as output_dir:
        quantizer = torch_quantizer("calib", model, (x[:batch_size],), output_dir=output_dir)
        with torch.no_grad():
            for first in range(0, rows, batch_size):
                quantizer.quant_model(x[first:first + batch_size])
        quantizer.export_quant_config()


@contextlib.contextmanager
def busy_process():
    """Another process keeping one core busy while the block runs."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)   # running before the measurement starts
        yield
    finally:
        proc.kill()
        proc.wait()


def measure_threads(args, data_dir):
    """[(threads, machine, calibration seconds, training seconds)] for 1 thread and one
    per core, on the machine as it is ('as is') and beside a busy process ('loaded')."""
    counts = sorted({1, os.cpu_count() or 1})
    epochs = argparse_namespace(args, n_epochs=args.thread_epochs)
    results = []
    for machine in ("as is", "loaded"):
        with busy_process() if machine == "loaded" else contextlib.nullcontext():
            for threads in counts:
                torch.set_num_threads(threads)
                try:
                    start = time.perf_counter()
                    calibrate_random_ffn(args.thread_rows)
                    calib = time.perf_counter() - start
                    start = time.perf_counter()
                    stage_train_plain(epochs, data_dir)
                    results.append((threads, machine, calib, time.perf_counter() - start))
                finally:
                    torch.set_num_threads(THREADS)
    return results


def argparse_namespace(args, **changes):
    new = copy.copy(args)
    for key, value in changes.items():
        setattr(new, key, value)
    return new


def print_threads(results, rows, epochs):
    print("torch threads: calibration of FFN(64) on {} rows, plain training of {} epochs "
          "(set_seed.THREADS = {}):".format(rows, epochs, THREADS))
    print("  {:>7}  {:<7} {:>10} {:>10}".format("threads", "machine", "calib s", "train s"))
    for threads, machine, calib, train_seconds in results:
        print("  {:>7}  {:<7} {:>10.3f} {:>10.3f}".format(threads, machine, calib, train_seconds))
    for machine in ("as is", "loaded"):
        rows_of = {threads: (calib, t) for threads, m, calib, t in results if m == machine}
        if len(rows_of) > 1:
            one, most = rows_of[min(rows_of)], rows_of[max(rows_of)]
            print("  {}: {} threads take {:.1f}x (calib) and {:.1f}x (train) the time of 1".format(
                machine, max(rows_of), most[0] / one[0], most[1] / one[1]))


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- pinned vs native kernels

CALIB_TIMING = os.path.join(REPO, "tools", "calib_timing.py")


def kernel_env(native):
    """The environment of a subprocess with the pins (flow/kernels.py) or with NATIVE_KERNELS=1
    (torch's own kernels), whatever this process was started with."""
    env = dict(os.environ)
    for name, value in kernels.PINS:
        if native:
            env.pop(name, None)
        else:
            env[name] = value
    if native:
        env[kernels.OPT_OUT] = "1"
    else:
        env.pop(kernels.OPT_OUT, None)
    return env


def pinning_stages(args):
    """[(name, arguments after the Python)] of the Makefile's stages (but hls and report), in
    the order they need each other's files, each run where a kernel setting has its folder."""
    size, batch = str(args.input_size), str(args.batch_size)
    quant = [os.path.join(REPO, "vai_q_pytorch_quant.py"), "--data_dir", "data", "--batch_size", batch,
             "--input_size", size, "--backend", "builtin", "--output_dir", "quantize_result"]
    return [
        ("generate_data", [os.path.join(REPO, "generate_data.py"), "--n_samples", str(args.n_samples),
                           "--input_size", size, "--seed", str(args.seed), "--output_dir", "data"]),
        ("train ({} epoch{})".format(args.pin_epochs, "" if args.pin_epochs == 1 else "s"),
         [os.path.join(REPO, "run.py"), "--data_dir", "data", "--lr", str(args.lr), "--n_epochs",
          str(args.pin_epochs), "--batch_size", batch, "--train", "--input_size", size, "--seed", str(args.seed),
          "--checkpoint_dir", "checkpoints", "--log_dir", "logs"]),
        ("evaluate", [os.path.join(REPO, "run.py"), "--data_dir", "data", "--evaluate", "--input_size", size,
                      "--model_name", os.path.join("checkpoints", "ffn_state_dict.pth")]),
        ("quant calib", quant + ["--quant_mode", "calib"]),
        ("quant test", quant + ["--quant_mode", "test", "--evaluate"]),
        ("quant deploy", quant + ["--quant_mode", "test", "--deploy", "--deploy_batch", "4"]),
        ("simulate", [os.path.join(REPO, "simulate.py"), os.path.join("quantize_result", "FFN_int.xmodel"),
                      "--data", os.path.join("data", "test.npy"), "--check",
                      os.path.join("quantize_result", "deploy_check_data_int")]),
    ]


def calib_timing_command(python, rows, backend, result):
    return [python, CALIB_TIMING, "--rows", str(rows), "--backend", backend, "--result", result]


def run_timed(command, cwd, env, result=None):
    """Wall time of a subprocess, or the time it wrote to `result` (tools/calib_timing.py);
    its output is dropped, a failure ends the benchmark with the command's stderr."""
    start = time.perf_counter()
    run = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         universal_newlines=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError("{} (exit code {}):\n{}".format(" ".join(command), run.returncode, run.stderr[-2000:]))
    if result is None:
        return seconds
    with open(result) as f:
        return json.load(f)["seconds"]


def measure_pinning(args, work_dir):
    """{stage: (fastest pinned seconds, fastest native seconds)}: every stage with the pins
    and with NATIVE_KERNELS=1, taking turns (who goes first alternates by round)."""
    stages = pinning_stages(args)
    calib_name = "calib work, FFN(64), {} rows".format(args.pin_rows)
    dirs = {}
    for native in (False, True):
        dirs[native] = os.path.join(work_dir, "kernels_native" if native else "kernels_pinned")
        os.makedirs(dirs[native], exist_ok=True)
    times = collections.OrderedDict((name, ([], [])) for name, _ in stages + [(calib_name, None)])
    for round_ in range(args.pin_rounds):
        for name, command in stages + [(calib_name, None)]:
            for native in ((False, True) if round_ % 2 == 0 else (True, False)):
                if command is None:
                    result = os.path.join(dirs[native], "calib_timing.json")
                    seconds = run_timed(calib_timing_command(sys.executable, args.pin_rows, "builtin", result),
                                        dirs[native], kernel_env(native), result)
                else:
                    seconds = run_timed([sys.executable] + command, dirs[native], kernel_env(native))
                times[name][native].append(seconds)
    return collections.OrderedDict((name, (min(p), min(n))) for name, (p, n) in times.items()), calib_name


def rounds_text(rounds):
    return "{} round{}".format(rounds, "" if rounds == 1 else "s")


def print_pinning(times, calib_name, rounds):
    print("pinned kernels (flow/kernels.py) against NATIVE_KERNELS=1, each stage a subprocess, fastest of {} "
          "taking turns (the whole command, start-up included; the calibration work without it):".format(
              rounds_text(rounds)))
    width = max(len(name) for name in times)
    print("  {:<{w}}  {:>9}  {:>9}  {:>6}".format("stage", "pinned s", "native s", "ratio", w=width))
    for name, (pinned, native) in times.items():
        print("  {:<{w}}  {:>9.3f}  {:>9.3f}  {:>5.2f}x".format(name, pinned, native, pinned / native, w=width))
    pinned, native = times[calib_name]
    ratio = pinned / native
    print("{}: pinned {:.2f}x native (goal: at most {:.2f}x, {})".format(
        calib_name, ratio, MAX_PINNED, "ok" if ratio <= MAX_PINNED else "over"))


def real_quantizer_problem(python):
    """None when `python` runs and imports pytorch_nndct; else what is missing, in words."""
    found = shutil.which(python)
    if found is None or not os.path.isfile(found):
        return "{}: no such Python".format(python)
    try:
        run = subprocess.run([found, "-c", "import pytorch_nndct"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, universal_newlines=True, timeout=600,
                             env=kernel_env(native=False))
    except (OSError, subprocess.TimeoutExpired) as e:
        return "{}: {}".format(python, e)
    if run.returncode != 0:
        lines = run.stderr.strip().splitlines()
        return "{}: pytorch_nndct does not import ({})".format(python, lines[-1] if lines else run.returncode)
    return None


def measure_against_real(args, work_dir):
    """(fastest built-in seconds, fastest real seconds) of the calibration work, both pinned,
    taking turns; or the reason why the real quantizer was not timed (it is not there, or failed)."""
    problem = real_quantizer_problem(args.real_python)
    if problem:
        return problem
    folder = os.path.join(work_dir, "kernels_real")
    os.makedirs(folder, exist_ok=True)
    times = {"builtin": [], "nndct": []}
    try:
        for round_ in range(args.pin_rounds):
            for backend in (("builtin", "nndct") if round_ % 2 == 0 else ("nndct", "builtin")):
                python = shutil.which(args.real_python) if backend == "nndct" else sys.executable
                result = os.path.join(folder, backend + ".json")
                times[backend].append(run_timed(calib_timing_command(python, args.pin_rows, backend, result),
                                                folder, kernel_env(native=False), result))
    except (OSError, RuntimeError, ValueError, KeyError) as e:   # ValueError, KeyError: no time in its result
        return "it failed: {}".format(" ".join(str(e).split())[:1000])
    return min(times["builtin"]), min(times["nndct"])


def print_against_real(times, args):
    if not isinstance(times, tuple):
        print("real quantizer: not timed: {}".format(times))
        return
    builtin, real = times
    ratio = builtin / real
    print("calib work, FFN(64), {} rows, both pinned, fastest of {} taking turns: built-in {:.3f} s, "
          "real vai_q_pytorch ({}) {:.3f} s: the built-in takes {:.2f}x the real one's time (goal: at most "
          "{:.2f}x, {})".format(args.pin_rows, rounds_text(args.pin_rounds), builtin, args.real_python, real, ratio,
                                MAX_VS_REAL, "ok" if ratio <= MAX_VS_REAL else "over"))


# ---------------------------------------------------------------- main

def main():
    args = parse_args()

    # The first set_seed imports part of torch (deterministic-algorithm checks);
    # done here so that its one-off second is charged to neither training.
    set_seed(args.seed)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="benchmark-")
    rows, startup, threads, pinning, real = [], None, None, None, None
    try:
        if not args.pinning_only:
            data_dir = os.path.join(work_dir, "data")
            timed(rows, "generate_data", stage_generate_data, args, data_dir)
            best = timed(rows, "train, Catalyst", stage_train_catalyst, args, data_dir,
                         os.path.join(work_dir, "logs"))
            plain_state = timed(rows, "train, plain PyTorch", stage_train_plain, args, data_dir)
            timed(rows, "evaluate", stage_evaluate, args, data_dir, best.state_dict)
            model = FFN(args.input_size)
            model.load_state_dict(best.state_dict)
            torch_save(best.state_dict, os.path.join(work_dir, "checkpoints", "ffn_state_dict.pth"))
            for mode in ("calib", "test"):
                timed(rows, mode + ", quantizer's work", stage_quantizer, mode, model, data_dir, args.batch_size,
                      os.path.join(work_dir, "quantize_result"))
                timed(rows, mode + ", whole command", stage_command, mode, work_dir, args.batch_size,
                      args.input_size)
            startup = measure_startup(work_dir, args.input_size, args.rounds)
            threads = measure_threads(args, data_dir)
        if args.pin_rounds:
            pinning = measure_pinning(args, work_dir)
            if args.real_python:
                real = measure_against_real(args, work_dir)
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)

    if not args.pinning_only:
        print_table(rows)
        times = {row.stage: row.seconds for row in rows}
        ratio = times["train, Catalyst"] / times["train, plain PyTorch"]
        print("Catalyst overhead: {:.2f}x the plain loop ({}, limit {:.1f}x); same best weights: {}".format(
            ratio, "ok" if ratio <= MAX_OVERHEAD else "OVER THE LIMIT", MAX_OVERHEAD,
            "yes" if same_weights(best.state_dict, plain_state) else "no"))
        for mode in ("calib", "test"):
            work = times[mode + ", quantizer's work"]
            print("{}: the quantizer's own work {:.3f} s, start-up {:.3f} s".format(
                mode, work, times[mode + ", whole command"] - work))
        print_startup(startup, args.rounds)
        print_threads(threads, args.thread_rows, args.thread_epochs)
    if pinning is not None:
        print_pinning(*pinning, rounds=args.pin_rounds)
    if args.real_python:
        print_against_real(real if args.pin_rounds else "--pin_rounds 0", args)


if __name__ == "__main__":
    cli(main)
