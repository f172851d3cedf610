"""calibration.json: calibration records what it was run on; test mode and --deploy
refuse a calibration of another network with one line, and note what they cannot check."""
import json
import os
import shutil

import pytest
import torch

from flow.checked_io import load_torch_file
from conftest import assert_clean_error, p1_workspace, run_script, snapshot

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "golden")
P1 = os.path.join(GOLDEN, "p1_trained_in2")
P3 = os.path.join(GOLDEN, "p3_random_in4")
RECORD = os.path.join("quantize_result", "calibration.json")
CALIB = ("--quant_mode", "calib")
TEST = ("--quant_mode", "test", "--evaluate")
DEPLOY = ("--quant_mode", "test", "--deploy")
RECALIBRATE = "recalibrate: python vai_q_pytorch_quant.py --quant_mode calib --data_dir data --calib_data test.npy"


def quant(work, *args):
    return run_script("vai_q_pytorch_quant.py", "--batch_size", "64", "--backend", "builtin", *args, cwd=str(work))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """data/test.npy, checkpoints/ffn_state_dict.pth and its calibration in quantize_result/."""
    work = p1_workspace(tmp_path_factory.mktemp("work"))
    result = quant(work, *CALIB)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return work


@pytest.fixture
def work(calibrated, tmp_path):
    copy = tmp_path / "work"
    shutil.copytree(str(calibrated), str(copy))
    return copy


def retrained(work, name):
    """A checkpoint of the same shape with other weights, as a retraining gives."""
    state = load_torch_file(str(work / "checkpoints" / "ffn_state_dict.pth"))
    state["l1.weight"] = state["l1.weight"] * 1.01
    torch.save(state, str(work / "checkpoints" / name))


def assert_refused(work, args, *must_contain):
    before = snapshot(str(work / "quantize_result"))
    assert_clean_error(quant(work, *args), *must_contain)
    assert snapshot(str(work / "quantize_result")) == before


def test_the_record_says_what_was_calibrated(calibrated):
    record = json.loads((calibrated / RECORD).read_text())
    with open(str(calibrated / "checkpoints" / "ffn_state_dict.pth"), "rb") as f:
        import hashlib
        digest = hashlib.sha256(f.read()).hexdigest()
    assert record["checkpoint"] == os.path.join("checkpoints", "ffn_state_dict.pth")
    assert record["checkpoint_sha256"] == digest
    assert (record["input_size"], record["data"], record["rows"]) == (2, os.path.join("data", "test.npy"), 1000)
    assert (record["batch_size"], record["subset_len"], record["fast_finetune"]) == (64, None, False)
    assert record["nndct_options"] == {"nndct_param_corr": True, "nndct_param_corr_rate": 0.05}
    assert (record["backend"], record["release"]) == ("builtin", "3.5")
    # quant_info.json stays the quantizer's own text
    assert "checkpoint" not in json.loads((calibrated / "quantize_result" / "quant_info.json").read_text())


def test_same_checkpoint_passes_without_a_note(work):
    for args in (TEST, DEPLOY):
        result = quant(work, *args)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""


@pytest.mark.parametrize("args", [TEST, DEPLOY])
def test_another_checkpoint_is_refused(work, args):
    retrained(work, "retrained.pth")
    assert_refused(work, args + ("--model_name", "retrained.pth"), "quantize_result/calibration.json",
                   "calibrated on checkpoint checkpoints/ffn_state_dict.pth",
                   "this run's checkpoints/retrained.pth has sha256",
                   RECALIBRATE, "--model_name checkpoints/retrained.pth --input_size 2 --batch_size 64")


def test_a_checkpoint_retrained_in_place_is_refused(work):
    retrained(work, "ffn_state_dict.pth")
    assert_refused(work, TEST, "calibrated on checkpoint checkpoints/ffn_state_dict.pth", RECALIBRATE)


