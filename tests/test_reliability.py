"""Reliability of the flow as a whole.

- Interruption: a stage stopped midway by SIGINT or SIGTERM exits with 130 and one
  line, leaves the earlier checkpoints/ and quantize_result/ byte for byte as they
  were and no temporary folder; an interruption inside a write leaves that file as
  it was (atomic writers, and every write of calibration and deploy in turn).
- Idempotency: every stage run again with the same inputs writes the same bytes.
- Damaged files: every reader refuses random bytes, truncated and bit-flipped
  files with an InputError, never another exception (the .xmodel reader is fuzzed
  in test_xmodel.py).
- Stages in the wrong order fail with one line and write nothing (compile.sh in
  test_compile.py).

The stage runs are real commands in temporary workspaces; independent ones run
side by side. The interruptions wait for a condition seen from outside (a log
line, the SIGTERM handler of `checked_io.cli` in /proc, CPU time spent), never
for a fixed time, so a loaded machine only makes them slower.
"""
import contextlib
import copy
import json
import os
import pathlib
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pytest
import torch

from flow import checked_io
import generate_data
from reporting import page as report
import vai_q_pytorch_quant
import vaiq.export
from flow.checked_io import InputError, atomic_path, load_npy, save_npy, torch_save, write_text
from conftest import REPO, assert_clean_error, cpu_seconds, sigterm_handled, snapshot
from model import FFN
from preprocessors import load_from_state_dict
from vaiq.quant_info import read_bias_corr, read_ft_params, read_quant_info
from vaiq.trace import trace_chain
from dpu.xmodel import read_xmodel

GOLDEN = os.path.join(REPO, "tests", "fixtures", "golden", "p1_trained_in2")
GOLDEN_RESULT = os.path.join(GOLDEN, "expected", "quantize_result")
TIMEOUT = 300          # seconds for any one command; a hang fails instead of blocking the run
QUANT = "vai_q_pytorch_quant.py"
BUILTIN = ("--backend", "builtin")
INTERRUPTED = "{}: interrupted; earlier outputs are left as they were"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="signals and /proc of the stage processes")


# ---------------------------------------------------------------- running commands side by side

def _default_sigint():
    # A shell starts background jobs with SIGINT ignored and children inherit it;
    # a user's Ctrl-C reaches a script that has the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(script, args, cwd):
    """Start REPO/script in `cwd`; its stdout and stderr go to files, so no pipe fills up."""
    out, err = (tempfile.TemporaryFile() for _ in range(2))   # bytes: errors= is Python 3.8+
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, script)] + [str(a) for a in args],
                            cwd=str(cwd), stdout=out, stderr=err, preexec_fn=_default_sigint)
    proc.files = (out, err)
    return proc


