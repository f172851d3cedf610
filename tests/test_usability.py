"""What a new user meets first: every script's --help (whole, with every default, without
importing torch), integer data and checkpoints that are not state dicts refused in a line
that says what to do, progress while the user waits, and a signal after the work is done.

compile.sh's --help, its DPU names and its pre-flight report: tests/test_compile.py;
report.py --hls_outputs: tests/test_report.py; the hls4ml build's progress: tests/test_hls4ml.py."""
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, assert_clean_error, check_fails, run_script, script_command, script_env
from flow import checked_io
from model import FFN

GOLDEN = os.path.join(REPO, "tests", "fixtures", "golden", "p1_trained_in2")

SCRIPTS = ["generate_data.py", "run.py", "vai_q_pytorch_quant.py", "simulate.py", "hls4ml_project.py", "report.py",
           "tools/quant_quality.py", "dpu.preflight", "tools/benchmark.py", "tools/real_quantizer_check.py",
           "vai_q_pytorch_qat.py"]


def help_entries(text):
    """{first line of an argument's entry (its flags or name): its help text} from argparse's --help."""
    entries, current = {}, None
    section = None
    for line in text.splitlines():
        if re.match(r"^\S.*:$", line):                      # "options:", "positional arguments:"
            section = line
            current = None
            continue
        if section is None or not line.strip():
            current = None if not line.strip() else current
            continue
        match = re.match(r"^  (\S(?:\S| (?! ))*)(?:\s{2,}(.*))?$", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2) or ""
        elif current is not None:
            entries[current] = (entries[current] + " " + line.strip()).strip()
    return entries