def test_another_input_size_is_refused(work):
    shutil.copy(os.path.join(P3, "float_state_dict.pth"), str(work / "checkpoints" / "in4.pth"))
    shutil.copy(os.path.join(P3, "calib.npy"), str(work / "data" / "in4.npy"))
    assert_refused(work, TEST + ("--model_name", "in4.pth", "--input_size", "4", "--calib_data", "in4.npy"),
                   "calibrated with --input_size 2, this run has 4", "--input_size 4")


def test_other_quantizer_options_are_refused(work):
    assert_refused(work, TEST + ("--nndct_param_corr", "False"),
                   "calibrated with --nndct_param_corr True, this run gives --nndct_param_corr False",
                   "--output_dir quantize_result --nndct_param_corr False")
    assert quant(work, *CALIB, "--nndct_param_corr", "False").returncode == 0
    assert_refused(work, TEST + ("--nndct_param_corr", "yes"),
                   "calibrated with --nndct_param_corr False, this run gives --nndct_param_corr True")
    for same in (("--nndct_param_corr", "0"), ()):   # the same options, or none: what was calibrated
        result = quant(work, *(TEST + same))
        assert result.returncode == 0 and result.stderr == "", result.stderr


def test_fast_finetune_must_match(work):
    assert_refused(work, TEST + ("--fast_finetune",), "calibrated without --fast_finetune, this run is with it",
                   "--fast_finetune")
    assert quant(work, *CALIB, "--fast_finetune").returncode == 0
    assert_refused(work, TEST, "calibrated with --fast_finetune, this run is without it: add --fast_finetune to "
                   "use the finetuned parameters, or recalibrate without it, which discards them",
                   "recalibrate: python vai_q_pytorch_quant.py --quant_mode calib")


def test_other_evaluation_rows_are_noted_not_refused(work):
    rows = json.loads((work / RECORD).read_text())["rows"]
    shutil.copy(str(work / "data" / "test.npy"), str(work / "data" / "copy.npy"))
    result = quant(work, *TEST, "--calib_data", "copy.npy")   # the same rows under another name
    assert result.returncode == 0 and result.stderr == "", result.stderr
    result = quant(work, *TEST, "--subset_len", "100")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "vai_q_pytorch_quant.py: note: evaluating on data/test.npy (100 rows), calibrated on data/test.npy "
        "({} rows)".format(rows)]


def test_a_folder_without_the_record_is_accepted_with_a_note(work):
    os.remove(str(work / RECORD))
    result = quant(work, *TEST)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "no calibration.json, so it cannot be checked" in lines[0], result.stderr


def test_the_golden_real_quantizer_folder_is_accepted_with_a_note(work):
    shutil.rmtree(str(work / "quantize_result"))
    shutil.copytree(os.path.join(P1, "expected", "quantize_result"), str(work / "quantize_result"))
    result = quant(work, *TEST)
    assert result.returncode == 0, result.stderr
    assert "cannot be checked" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("content, reason", [
    (b"{", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[]", "expected an object"),
    (b"{}", "no 'written_by'"),
])
def test_a_damaged_record_is_one_line(work, content, reason):
    (work / RECORD).write_bytes(content)
    assert_refused(work, TEST, "quantize_result/calibration.json", "damaged calibration record", reason,
                   "run --quant_mode calib again")


@pytest.mark.parametrize("key, value", [("rows", "1000"), ("rows", True), ("input_size", None),
                                        ("nndct_options", []), ("fast_finetune", 0)])
def test_a_record_with_a_wrong_type_is_one_line(work, key, value):
    record = json.loads((work / RECORD).read_text())
    record[key] = value
    (work / RECORD).write_text(json.dumps(record))
    assert_refused(work, TEST, "damaged calibration record", repr(key))


def test_calibration_at_batch_1_says_so_in_one_line(work):
    result = run_script("vai_q_pytorch_quant.py", *CALIB, "--backend", "builtin", cwd=str(work))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "--batch_size 1: " in lines[0] and "calibrate with --batch_size 64" in lines[0]
    assert json.loads((work / RECORD).read_text())["batch_size"] == 1


def test_the_record_is_rewritten_byte_for_byte(work):
    before = (work / RECORD).read_bytes()
    assert quant(work, *CALIB).returncode == 0
    assert (work / RECORD).read_bytes() == before