def finish(proc, timeout=TIMEOUT):
    """Wait for a started command (killing it after `timeout`); a CompletedProcess."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    texts = []
    for f in proc.files:
        f.seek(0)
        texts.append(f.read().decode("utf-8", "replace"))
        f.close()
    return subprocess.CompletedProcess(proc.args, proc.returncode, texts[0], texts[1])


def copy_paths(source, target, paths):
    """Copy files or folders `paths` (relative) from `source` into `target`."""
    for path in paths:
        src, dst = os.path.join(str(source), path), os.path.join(str(target), path)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)


def temporaries(folder):
    """Names starting with .tmp- (atomic_path's private folders) anywhere under `folder`."""
    return [os.path.join(root, name) for root, dirs, files in os.walk(str(folder))
            for name in dirs + files if name.startswith(".tmp-")]


def assert_outputs_load(work, result_finetuned=False):
    """The checkpoint and both quantizer folders of a flow workspace read with the project's readers."""
    chain = trace_chain(FFN(2))
    load_from_state_dict(FFN(2), str(work / "checkpoints" / "ffn_state_dict.pth"))
    for folder, finetuned in (("quantize_result", result_finetuned), ("quantize_ft", True)):
        out = str(work / folder)
        positions, bias_corrected, fast_finetuned = read_quant_info(out, chain)
        assert (bias_corrected, fast_finetuned) == (True, finetuned)
        assert sorted(read_bias_corr(out, chain)) == [layer.node for layer in chain.layers]
        if finetuned:
            assert sorted(read_ft_params(out, chain)) == ["l1", "l2", "l3"]
    assert read_xmodel(str(work / "quantize_result" / "FFN_int.xmodel")).input_size == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # torch.jit is deprecated, still the format
        script = torch.jit.load(str(work / "quantize_result" / "FFN_int.pt"))
    assert script(torch.zeros(1, 2)).shape == (1, 1)


# ---------------------------------------------------------------- the flow, twice

# Every stage of the flow on small data, in a fresh workspace and, side by side,
# in one holding an earlier run's outputs of other inputs.
CHAIN = [
    ("generate_data", "generate_data.py", ("--n_samples", 1000, "--output_dir", "data", "--seed", 42)),
    ("train", "run.py", ("--train", "--n_epochs", 2, "--batch_size", 64, "--lr", 1e-2)),
    ("calib", QUANT, ("--quant_mode", "calib", "--batch_size", 64) + BUILTIN),
    ("fast_finetune", QUANT, ("--quant_mode", "calib", "--fast_finetune", "--batch_size", 64,
                              "--output_dir", "quantize_ft") + BUILTIN),
    ("deploy", QUANT, ("--quant_mode", "test", "--deploy", "--batch_size", 64) + BUILTIN),
    ("report", "report.py", ()),
]

# What each stage writes. None of these files embeds a random id or a time stamp:
# FFN_int.pt (TorchScript) is a zip whose entries are all dated 1980 and whose
# .data/serialization_id is a hash of its records, as in every torch.save file;
# its debug info holds the absolute paths of vaiq/export.py and of the torch
# sources (not the workspace), so its bytes are the same for one checkout and
# venv. The PNGs carry no software version or date (reporting/page.py: PNG_METADATA).
DEPLOY_CHECK = "quantize_result/deploy_check_data_int/FFN/"
OUTPUTS = {
    "generate_data": ["data/test.npy", "data/train.npy", "data/valid.npy"],
    "train": ["checkpoints/ffn_state_dict.pth", "logs/hparams.json", "logs/train.csv", "logs/valid.csv"],
    "calib": ["quantize_result/bias_corr.pth", "quantize_result/calibration.json", "quantize_result/quant_info.json"],
    "fast_finetune": ["quantize_ft/bias_corr.pth", "quantize_ft/calibration.json", "quantize_ft/param.pth",
                      "quantize_ft/quant_info.json"],
    "deploy": ["quantize_result/FFN_int.onnx", "quantize_result/FFN_int.pt", "quantize_result/FFN_int.xmodel"]
    + [DEPLOY_CHECK + name for name in os.listdir(os.path.join(GOLDEN_RESULT, "deploy_check_data_int", "FFN"))],
    "report": ["report/README.md", "report/errors.png", "report/loss.png", "report/predictions.png"],
}


def earlier_outputs(work):
    """A workspace holding the outputs of an earlier run on other inputs, and a stale param.pth."""
    copy_paths(REPO, work, ["data", "checkpoints", "logs"])
    shutil.copytree(GOLDEN_RESULT, str(work / "quantize_result"))
    copy_paths(GOLDEN_RESULT, work / "quantize_ft", ["quant_info.json", "bias_corr.pth"])
    torch.save({"l1.weight": torch.ones(6, 2)}, str(work / "quantize_result" / "param.pth"))
    (work / "report").mkdir()
    (work / "report" / "README.md").write_text("# an earlier report\n")


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """(fresh workspace, workspace of earlier outputs) after the whole flow ran in each."""
    root = tmp_path_factory.mktemp("flow")
    first, again = root / "first", root / "again"
    first.mkdir()
    again.mkdir()
    earlier_outputs(again)
    for stage, script, args in CHAIN:
        for result in [finish(proc) for proc in [start(script, args, work) for work in (first, again)]]:
            assert result.returncode == 0, "{}: {}".format(stage, result.stderr[-2000:])
    return first, again


@pytest.mark.parametrize("stage", list(OUTPUTS))
def test_rerun_gives_the_same_bytes(flow, stage):
    first, again = (snapshot(str(work)) for work in flow)
    assert sorted(name for name in OUTPUTS[stage] if name in first) == sorted(OUTPUTS[stage])
    for name in OUTPUTS[stage]:
        assert again.get(name) == first[name], name


def test_rerun_over_earlier_outputs_leaves_no_stale_file(flow):
    written = sorted(name for names in OUTPUTS.values() for name in names)
    for work in flow:
        files = sorted(name for name, data in snapshot(str(work)).items() if data is not None)
        assert files == written, str(work)


# ---------------------------------------------------------------- interruption of real runs

def startup_cpu_seconds(script):
    """CPU seconds a script spends before its main: a --help run ends right after its imports."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, os.path.join(REPO, script), "--help"], stdout=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


class InMain:
    """Ready once main() has run for `cpu` seconds of CPU time: past the imports and the
    setup, into the work."""

    def __init__(self, cpu=0.7):
        self.cpu, self.start = startup_cpu_seconds(QUANT) + cpu, None

    def __call__(self, proc, work):
        if self.start is None:
            if sigterm_handled(proc.pid):
                self.start = cpu_seconds(proc.pid)
            return False
        return cpu_seconds(proc.pid) >= self.start + self.cpu


def first_epoch_logged(proc, work):
    """The training logs into a temporary folder that replaces logs/ when it ends."""
    for path in work.glob(".tmp-*/logs/train.csv"):
        try:
            return len(path.read_text().splitlines()) >= 2
        except OSError:   # the folder went away between glob and read
            return False
    return False


# Each stage runs far longer than the wait for its condition: training for 100000
# epochs, calibration over 50000 rows one at a time (about 3 ms a row), the
# evaluation before the deploy over the same rows.
STAGES = {
    "train": ("run.py", ("--train", "--n_epochs", 100000, "--batch_size", 64),
              lambda: first_epoch_logged),
    "calib": (QUANT, ("--quant_mode", "calib", "--calib_data", "big.npy", "--batch_size", 1) + BUILTIN, InMain),
    "deploy": (QUANT, ("--quant_mode", "test", "--evaluate", "--deploy", "--calib_data", "big.npy",
                       "--batch_size", 1) + BUILTIN, InMain),
}
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}
CASES = [(stage, name) for stage in STAGES for name in SIGNALS]
KEPT = ("checkpoints", "logs", "quantize_result", "quantize_ft")


@pytest.fixture(scope="module")
def interrupted(flow, tmp_path_factory):
    """{(stage, signal): (result, workspace, snapshot of KEPT before)}: every stage started at
    once in its own copy of the flow's workspace and signalled when its condition holds."""
    root = tmp_path_factory.mktemp("interrupted")
    base = root / "base"
    copy_paths(flow[0], base, ["data"] + list(KEPT))
    np.save(str(base / "data" / "big.npy"), generate_data.make_rows(50000, 2, seed=7))
    runs = {}
    for stage, name in CASES:
        work = root / "{}-{}".format(stage, name)
        shutil.copytree(str(base), str(work))
        script, args, condition = STAGES[stage]
        runs[stage, name] = (start(script, args, work), work, {k: snapshot(str(work / k)) for k in KEPT},
                             condition())
    pending, signalled, deadline = dict(runs), set(), time.monotonic() + TIMEOUT
    while pending and time.monotonic() < deadline:
        for key, (proc, work, _, ready) in list(pending.items()):
            try:
                if proc.poll() is None and ready(proc, work):
                    proc.send_signal(SIGNALS[key[1]])
                    signalled.add(key)
            except OSError:     # it ended: its /proc entry went away
                pass
            if key in signalled or proc.poll() is not None:
                del pending[key]
        time.sleep(0.05)
    # Those never signalled are killed at once; they fail the tests below.
    return {key: (finish(proc, timeout=60 if key in signalled else 0), work, before, key in signalled)
            for key, (proc, work, before, _) in runs.items()}


def message_lines(stderr):
    """stderr without Catalyst's progress bars (run.py), notes (the deploy evaluates other rows
    than were calibrated) or blank lines."""
    return [line for line in stderr.splitlines() if line.strip() and "* Epoch (" not in line and ": note: " not in line]


@pytest.mark.parametrize("stage, name", CASES)
def test_interrupted_stage_exits_130_with_one_line(interrupted, stage, name):
    result, _, _, signalled = interrupted[stage, name]
    shown = "exit code {}\nstderr:\n{}".format(result.returncode, result.stderr[-3000:])
    assert signalled, "its condition never held\n" + shown
    assert result.returncode == checked_io.EXIT_INTERRUPTED, shown
    assert "Traceback" not in result.stderr, shown
    assert message_lines(result.stderr) == [INTERRUPTED.format(STAGES[stage][0])], shown


@pytest.mark.parametrize("stage, name", CASES)
def test_interrupted_stage_leaves_earlier_outputs(interrupted, stage, name):
    _, work, before, _ = interrupted[stage, name]
    for folder in KEPT:
        assert snapshot(str(work / folder)) == before[folder], folder
    assert temporaries(work) == []
    assert_outputs_load(work)


# ---------------------------------------------------------------- interruption inside a write

def test_interrupt_inside_atomic_path_leaves_the_old_file(tmp_path):
    path = tmp_path / "out" / "quant_info.json"
    write_text(str(path), "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(path)) as tmp:
            with open(tmp, "w") as f:
                f.write("half of the new")
            raise KeyboardInterrupt
    assert path.read_text() == "old"
    assert temporaries(tmp_path) == []


def test_interrupt_inside_atomic_path_leaves_the_old_folder(tmp_path):
    path = tmp_path / "report"
    with atomic_path(str(path)) as tmp:
        os.mkdir(tmp)
        pathlib.Path(tmp, "README.md").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(path)) as tmp:
            os.mkdir(tmp)
            pathlib.Path(tmp, "README.md").write_text("new")
            raise KeyboardInterrupt
    assert os.listdir(str(path)) == ["README.md"] and (path / "README.md").read_text() == "old"
    assert os.listdir(str(tmp_path)) == ["report"]


@pytest.mark.parametrize("save, load", [
    (lambda path: save_npy(path, np.ones((3, 3))), lambda path: load_npy(path).sum()),
    (lambda path: torch_save({"w": torch.ones(9)}, path), lambda path: float(torch.load(path)["w"].sum())),
    (lambda path: write_text(path, "x" * 9), os.path.getsize),
], ids=["save_npy", "torch_save", "write_text"])
def test_interrupt_just_before_the_rename_leaves_the_old_file(tmp_path, monkeypatch, save, load):
    path = str(tmp_path / "file.npy")
    save(path)
    old = open(path, "rb").read()
    assert load(path) == 9

    def interrupted_replace(src, dst):
        assert os.path.getsize(src) > 0   # the new file is complete under its temporary name
        raise KeyboardInterrupt

    monkeypatch.setattr(checked_io.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        save(path)
    monkeypatch.undo()
    assert open(path, "rb").read() == old
    assert os.listdir(str(tmp_path)) == ["file.npy"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError(28, "No space left on device")],
                         ids=["KeyboardInterrupt", "OSError"])
def test_folder_swap_stopped_between_its_two_renames_keeps_the_old_folder(tmp_path, monkeypatch, error):
    path = tmp_path / "deploy_check_data_int"
    path.mkdir()
    (path / "shape.txt").write_text("old")
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:   # the old folder is moved aside, the new one not yet in place
            raise error
        real_rename(src, dst)

    monkeypatch.setattr(checked_io.os, "rename", rename)
    with pytest.raises((KeyboardInterrupt, InputError)):
        with atomic_path(str(path)) as tmp:
            os.mkdir(tmp)
            pathlib.Path(tmp, "shape.txt").write_text("new")
    monkeypatch.undo()
    assert calls[1] == str(path)   # it was stopped when putting the new folder in place
    assert (path / "shape.txt").read_text() == "old"
    assert os.listdir(str(tmp_path)) == ["deploy_check_data_int"]


def interrupt_write(monkeypatch, n):
    """Stop the n-th atomic write of the run with KeyboardInterrupt once its file is
    complete under the temporary name, just before the rename. Returns
    [(target path, what would have been written)] of the writes so far."""
    real, writes = checked_io.atomic_path, []

    @contextlib.contextmanager
    def stopped(path):
        with real(path) as tmp:
            yield tmp
            writes.append((path, current(tmp)))
            if len(writes) == n:
                raise KeyboardInterrupt

    monkeypatch.setattr(checked_io, "atomic_path", stopped)     # write_text, torch_save, write_bytes, ...
    monkeypatch.setattr(vaiq.export, "atomic_path", stopped)    # deploy-check folder, TorchScript, ONNX
    return writes


def current(path):
    if os.path.isdir(path):
        return snapshot(path)
    return open(path, "rb").read() if os.path.exists(path) else None


DEPLOYED = ["FFN_int.xmodel", "deploy_check_data_int", "FFN_int.pt", "FFN_int.onnx"]
# (output folder, arguments, the files written in order). Each run changes every
# file it writes: fast finetune over 20 rows into the default calibration of 200,
# the finetuned deploy into a folder holding the default deploy's files.
WRITES = {
    "calib": ("quantize_result", ("--quant_mode", "calib", "--fast_finetune", "--subset_len", 20),
              ["bias_corr.pth", "param.pth", "quant_info.json", "calibration.json"]),
    "deploy": ("quantize_ft", ("--quant_mode", "test", "--fast_finetune", "--deploy"), DEPLOYED),
}


@pytest.mark.parametrize("stage, n", [(stage, n) for stage in WRITES for n in range(1, len(WRITES[stage][2]) + 1)])
def test_interrupt_inside_each_write_of_a_stage_leaves_that_file(flow, tmp_path, monkeypatch, stage, n):
    work = tmp_path / "work"
    copy_paths(flow[0], work, ["data"] + list(KEPT))
    copy_paths(work / "quantize_result", work / "quantize_ft", DEPLOYED)
    folder, args, names = WRITES[stage]
    out = work / folder
    target = str(out / names[n - 1])
    old = current(target)
    writes = interrupt_write(monkeypatch, n)
    argv = ["--data_dir", str(work / "data"), "--checkpoint_dir", str(work / "checkpoints"),
            "--output_dir", str(out), "--batch_size", "64"] + list(BUILTIN) + [str(a) for a in args]
    monkeypatch.setattr(sys, "argv", [QUANT] + argv)   # the quantizer reads its options there
    with pytest.raises(KeyboardInterrupt):
        vai_q_pytorch_quant.main(argv)
    monkeypatch.undo()
    assert [os.path.basename(path) for path, _ in writes] == names[:n]
    assert writes[-1][1] != old     # the stopped write would have changed the file
    assert current(target) == old
    assert temporaries(work) == []
    # The record is written last, after quant_info.json: stopped there, quant_info.json
    # is already the new (finetuned) one.
    assert_outputs_load(work, result_finetuned=names[n - 1] == "calibration.json")


# ---------------------------------------------------------------- damaged files

@contextlib.contextmanager
def deadline(seconds):
    """Fail instead of hanging when one read takes longer than `seconds`."""
    def too_slow(signum, frame):
        raise AssertionError("a read took more than {} s".format(seconds))

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Fuzz:
    """Writes each variant to `path` and reads it with `read`: "ok", or "error" for an
    InputError that names the file in one line. Any other exception, a warning (a
    second line on a command's stderr) or a read of over 10 s fails the test."""

    def __init__(self, path, read, good):
        self.path, self.read, self.good = str(path), read, good
        self.rng = random.Random(len(good))

    def outcome(self, data):
        with open(self.path, "wb") as f:
            f.write(data)
        with warnings.catch_warnings(record=True) as caught, deadline(10):
            warnings.simplefilter("always")
            try:
                self.read(self.path)
                result = "ok"
            except InputError as e:
                message = str(e)
                assert self.path in message and "\n" not in message, message
                result = "error"
        assert [str(w.message) for w in caught] == []
        return result

    def random_bytes(self, count=100):
        return [self.outcome(bytes(self.rng.getrandbits(8) for _ in range(self.rng.randrange(600))))
                for _ in range(count)]

    def truncated(self, count=600):
        """About `count` cut points spread over the file (every one in a small file)."""
        step = max(1, len(self.good) // count)
        return [self.outcome(self.good[:cut]) for cut in range(0, len(self.good), step)]

    def flipped(self, count=None):
        """Single-bit flips: every bit of the file, or `count` random ones."""
        spots = [(at, bit) for at in range(len(self.good)) for bit in range(8)]
        if count is not None:
            spots = self.rng.sample(spots, count)
        results = []
        for at, bit in spots:
            data = bytearray(self.good)
            data[at] ^= 1 << bit
            results.append(self.outcome(bytes(data)))
        return results


def fuzz_file(tmp_path, name, read, good, flips=600, truncated_ok=False):
    fuzz = Fuzz(tmp_path / name, read, good)
    assert fuzz.outcome(good) == "ok"
    assert set(fuzz.random_bytes()) == {"error"}
    cut = fuzz.truncated()
    assert ("ok" in cut) == truncated_ok and "error" in cut
    flipped = fuzz.flipped(flips)
    assert flipped.count("error") > 0
    return flipped


def test_fuzz_load_npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(str(path), np.arange(30, dtype=np.float64).reshape(10, 3))
    fuzz_file(tmp_path, "x.npy", lambda p: load_npy(p, 3), path.read_bytes(), flips=1000)


def test_fuzz_checkpoint(tmp_path, flow):
    good = (flow[0] / "checkpoints" / "ffn_state_dict.pth").read_bytes()
    fuzz_file(tmp_path, "ffn_state_dict.pth", lambda p: load_from_state_dict(FFN(2), p), good)


def test_fuzz_torch_file_of_other_content(tmp_path):
    torch.save({"a": [1.5, 2.5], "b": (torch.arange(4), "text")}, str(tmp_path / "good.pth"))
    good = (tmp_path / "good.pth").read_bytes()
    fuzz_file(tmp_path, "other.pth", lambda p: checked_io.load_torch_file(p), good)


CHAIN_FFN2 = trace_chain(FFN(2))


def test_fuzz_bias_corr(tmp_path, flow):
    good = (flow[0] / "quantize_result" / "bias_corr.pth").read_bytes()
    fuzz_file(tmp_path, "bias_corr.pth", lambda p: read_bias_corr(str(tmp_path), CHAIN_FFN2), good)


def test_fuzz_fast_finetune_params(tmp_path, flow):
    good = (flow[0] / "quantize_ft" / "param.pth").read_bytes()
    fuzz_file(tmp_path, "param.pth", lambda p: read_ft_params(str(tmp_path), CHAIN_FFN2), good)


def read_quant_info_in(folder):
    return lambda path: read_quant_info(str(folder), CHAIN_FFN2)


def test_fuzz_quant_info_bytes(tmp_path, flow):
    good = (flow[0] / "quantize_result" / "quant_info.json").read_bytes()
    fuzz_file(tmp_path, "quant_info.json", read_quant_info_in(tmp_path), good, flips=None)


def test_fuzz_training_log(tmp_path, flow):
    good = (flow[0] / "logs" / "train.csv").read_bytes()
    # A log cut after a whole row, or inside the last number, still reads.
    fuzz_file(tmp_path, "train.csv", report.read_log, good, flips=None, truncated_ok=True)


# Values that stand where a section, a [[bit_width, fix_position]] pair or a flag belongs.
SCALARS = [None, True, False, 0, 1, -1, 8, -8, 6, 64, 65, -65, 1024, 10 ** 30, -10 ** 30, 0.5, 8.0,
           float("inf"), float("nan"), "", "8", [], {}, [[]], [[8]], [[8, 6, 1]], [[-8, 6]], [[True, 6]],
           [[8, True]], [[8.0, 6]], [[8, 6.0]], [[8, "6"]], [[8, 10 ** 30]], [[8, -10 ** 30]], [[8, 1024]]]
KEYS = ["param", "output", "input", "bias_corrected", "fast_finetuned", "FFN::l1.weight", "FFN::nndct_dense_5", ""]


def random_json(rng, depth=0):
    """A random JSON value: scalars, lists and objects nested up to four deep."""
    r = rng.random()
    if depth > 3 or r < 0.5:
        return copy.deepcopy(rng.choice(SCALARS))
    if r < 0.75:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def mutated(rng, info):
    """`info` with one value somewhere replaced by a random one, deleted, or one appended."""
    info = copy.deepcopy(info)
    parent, key, node = None, None, info
    while isinstance(node, (dict, list)) and node and (parent is None or rng.random() < 0.6):
        parent, key = node, rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        node = parent[key]
    action = rng.random()
    if action < 0.7:
        parent[key] = random_json(rng)
    elif action < 0.85:
        del parent[key]
    elif isinstance(node, list):
        node.append(random_json(rng))
    else:
        parent[key] = [node, random_json(rng)]
    return info


def test_fuzz_quant_info_structures(tmp_path, flow):
    good = json.loads((flow[0] / "quantize_result" / "quant_info.json").read_text())
    fuzz = Fuzz(tmp_path / "quant_info.json", read_quant_info_in(tmp_path), b"")
    rng = random.Random(5)
    outcomes = []
    for k in range(1500):
        info = random_json(rng) if k % 4 == 0 else mutated(rng, good)
        outcomes.append(fuzz.outcome(json.dumps(info).encode()))
    assert outcomes.count("error") > 500 and outcomes.count("ok") > 50
    # Nesting deeper than Python's recursion limit, and numbers too long to convert.
    for text in ["[" * 100000, '{"param":' * 50000, '{"param": {"FFN::l1.weight": [[8, ' + "9" * 5000 + "]]}}"]:
        assert fuzz.outcome(text.encode()) == "error"


@pytest.mark.parametrize("position", [65, -65, 1024, 10 ** 30])
def test_quant_info_with_an_absurd_fix_position_is_refused(tmp_path, flow, position):
    info = json.loads((flow[0] / "quantize_result" / "quant_info.json").read_text())
    info["param"]["FFN::l1.weight"] = [[8, position]]
    (tmp_path / "quant_info.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"FFN::l1\.weight.*fix position {}".format(position)):
        read_quant_info(str(tmp_path), CHAIN_FFN2)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1, "0.5"])
def test_bias_corr_with_a_value_that_is_not_a_finite_float_is_refused(tmp_path, flow, value):
    corr = torch.load(str(flow[0] / "quantize_result" / "bias_corr.pth"))
    corr["FFN::nndct_dense_3"][2] = value
    torch.save(corr, str(tmp_path / "bias_corr.pth"))
    with pytest.raises(InputError, match="FFN::nndct_dense_3"):
        read_bias_corr(str(tmp_path), CHAIN_FFN2)


@pytest.mark.parametrize("change", [
    lambda s: s.update({"l2.bias": torch.full((4,), float("nan"))}),
    lambda s: s.update({"l2.bias": torch.zeros(5)}),
    lambda s: s.update({"l4.bias": torch.zeros(1)}),
    lambda s: s.update({"l1.weight": [[0.0, 0.0]] * 6}),
    lambda s: s.pop("l3.weight"),
], ids=["nan", "shape", "extra", "list", "missing"])
def test_fast_finetune_params_that_do_not_fit_are_refused(tmp_path, flow, change):
    state = torch.load(str(flow[0] / "quantize_ft" / "param.pth"))
    change(state)
    torch.save(state, str(tmp_path / "param.pth"))
    with pytest.raises(InputError, match="param.pth"):
        read_ft_params(str(tmp_path), CHAIN_FFN2)


@pytest.mark.parametrize("text", [
    "step,loss\n1," + "9" * 200000 + "\n",      # a field over the csv module's size limit
    "step,loss\n1,0.5\x00\n",
    "step,loss\n\"1,0.5\n",
    "\ufeffstep;loss\n1;0.5\n",
], ids=["huge-field", "nul", "open-quote", "semicolons"])
def test_training_log_oddities_are_refused(tmp_path, text):
    path = tmp_path / "train.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match="train.csv"):
        report.read_log(str(path))


# ---------------------------------------------------------------- stages in the wrong order

CALIBRATED = ["data", "checkpoints", "quantize_result/quant_info.json", "quantize_result/bias_corr.pth"]
WRONG_ORDER = {
    # name: (what the workspace holds from a real run, script, arguments, texts of the error line)
    "evaluate without a checkpoint": (["data"], "run.py", ("--evaluate", "--model_name", "ffn_state_dict.pth"),
                                      ("checkpoints/ffn_state_dict.pth", "checkpoint not found")),
    "test before calib": (["data", "checkpoints"], QUANT, ("--quant_mode", "test", "--evaluate") + BUILTIN,
                          ("quantize_result/quant_info.json", "run --quant_mode calib first")),
    "deploy before calib": (["data", "checkpoints"], QUANT, ("--quant_mode", "test", "--deploy") + BUILTIN,
                            ("quantize_result/quant_info.json", "run --quant_mode calib first")),
    "simulate before deploy": (CALIBRATED, "simulate.py",
                               ("quantize_result/FFN_int.xmodel", "--data", "data/test.npy"),
                               ("quantize_result/FFN_int.xmodel", "xmodel not found")),
    "report before deploy": (CALIBRATED + ["logs"], "report.py", (),
                             ("quantize_result/FFN_int.xmodel", "--quant_mode test --deploy")),
}


@pytest.fixture(scope="module")
def wrong_order(flow, tmp_path_factory):
    """{name: (result, snapshot before, snapshot after)}, all commands run side by side."""
    root = tmp_path_factory.mktemp("order")
    started = {}
    for k, (name, (paths, script, args, _)) in enumerate(WRONG_ORDER.items()):
        work = root / str(k)
        work.mkdir()
        copy_paths(flow[0], work, paths)
        started[name] = (start(script, args, work), work, snapshot(str(work)))
    return {name: (finish(proc), before, snapshot(str(work))) for name, (proc, work, before) in started.items()}


@pytest.mark.parametrize("name", list(WRONG_ORDER))
def test_stage_in_the_wrong_order_fails_with_one_line_and_writes_nothing(wrong_order, name):
    result, before, after = wrong_order[name]
    assert_clean_error(result, *WRONG_ORDER[name][3])
    assert after == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_uninterrupted_writes_the_whole_set_then_stops(tmp_path, sig):
    """A signal during the final writes of calib or deploy waits until all are done."""
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with pytest.raises(KeyboardInterrupt):
            with checked_io.uninterrupted():
                write_text(str(tmp_path / "first"), "new")
                os.kill(os.getpid(), sig)
                time.sleep(0.1)
                write_text(str(tmp_path / "second"), "new")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (tmp_path / "first").read_text() == (tmp_path / "second").read_text() == "new"
