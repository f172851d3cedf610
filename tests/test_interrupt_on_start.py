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

from conftest import REPO, cpu_seconds, sigterm_handled

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and /proc")

SCRIPTS = {
    "generate_data.py": ("--n_samples", "3000000", "--output_dir", "data"),
    "run.py": ("--evaluate", "--model_name", "missing.pth"),
    "vai_q_pytorch_quant.py": ("--quant_mode", "float", "--data_dir", "missing"),
    "tools/quant_quality.py": ("--data_dir", "missing"),
    "tools/benchmark.py": ("--n_samples", "100", "--n_epochs", "1", "--work_dir", "bench"),
}
DELAYS = (0.0, 0.1, 0.3)   # seconds after the handlers are in place
# Importing torch takes over a second of CPU time; the handlers must be in place long
# before (with them installed by checked_io.cli, after the imports, this fails).
TORCH_SCRIPTS = ("run.py", "vai_q_pytorch_quant.py", "tools/quant_quality.py", "tools/benchmark.py")
MAX_CPU_BEFORE_HANDLERS = 0.5
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


def _default_sigint():
    # As a user's Ctrl-C finds it: a shell would start a background job with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signalled_during_start(script, sig, delay, cwd):
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, script)] + list(SCRIPTS[script]), cwd=str(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 60
        while not sigterm_handled(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, "the handlers never appeared"
            time.sleep(0.002)
        cpu_at_handlers = cpu_seconds(proc.pid)
        time.sleep(delay)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err, cpu_at_handlers


@pytest.mark.parametrize("name", sorted(SIGNALS))
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_interrupted_while_importing_exits_130_with_one_line(script, name, tmp_path):
    for delay in DELAYS:
        code, out, err, cpu_at_handlers = signalled_during_start(script, SIGNALS[name], delay, tmp_path)
        shown = "{} {} after {} s: exit code {}\nstdout:\n{}\nstderr:\n{}".format(script, name, delay, code, out, err)
        if script in TORCH_SCRIPTS:
            assert cpu_at_handlers < MAX_CPU_BEFORE_HANDLERS, "handlers after {} s of CPU\n{}".format(
                cpu_at_handlers, shown)
        assert code == 130, shown
        assert "Traceback" not in err, shown
        assert err.splitlines() == ["{}: interrupted; earlier outputs are left as they were".format(
            os.path.basename(script))], shown
        assert os.listdir(str(tmp_path)) == [], shown   # nothing written


def test_imported_as_a_module_the_handlers_are_left_alone():
    from flow import interruption

    before = signal.getsignal(signal.SIGTERM)
    interruption.exit_on_interrupt("vai_q_pytorch_quant")
    assert signal.getsignal(signal.SIGTERM) is before


def test_numpy_random_is_imported_with_the_stage_imports():
    """numpy 2 imports numpy.random on first use; a KeyboardInterrupt raised inside that
    import, when a signal arrives as main first calls np.random, vanishes and the stage
    runs on. So it must already be imported when main starts (flow/checked_io.py)."""
    code = "import sys; import flow.checked_io; print('numpy.random' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, universal_newlines=True)
    assert result.stdout.strip() == "True"


def test_a_signal_while_cli_installs_its_handlers_ends_with_130_and_one_line(monkeypatch, capsys):
    """The handler that raises KeyboardInterrupt can fire inside signal.signal itself, while
    cli() puts it in place: that too is the interruption's one line and 130, no traceback."""
    from flow import checked_io

    def interrupted_while_installing():
        raise KeyboardInterrupt

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(checked_io, "raise_on_interrupt", interrupted_while_installing)
    try:
        with pytest.raises(SystemExit) as ended:
            try:
                checked_io.cli(lambda: pytest.fail("main ran"))
            except KeyboardInterrupt:
                pytest.fail("the KeyboardInterrupt escaped cli(): a traceback and exit code -2")
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert ended.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted; earlier outputs are left as they were" in err
