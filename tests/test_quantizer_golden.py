"""The built-in quantizer against real vai_q_pytorch 3.5 results, bit for bit.

Each golden case is run through vai_q_pytorch_quant.py's command line
(in-process, with sys.argv set as the real quantizer reads its options there)."""
import json
import os
import sys

import numpy as np
import pytest
import torch

import vai_q_pytorch_quant
from flow.checked_io import load_torch_file
from dpu import reference
from dpu.xmodel import read_xmodel
from conftest import X86_GOLDEN

pytestmark = X86_GOLDEN

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "golden")
# The FFN cases p1, p2, ...: every folder with a case.json directly inside (layers/ holds
# the FFN variants, compiled/ the partitioned xmodels).
CASES = sorted(c for c in os.listdir(GOLDEN) if os.path.isfile(os.path.join(GOLDEN, c, "case.json")))


def run_quant(monkeypatch, case, out_dir, *args, golden=GOLDEN):
    """The script's main on a golden case (a folder of `golden`) with its protocol's flags."""
    info = json.load(open(os.path.join(golden, case, "case.json")))
    argv = ["--data_dir", os.path.join(golden, case), "--calib_data", info["calib_data"],
            "--checkpoint_dir", os.path.join(golden, case), "--model_name", info["model_name"],
            "--input_size", str(info["input_size"]), "--batch_size", str(info["batch_size"]),
            "--output_dir", str(out_dir), "--backend", "builtin"]
    if info["subset_len"] is not None:
        argv += ["--subset_len", str(info["subset_len"])]
    argv += list(args) + info["nndct_options"]
    monkeypatch.setattr(sys, "argv", ["vai_q_pytorch_quant.py"] + argv)
    assert vai_q_pytorch_quant.main(argv) == 0


@pytest.fixture(scope="module", params=CASES)
def calibrated(request, tmp_path_factory):
    """A golden case after calib and test through the script: (case, output folder)."""
    case = request.param
    out = tmp_path_factory.mktemp(case)
    with pytest.MonkeyPatch.context() as mp:
        run_quant(mp, case, out / "quantize_result", "--quant_mode", "calib")
        run_quant(mp, case, out / "quantize_result", "--quant_mode", "test", "--save_outputs",
                  str(out / "test_outputs.npy"))
        run_quant(mp, case, out / "quantize_result", "--quant_mode", "float", "--save_outputs",
                  str(out / "float_outputs.npy"))
    return case, out


def expected(case, *parts):
    return os.path.join(GOLDEN, case, "expected", *parts)


def case_info(case):
    with open(os.path.join(GOLDEN, case, "case.json")) as f:
        return json.load(f)


def deployed_outputs(case, x):
    """What the deployed network gives: the test-mode outputs, except where the real
    quantizer turned an input beyond int32 into -128 (case.json says so); there the
    DPU, and the exports of the deployed network, saturate to 127."""
    test_outputs = np.load(expected(case, "test_outputs.npy"))
    if case_info(case).get("int_sim_equals_test_outputs", True):
        return test_outputs
    int_outputs = reference.outputs(read_xmodel(expected(case, "quantize_result", "FFN_int.xmodel")), x)
    fp_in = json.load(open(expected(case, "quantize_result", "quant_info.json")))["output"]["FFN::nndct_input_0"][0][1]
    overflowed = np.zeros(len(x), dtype=bool)
    overflowed[reference.int32_overflow_rows(x, fp_in)] = True
    assert overflowed.any()
    differ = (int_outputs != test_outputs).any(axis=1)
    assert np.array_equal(differ, overflowed)    # only the overflowed rows, and each of them
    return int_outputs


def test_quant_info_equals_golden(calibrated):
    case, out = calibrated
    ours = json.load(open(out / "quantize_result" / "quant_info.json"))
    theirs = json.load(open(expected(case, "quantize_result", "quant_info.json")))
    for section in ("param", "output", "input"):
        assert list(ours[section].items()) == list(theirs[section].items())
    for key in ("fast_finetuned", "bias_corrected", "graph_md5"):
        assert ours[key] == theirs[key]


