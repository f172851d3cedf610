"""Stages 1 and 2 on bad input: one line on stderr naming the file or flag, a non-zero
exit code, no traceback, and the earlier outputs left byte for byte as they were."""
import os

import numpy as np
import pytest
import torch

import generate_data
from conftest import check_fails
from model import FFN

GOOD_FLAGS = ("--n_epochs", 1, "--batch_size", 64)


@pytest.fixture
def work(tmp_path):
    """tmp_path holding good data/, an earlier checkpoints/ffn_state_dict.pth and logs/,
    a good state dict good.pth and a regular file `afile` (no folder can be made under it)."""
    parts = generate_data.split_rows(generate_data.make_rows(100, 2, 0))
    (tmp_path / "data").mkdir()
    for name, rows in parts.items():
        np.save(str(tmp_path / "data" / (name + ".npy")), rows)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ffn_state_dict.pth").write_bytes(b"earlier checkpoint")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "valid.csv").write_text("step,loss,r2\n1,0.5,0.5\n")
    torch.save(FFN(2).state_dict(), str(tmp_path / "good.pth"))
    (tmp_path / "afile").write_text("a file, not a folder\n")
    return tmp_path


def replace_npy(work, name, array, **kwargs):
    os.remove(str(work / "data" / name))
    np.save(str(work / "data" / name), array, **kwargs)


# ---------------------------------------------------------------- generate_data.py

@pytest.mark.parametrize("args, must_contain", [
    (("--n_samples", 3), ("--n_samples 3", "too small", "at least 20")),
    (("--n_samples", 5), ("--n_samples 5", "too small", "at least 20")),   # would split 3/1/1
    (("--n_samples", 19), ("--n_samples 19", "too small", "at least 20")),
    (("--n_samples", 0), ("--n_samples", "positive")),
    (("--n_samples", "many"), ("--n_samples", "not an integer")),
    (("--input_size", -2), ("--input_size", "positive")),
    (("--output_dir", "afile/sub"), ("afile/sub",)),
    (("--output_dir", "afile"), ("afile",)),
    (("--output_dir", "/proc/data"), ("/proc/data",)),
    (("--output_dir", "/sys/kernel"), ("/sys/kernel", "cannot")),
    (("--seed", -1), ("--seed", "must be in [0, 4294967295]")),
    (("--seed", 2 ** 32), ("--seed", "must be in")),
])
def test_generate_data_bad_flags(work, args, must_contain):
    check_fails(work, "generate_data.py", ("--output_dir", "data") + args, *must_contain)


# ---------------------------------------------------------------- run.py: data

def test_missing_data_folder(work):
    check_fails(work, "run.py", ("--data_dir", "nowhere", "--train") + GOOD_FLAGS, "nowhere", "not found")


def test_missing_train_file(work):
    os.remove(str(work / "data" / "train.npy"))
    check_fails(work, "run.py", ("--data_dir", "data", "--train"), "train.npy", "not found")


def test_missing_eval_file(work):
    check_fails(work, "run.py", ("--evaluate", "--model_name", "good.pth", "--eval_data", "other.npy"),
                "other.npy", "not found")


def test_eval_file_that_is_not_npy(work):
    (work / "data" / "test.csv").write_text("1,2,3\n")
    check_fails(work, "run.py", ("--evaluate", "--model_name", "good.pth", "--eval_data", "test.csv"),
                "test.csv", "not a .npy file")


def test_npy_that_is_not_an_array(work):
    (work / "data" / "train.npy").write_bytes(b"not numpy at all")
    check_fails(work, "run.py", ("--train",), "train.npy", "not a valid .npy file")


def test_npy_that_needs_pickle(work):
    replace_npy(work, "valid.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    check_fails(work, "run.py", ("--train",), "valid.npy", "pickle")


def test_data_file_that_is_a_folder(work):
    os.remove(str(work / "data" / "test.npy"))
    (work / "data" / "test.npy").mkdir()
    check_fails(work, "run.py", ("--evaluate", "--model_name", "good.pth"), "test.npy", "folder")


def test_wrong_number_of_columns(work):
    replace_npy(work, "train.npy", np.zeros((10, 5)))
    check_fails(work, "run.py", ("--train", "--input_size", 2), "train.npy", "5 columns", "input_size 2")


@pytest.mark.parametrize("value, name", [(np.nan, "train.npy"), (-np.inf, "test.npy")])
def test_nan_or_inf_values(work, value, name):
    rows = np.load(str(work / "data" / name))
    rows[3, 1] = value
    replace_npy(work, name, rows)
    check_fails(work, "run.py", ("--train", "--evaluate"), name, "NaN or Inf", "row 3")


def test_empty_array(work):
    replace_npy(work, "train.npy", np.zeros((0, 3)))
    check_fails(work, "run.py", ("--train",), "train.npy", "empty")


# ---------------------------------------------------------------- run.py: flags

@pytest.mark.parametrize("flag, value", [("--batch_size", 0), ("--n_epochs", -1), ("--lr", 0), ("--lr", "nan")])
def test_flags_that_are_not_positive(work, flag, value):
    check_fails(work, "run.py", ("--train", flag, value), flag)


def test_nothing_to_do(work):
    check_fails(work, "run.py", ("--data_dir", "data"), "--train", "--evaluate")


def test_evaluate_without_weights(work):
    check_fails(work, "run.py", ("--evaluate",), "--evaluate", "--model_name")


# ---------------------------------------------------------------- run.py: checkpoints

def test_missing_checkpoint(work):
    check_fails(work, "run.py", ("--evaluate", "--model_name", "gone.pth"), "gone.pth", "not found")


@pytest.mark.parametrize("content", [b"garbage bytes", "half"])
def test_corrupt_checkpoint(work, content):
    if content == "half":
        good = (work / "good.pth").read_bytes()
        content = good[:len(good) // 2]
    (work / "bad.pth").write_bytes(content)
    check_fails(work, "run.py", ("--evaluate", "--model_name", "bad.pth"), "bad.pth", "not a loadable checkpoint")


def test_checkpoint_that_is_not_a_state_dict(work):
    torch.save([1, 2, 3], str(work / "list.pth"))
    check_fails(work, "run.py", ("--evaluate", "--model_name", "list.pth"), "list.pth", "state dict")


def test_checkpoint_for_another_input_size(work):
    torch.save(FFN(4).state_dict(), str(work / "in4.pth"))
    check_fails(work, "run.py", ("--train", "--model_name", "in4.pth"), "in4.pth", "--input_size")


# ---------------------------------------------------------------- run.py: outputs

@pytest.mark.parametrize("flag, folder", [("--checkpoint_dir", "afile/sub"), ("--log_dir", "afile/sub")])
def test_unwritable_output_folder(work, flag, folder):
    check_fails(work, "run.py", ("--train", flag, folder) + GOOD_FLAGS, folder, "cannot create")


def test_checkpoint_path_that_is_a_folder(work):
    os.remove(str(work / "checkpoints" / "ffn_state_dict.pth"))
    (work / "checkpoints" / "ffn_state_dict.pth").mkdir()
    check_fails(work, "run.py", ("--train",) + GOOD_FLAGS, "ffn_state_dict.pth", "folder")


def test_log_folder_holding_other_files(work):
    """The logs replace --log_dir whole when training ends: a folder of other files is refused."""
    check_fails(work, "run.py", ("--train", "--log_dir", "data") + GOOD_FLAGS, "data", "holds files",
                "train.npy")


def test_seed_out_of_numpy_range(work):
    check_fails(work, "run.py", ("--train", "--seed", -5) + GOOD_FLAGS, "--seed")
