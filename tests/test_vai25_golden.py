"""The built-in quantizer as release 2.5 (--vai_release 2.5) against real vai_q_pytorch 2.5
results (fixtures/golden/vai25: the Vitis AI 2.5 docker's quantizer, kernels pinned).

2.5 names nodes, dumps and bias_corr.pth keys after its traced graph and writes flat
pairs; the built-in keeps 3.5's names and layout. So the numbers are compared in graph
order (quantization/compare.py): positions, bias corrections to the last bit, test
outputs, the xmodel's ops and constants, and every deploy dump."""
import json
import os

import numpy as np
import pytest

from quantization import compare
from test_quantizer_golden import GOLDEN, run_quant
from conftest import X86_GOLDEN

pytestmark = X86_GOLDEN

GOLDEN25 = os.path.join(GOLDEN, "vai25")
CASES = sorted(os.listdir(GOLDEN25))


def expected(case, *parts):
    return os.path.join(GOLDEN25, case, "expected", *parts)


def case_info(case):
    with open(os.path.join(GOLDEN25, case, "case.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module", params=CASES)
def quantized(request, tmp_path_factory):
    """(case, quantize_result folder, outputs folder) after calib, test and deploy as release 2.5."""
    case = request.param
    out = tmp_path_factory.mktemp(case)
    result = out / "quantize_result"
    with pytest.MonkeyPatch.context() as mp:
        run_quant(mp, case, result, "--quant_mode", "calib", "--vai_release", "2.5", golden=GOLDEN25)
        run_quant(mp, case, result, "--quant_mode", "test", "--vai_release", "2.5", "--save_outputs",
                  str(out / "test_outputs.npy"), golden=GOLDEN25)
        run_quant(mp, case, result, "--quant_mode", "test", "--deploy", "--vai_release", "2.5",
                  "--deploy_batch", str(case_info(case).get("deploy_batch", 1)), golden=GOLDEN25)
    return case, str(result), out


def test_positions_equal_release_2_5(quantized):
    case, result, _ = quantized
    assert compare.positions(result) == compare.positions(expected(case, "quantize_result"))
    assert len(compare.positions(result)["output"]) >= 2


def test_bias_corr_equals_release_2_5_to_the_last_bit(quantized):
    case, result, _ = quantized
    ours, theirs = compare.bias_corrections(result), compare.bias_corrections(expected(case, "quantize_result"))
    assert ours == theirs
    assert (ours is None) == ("--nndct_param_corr" in " ".join(case_info(case)["nndct_options"]))


def test_test_outputs_equal_release_2_5(quantized):
    case, _, out = quantized
    ours = np.load(str(out / "test_outputs.npy"))
    theirs = np.load(expected(case, "test_outputs.npy"))
    assert ours.dtype == theirs.dtype and ours.tobytes() == theirs.tobytes()


def test_xmodel_ops_and_constants_equal_release_2_5(quantized):
    case, result, _ = quantized
    ours = compare.xmodel_numbers(os.path.join(result, "FFN_int.xmodel"))
    assert ours == compare.xmodel_numbers(expected(case, "quantize_result", "FFN_int.xmodel"))
    assert ours[2] == case_info(case).get("deploy_batch", 1)


def test_every_dump_equals_release_2_5(quantized):
    case, result, _ = quantized
    ours = compare.dumps(os.path.join(result, "deploy_check_data_int", "FFN"))
    theirs = compare.dumps(expected(case, "quantize_result", "deploy_check_data_int", "FFN"))
    assert len(ours) == len(theirs) == len(os.listdir(expected(case, "quantize_result", "deploy_check_data_int",
                                                               "FFN"))) - 1   # all but shape.txt
    for (our_name, our_bytes), (their_name, their_bytes) in zip(ours, theirs):
        assert our_bytes == their_bytes, (our_name, their_name)
    assert compare.differences(result, expected(case, "quantize_result")) == []


def test_the_batch_line_is_release_2_5s(tmp_path, monkeypatch, capsys):
    """A deploy at batch 4: 2.5's own line, then the export as it does."""
    case = "p4_trained_in2_deploy4"
    run_quant(monkeypatch, case, tmp_path, "--quant_mode", "calib", "--vai_release", "2.5", golden=GOLDEN25)
    capsys.readouterr()
    run_quant(monkeypatch, case, tmp_path, "--quant_mode", "test", "--deploy", "--deploy_batch", "4",
              "--vai_release", "2.5", golden=GOLDEN25)
    line = "[VAIQ_ERROR]: Batch size must be 1 when exporting xmodel."
    assert line in capsys.readouterr().out.splitlines()
    with open(expected(case, "messages.txt")) as f:
        assert "deploy: " + line in f.read().splitlines()


def test_the_3_5_defaults_do_not_give_2_5s_numbers(tmp_path, monkeypatch):
    """The comparison can fail: the built-in as 3.5 differs from 2.5 where correction runs."""
    run_quant(monkeypatch, "p1_trained_in2", tmp_path, "--quant_mode", "calib", golden=GOLDEN25)
    assert compare.differences(str(tmp_path), expected("p1_trained_in2", "quantize_result")) == \
        ["bias_corr.pth values differ"]