def help_without_torch(script):
    """The script's --help, run with -X importtime: (CompletedProcess, modules imported)."""
    command = script_command(script)
    command.insert(1, "-Ximporttime")
    run = subprocess.run(command + ["--help"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, env=script_env(), timeout=120)
    imported = [line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")]
    return run, imported


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_every_flag_with_its_default_and_needs_no_torch(script):
    run, imported = help_without_torch(script)
    assert run.returncode == 0, run.stderr
    assert "torch" not in imported and not [m for m in imported if m.startswith("torch.")], \
        "--help imported torch"
    entries = help_entries(run.stdout)
    assert entries, run.stdout
    for entry, text in entries.items():
        if entry.startswith("-h, --help"):
            continue
        assert text, "{}: no description".format(entry)
        if entry.startswith("-"):
            assert "(default: " in text or "(required)" in text, "{}: {!r} shows no default".format(entry, text)


def test_help_entries_are_read_whole():
    text = ("usage: x\n\ndescription\n\npositional arguments:\n  xmodel                the xmodel\n\n"
            "options:\n  -h, --help            show this help message and exit\n"
            "  --part PART           the part\n                        (default: xcu250)\n"
            "  --switch_with_a_long_name\n                        a switch (default: off)\n")
    assert help_entries(text) == {"xmodel": "the xmodel", "-h, --help": "show this help message and exit",
                                  "--part PART": "the part (default: xcu250)",
                                  "--switch_with_a_long_name": "a switch (default: off)"}


def test_hls4ml_help_describes_the_route_in_whole_sentences():
    run = run_script("hls4ml_project.py", "--help")
    assert run.returncode == 0, run.stderr
    description = " ".join(run.stdout.split("\n\n")[1].split())
    assert description == ("The second route to the U250: an hls4ml HLS project of a quantizer xmodel, with a C "
                           "simulation that must equal the integer DPU reference (dpu/reference.py) bit for bit.")


def test_the_formatter_adds_defaults_where_the_help_has_none():
    parser = checked_io.ArgumentParser(prog="x")
    parser.add_argument("--n", type=int, default=3, help="a number")
    parser.add_argument("--given", default="a", help="named (default: the first)")
    parser.add_argument("--switch", action="store_true", help="a switch")
    parser.add_argument("--needed", required=True, help="a must")
    parser.add_argument("--unset", help="nothing by default")
    parser.add_argument("file", nargs="?", default="f.npy", help="a file")
    entries = help_entries(parser.format_help())
    assert entries == {"-h, --help": "show this help message and exit", "--n N": "a number (default: 3)",
                       "--given GIVEN": "named (default: the first)", "--switch": "a switch (default: off)",
                       "--needed NEEDED": "a must (required)", "--unset UNSET": "nothing by default",
                       "file": "a file (default: f.npy)"}


# ---------------------------------------------------------------- hls4ml_project.py --part

@pytest.mark.parametrize("part", ["xyz", "xcu250", "u250-figd2104-2L-e", "xcz250-figd2104-2L-e", "xc7x020clg400-1",
                                  "xcu250-figd2104-2L-e;rm"])
def test_a_part_that_is_no_xilinx_part_is_refused(tmp_path, part):
    run = run_script("hls4ml_project.py", "--part", part, cwd=str(tmp_path))
    assert_clean_error(run, "argument --part: {!r} is not a Xilinx part name such as xcu250-figd2104-2L-e".format(part),
                       "xcu Alveo", "xcvu Virtex UltraScale", "xcku", "xczu Zynq UltraScale+", "xc7z Zynq-7000",
                       "xcvc Versal AI Core", "xcve Versal AI Edge")
    assert run.returncode == 2 and os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("part", ["xcu250-figd2104-2L-e", "xcu280-fsvh2892-2L-e", "xcu55c-fsvh2892-2L-e",
                                  "xcvu9p-flga2104-2L-e", "xcku115-flvb2104-2-e", "xczu9eg-ffvb1156-2-e",
                                  "xc7z020clg400-1", "xc7a35tcpg236-1", "xcvc1902-vsva2197-2MP-e-S",
                                  "xck26-sfvc784-2LV-c", "xa7a12tcsg325-1q", "XCU250-FIGD2104-2L-E"])
def test_xilinx_parts_are_taken(part):
    import hls4ml_project

    assert hls4ml_project.part_name(part) == part
    assert hls4ml_project.part_name(hls4ml_project.U250_PART) == "xcu250-figd2104-2L-e"


# ---------------------------------------------------------------- integer data

@pytest.fixture
def work(tmp_path):
    """data/ of p1's rows (float64), a state dict good.pth."""
    (tmp_path / "data").mkdir()
    rows = np.load(os.path.join(GOLDEN, "calib.npy"))
    for name in ("train", "valid", "test"):
        np.save(str(tmp_path / "data" / (name + ".npy")), rows)
    torch.save(FFN(2).state_dict(), str(tmp_path / "good.pth"))
    return tmp_path


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8"])
def test_integer_data_is_refused_in_one_line(work, dtype):
    """Whole numbers trained on silently gave an MSE of 3.76e-01; now refused with the conversion."""
    rows = np.load(str(work / "data" / "train.npy"))
    np.save(str(work / "data" / "train.npy"), np.round(rows * 10).astype(dtype))
    message = ("data/train.npy: holds {} values; the flow takes float data (convert with "
               "x.astype('float64'))".format(dtype))
    check_fails(work, "run.py", ("--train", "--n_epochs", 1), message)
    check_fails(work, "simulate.py", (os.path.join(GOLDEN, "expected", "quantize_result", "FFN_int.xmodel"),
                                      "--data", "data/train.npy"), message)


def test_float32_data_is_taken(work):
    rows = np.load(str(work / "data" / "test.npy"))
    np.save(str(work / "data" / "test.npy"), rows.astype(np.float32))
    run = run_script("run.py", "--evaluate", "--model_name", "good.pth", cwd=str(work))
    assert run.returncode == 0, run.stderr


# ---------------------------------------------------------------- checkpoints that are not state dicts

def test_a_whole_model_says_how_to_save_the_state_dict(work):
    torch.save(FFN(2), str(work / "whole.pth"))
    check_fails(work, "run.py", ("--evaluate", "--model_name", "whole.pth"),
                "whole.pth: not a loadable checkpoint (it holds Python objects besides tensors (model.FFN)",
                "a whole model saved with torch.save(model)? Save its state dict instead: "
                "torch.save(model.state_dict(), 'whole.pth')")


def test_a_training_checkpoint_names_the_key_of_its_state_dict(work):
    model = FFN(2)
    torch.save({"epoch": 3, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": torch.optim.Adam(model.parameters()).state_dict()}, str(work / "ckpt.pth"))
    check_fails(work, "run.py", ("--evaluate", "--model_name", "ckpt.pth"),
                "ckpt.pth: is not a state dict of tensors but a dict holding a state dict under the key "
                "'model_state_dict'; save that one: torch.save(torch.load('ckpt.pth')['model_state_dict'], "
                "'ffn_state_dict.pth')")
    torch.save({"a": model.state_dict(), "b": model.state_dict()}, str(work / "two.pth"))
    check_fails(work, "vai_q_pytorch_quant.py", ("--quant_mode", "float", "--model_name", "two.pth"),
                "two.pth: is not a state dict of tensors but a dict holding state dicts under the keys 'a', 'b'; "
                "save the model's: torch.save(torch.load('two.pth')[KEY], 'ffn_state_dict.pth')")


@pytest.mark.parametrize("content, what", [([1, 2, 3], "a list"), ({}, "an empty dict"),
                                           ({"lr": 0.1, "epoch": 3}, "a dict of float, int")])
def test_other_checkpoints_say_what_they_hold(work, content, what):
    torch.save(content, str(work / "other.pth"))
    check_fails(work, "run.py", ("--evaluate", "--model_name", "other.pth"),
                "other.pth: is not a state dict of tensors ({}); save one with torch.save(model.state_dict(), "
                "PATH)".format(what))


# ---------------------------------------------------------------- progress

class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_in_a_log_is_one_plain_line_per_step(capsys):
    with checked_io.Progress("build", 3, ticking=True, prog="x.py") as progress:
        for k in range(3):
            progress.advance()
            progress.note("{}/3 step".format(k + 1))
    out, err = capsys.readouterr()
    assert out.splitlines() == ["x.py: build: 1/3 step", "x.py: build: 2/3 step", "x.py: build: 3/3 step"]
    assert err == "" and "\r" not in out


def test_progress_on_a_terminal_is_a_bar_that_goes(monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with checked_io.Progress("build", 3, prog="x.py") as progress:
        progress.advance()
        progress.note("1/3 step")
    assert capsys.readouterr().out == ""
    shown = terminal.getvalue()
    assert "\r" in shown and "build" in shown and "1/3 step" in shown and "33%" in shown


def finetune_chain():
    from vaiq.quantizer import torch_quantizer

    torch.manual_seed(0)
    model = FFN(2).eval()
    x = torch.randn(64, 2)
    return model, x, torch_quantizer


@pytest.mark.parametrize("terminal", [False, True], ids=["log", "terminal"])
def test_fast_finetune_shows_its_progress(tmp_path, monkeypatch, capsys, terminal):
    from vaiq import finetune

    model, x, torch_quantizer = finetune_chain()
    calib = torch_quantizer("calib", model, (x,), output_dir=str(tmp_path))
    calib.quant_model(x)
    if terminal:
        monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(finetune, "STEPS", 5)
    monkeypatch.setattr(finetune.fast_finetune, "__defaults__", (5, finetune.LR))
    calib.fast_finetune(lambda m, data: m(data), (calib.quant_model, x))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "fast finetune: layer" in line]
    if terminal:
        assert lines == []
        shown = sys.stderr.getvalue()
        assert "\r" in shown and "fast finetune" in shown and "15/15" in shown
    else:
        assert [re.sub(r"[0-9.e+-]+ -> [0-9.e+-]+$", "A -> B", re.sub(r": [1-5] of 5 passes", ": P of 5 passes",
                                                                      line.split(": ", 1)[1])) for line in lines] == [
            "fast finetune: layer {}/3: P of 5 passes, loss vs float outputs A -> B".format(k) for k in (1, 2, 3)]
        assert "\r" not in out


# ---------------------------------------------------------------- a signal after the work

SIGNALLED_AT_EXIT = """
import atexit, os, signal, sys, time
sys.path.insert(0, {repo!r})
from flow import start_stage
start_stage(__name__)
from flow.checked_io import cli


class SignalWhenCollected:
    # Collected at interpreter shutdown, after Python has put back its default handlers.
    def __del__(self):
        os.kill(os.getpid(), signal.{sig})
        time.sleep(0.2)


def signal_at_exit():
    os.kill(os.getpid(), signal.{sig})
    time.sleep(0.2)


def main():
    global kept
    print("wrote everything")
    if {when!r} == "shutdown":
        kept = SignalWhenCollected()
    else:
        atexit.register(signal_at_exit)
    return {code}


cli(main)
"""


@pytest.mark.parametrize("when", ["atexit", "shutdown"])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("code", [0, 1])
def test_a_signal_after_main_returned_is_ignored(tmp_path, when, sig, code):
    """Seen on report.py and generate_data.py: Ctrl-C after the last "wrote" line ended the
    process with status -2 and no word. Once main has returned, its exit code stands."""
    script = tmp_path / "stage.py"
    script.write_text(SIGNALLED_AT_EXIT.format(repo=REPO, sig=sig, when=when, code=code))
    run = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=60,
                         preexec_fn=lambda: __import__("signal").signal(__import__("signal").SIGINT,
                                                                          __import__("signal").SIG_DFL))
    assert (run.returncode, run.stdout, run.stderr) == (code, "wrote everything\n", "")


def test_a_signal_inside_main_still_interrupts(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(SIGNALLED_AT_EXIT.format(repo=REPO, sig="SIGINT", when="atexit", code=0).replace(
        'print("wrote everything")', 'os.kill(os.getpid(), signal.SIGINT); time.sleep(1)'))
    run = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=60,
                         preexec_fn=lambda: __import__("signal").signal(__import__("signal").SIGINT,
                                                                          __import__("signal").SIG_DFL))
    assert run.returncode == 130
    assert run.stderr == "stage.py: interrupted; earlier outputs are left as they were\n"
