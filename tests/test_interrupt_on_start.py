"""Ctrl-C or SIGTERM while a stage script is still importing (torch takes one to
several seconds): exit code 130, one line on stderr, no traceback.

Each script is signalled at a few moments after its first line has installed the
handlers (seen in /proc: SIGTERM caught), well inside its imports. Arguments that
would fail later make a signal that came too late visible as exit code 2."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and /proc")

SCRIPTS = {
    "generate_data.py": ("--n_samples", "3000000", "--output_dir", "data"),
    "run.py": ("--evaluate", "--model_name", "missing.pth"),
    "vai_q_pytorch_quant.py": ("--quant_mode", "float", "--data_dir", "missing"),
    "quant_quality.py": ("--data_dir", "missing"),
    "benchmark.py": ("--n_samples", "100", "--n_epochs", "1", "--work_dir", "bench"),
}
DELAYS = (0.0, 0.1, 0.3)   # seconds after the handlers are in place
# A shared library of the heavy import (numpy for generate_data.py, torch for the others):
# at delay 0 it is not loaded yet, so the signal came during the imports.
HEAVY = {"generate_data.py": "_multiarray_umath"}
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


def _default_sigint():
    # As a user's Ctrl-C finds it: a shell would start a background job with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sigterm_caught(pid):
    with open("/proc/{}/status".format(pid)) as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def signalled_during_start(script, sig, delay, cwd):
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, script)] + list(SCRIPTS[script]), cwd=str(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 60
        while not sigterm_caught(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, "the handlers never appeared"
            time.sleep(0.002)
        time.sleep(delay)
        with open("/proc/{}/maps".format(proc.pid)) as f:
            heavy_loaded = HEAVY.get(script, "libtorch_cpu") in f.read()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err, heavy_loaded


@pytest.mark.parametrize("name", sorted(SIGNALS))
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_interrupted_while_importing_exits_130_with_one_line(script, name, tmp_path):
    for delay in DELAYS:
        code, out, err, heavy_loaded = signalled_during_start(script, SIGNALS[name], delay, tmp_path)
        shown = "{} {} after {} s: exit code {}\nstdout:\n{}\nstderr:\n{}".format(script, name, delay, code, out, err)
        if delay == 0:
            assert not heavy_loaded, "the handlers came after the heavy imports\n" + shown
        assert code == 130, shown
        assert "Traceback" not in err, shown
        assert err.splitlines() == ["{}: interrupted; earlier outputs are left as they were".format(script)], shown
        assert os.listdir(str(tmp_path)) == [], shown   # nothing written


def test_imported_as_a_module_the_handlers_are_left_alone():
    import interruption

    before = signal.getsignal(signal.SIGTERM)
    interruption.exit_on_interrupt("vai_q_pytorch_quant")
    assert signal.getsignal(signal.SIGTERM) is before