def test_quant_info_text_layout_equals_golden(calibrated):
    """Byte for byte, but for the version string that names the quantizer."""
    case, out = calibrated
    ours = (out / "quantize_result" / "quant_info.json").read_text().splitlines()
    theirs = open(expected(case, "quantize_result", "quant_info.json")).read().splitlines()
    assert [l for l in ours if '"version"' not in l] == [l for l in theirs if '"version"' not in l]
    assert not (out / "quantize_result" / "quant_info.json").read_bytes().endswith(b"\n")


def test_bias_corr_equals_golden_to_the_last_bit(calibrated):
    case, out = calibrated
    golden = expected(case, "quantize_result", "bias_corr.pth")
    ours = out / "quantize_result" / "bias_corr.pth"
    if not os.path.exists(golden):
        assert not ours.exists()
        return
    a = load_torch_file(str(ours))
    b = load_torch_file(golden)
    assert list(a) == list(b)
    for node in b:
        assert all(type(v) is float for v in a[node])
        assert np.array(a[node]).tobytes() == np.array(b[node]).tobytes(), node


def test_test_mode_outputs_equal_golden(calibrated):
    case, out = calibrated
    ours = np.load(str(out / "test_outputs.npy"))
    theirs = np.load(expected(case, "test_outputs.npy"))
    assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape
    assert ours.tobytes() == theirs.tobytes()


def test_float_outputs_equal_golden(calibrated):
    case, out = calibrated
    ours = np.load(str(out / "float_outputs.npy"))
    theirs = np.load(expected(case, "float_outputs.npy"))
    assert ours.tobytes() == theirs.tobytes()


def test_calibration_history_uses_the_mode_with_ties_to_the_smaller(calibrated):
    """p3 decides one position by a tie in the batch history; check all histories."""
    case, _ = calibrated
    summary = json.load(open(expected(case, "summary.json")))
    from vaiq.quant_model import history_mode
    for tensor, history in summary["calib_fix_pos_history"].items():
        if tensor != "what":
            assert history_mode(history) == summary["legalization"]["before"]["output"][tensor]


def release_1_3_form(info):
    """A 3.x quant_info as release 1.3 wrote it: flat pairs, no extra keys, and the
    activation names of the traced graph of torch 1.4."""
    traced = ["FFN::input_0", "FFN::FFN/input.2", "FFN::FFN/input.3", "FFN::FFN/Linear[l3]/10"]
    return {
        "param": {key: value[0] for key, value in info["param"].items()},
        "output": {name: value[0] for name, value in zip(traced, info["output"].values())},
    }


@pytest.mark.parametrize("case", CASES)
def test_test_mode_reads_the_release_1_3_form(case, tmp_path, monkeypatch):
    """Results of older docker runs can be used in test mode: names are mapped by position."""
    out = tmp_path / "quantize_result"
    out.mkdir()
    golden = json.load(open(expected(case, "quantize_result", "quant_info.json")))
    (out / "quant_info.json").write_text(json.dumps(release_1_3_form(golden)))
    golden_corr = expected(case, "quantize_result", "bias_corr.pth")
    if os.path.exists(golden_corr):
        traced_nodes = ["FFN::FFN/Linear[l1]/6", "FFN::FFN/Linear[l2]/8", "FFN::FFN/Linear[l3]/10"]
        corr = load_torch_file(golden_corr)
        torch.save(dict(zip(traced_nodes, corr.values())), str(out / "bias_corr.pth"))
    run_quant(monkeypatch, case, out, "--quant_mode", "test", "--save_outputs", str(tmp_path / "outputs.npy"))
    assert np.load(str(tmp_path / "outputs.npy")).tobytes() == np.load(expected(case, "test_outputs.npy")).tobytes()


def test_an_input_beyond_int32_is_said_in_one_line(tmp_path, capsys):
    """p6: row 128 holds 1e9; at the input's position it becomes -128, as in the real quantizer."""
    with pytest.MonkeyPatch.context() as mp:
        run_quant(mp, "p6_int32_overflow", tmp_path, "--quant_mode", "calib")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert lines == ["warning: FFN::nndct_input_0: 1 value beyond the int32 range at fix position 5 (first 1e+09) "
                     "became -128, as in vai_q_pytorch; the DPU saturates such a value to 127"]
