"""Stage 2: run.py trains reproducibly, saves the lowest-validation-loss epoch, evaluates."""
import copy
import csv
import os

import pytest
import torch

from flow import kernels
from flow.checked_io import load_torch_file
from conftest import REPO, run_script
from losses import MSE
from model import FFN
from preprocessors import load_from_state_dict, make_dataloader
from runner import evaluate
from set_seed import set_seed

# A small run whose validation loss goes up and down, so the best epoch (6) is
# neither the first nor the last one.
N_EPOCHS = 8
TRAIN_FLAGS = ("--lr", 1e-1, "--n_epochs", N_EPOCHS, "--batch_size", 16, "--seed", 42)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    result = run_script("generate_data.py", "--n_samples", 2000, "--output_dir", data_dir, "--seed", 42)
    assert result.returncode == 0, result.stderr
    return str(data_dir)


@pytest.fixture(scope="module")
def two_runs(small_data, tmp_path_factory):
    """The same training command twice into two checkpoint folders and one log folder."""
    work = tmp_path_factory.mktemp("runs")
    results = []
    for name in ("first", "second"):
        results.append(run_script("run.py", "--data_dir", small_data, "--train", "--evaluate",
                                  "--checkpoint_dir", work / name, "--log_dir", work / "logs", *TRAIN_FLAGS,
                                  cwd=str(work)))
        assert results[-1].returncode == 0, results[-1].stderr
    return work, results


def read_bytes(path):
    with open(str(path), "rb") as f:
        return f.read()


def read_log(path):
    with open(str(path)) as f:
        return list(csv.DictReader(f))


def test_same_command_same_checkpoint_bytes(two_runs):
    work, _ = two_runs
    first = read_bytes(work / "first" / "ffn_state_dict.pth")
    assert first == read_bytes(work / "second" / "ffn_state_dict.pth")


def test_logs_hold_one_row_per_epoch_of_the_last_run(two_runs):
    work, _ = two_runs
    for loader in ("train", "valid"):
        rows = read_log(work / "logs" / (loader + ".csv"))
        assert list(rows[0]) == ["step", "loss", "r2"]
        assert [int(row["step"]) for row in rows] == list(range(1, N_EPOCHS + 1))


def plain_training(data_dir):
    """The same training as an explicit loop: the valid loss and weights of every epoch."""
    set_seed(42)
    model = FFN(2)
    train_loader = make_dataloader(data_dir, "train.npy", True, 16, input_size=2, seed=42)
    valid_loader = make_dataloader(data_dir, "valid.npy", False, 16, input_size=2, seed=42)
    optimizer = kernels.adam(model.parameters(), lr=1e-1)   # the stage's Adam
    epochs = []
    for _ in range(N_EPOCHS):
        model.train()
        for batch in train_loader:
            MSE()(model(batch["features"]), batch["targets"]).backward()
            optimizer.step()
            optimizer.zero_grad()
        epochs.append((evaluate(model, valid_loader)["mse"], copy.deepcopy(model.state_dict())))
    return epochs


def test_saved_weights_are_the_lowest_validation_loss_epoch(two_runs, small_data):
    work, _ = two_runs
    epochs = plain_training(small_data)
    losses = [loss for loss, _ in epochs]
    best = losses.index(min(losses))
    assert 0 < best < N_EPOCHS - 1, "the run must not be monotonic for this test to mean anything"

    logged = [float(row["loss"]) for row in read_log(work / "logs" / "valid.csv")]
    assert logged == pytest.approx(losses, rel=1e-9)

    saved = load_torch_file(str(work / "first" / "ffn_state_dict.pth"))
    best_state = epochs[best][1]
    assert list(saved) == list(best_state)
    for key in saved:
        assert torch.equal(saved[key], best_state[key]), key
    assert not torch.equal(saved["l3.bias"], epochs[-1][1]["l3.bias"])


def test_train_and_evaluate_prints_the_best_weights_metrics(two_runs, small_data):
    work, results = two_runs
    model = load_from_state_dict(FFN(2), str(work / "first" / "ffn_state_dict.pth"))
    metrics = evaluate(model, make_dataloader(small_data, "test.npy", False, 64, input_size=2))
    printed = dict(line.split(": ") for line in results[0].stdout.splitlines() if line.startswith(("mse:", "r^2:")))
    assert float(printed["mse"]) == pytest.approx(metrics["mse"], rel=1e-5)
    assert float(printed["r^2"]) == pytest.approx(metrics["r^2"], abs=1e-7)
    assert "ffn_state_dict.pth" in results[0].stdout.splitlines()[-1]


def shipped_checkpoint():
    return os.path.join(REPO, "checkpoints", "ffn_state_dict.pth")


def test_shipped_checkpoint_reaches_the_target_on_test_data():
    model = load_from_state_dict(FFN(2), shipped_checkpoint())
    loader = make_dataloader(os.path.join(REPO, "data"), "test.npy", False, 64, input_size=2)
    metrics = evaluate(model, loader)
    assert metrics["mse"] <= 1e-5
    assert metrics["r^2"] > 0.9999


def test_evaluate_prints_mse_and_r2(tmp_path):
    result = run_script("run.py", "--data_dir", os.path.join(REPO, "data"), "--evaluate",
                        "--model_name", shipped_checkpoint(), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("mse: ") and float(lines[0].split()[1]) <= 1e-5
    assert lines[1].startswith("r^2: ") and float(lines[1].split()[1]) > 0.9999
    assert "test.npy" in lines[-1]
    assert os.listdir(str(tmp_path)) == []  # evaluating writes nothing


def test_training_into_a_pipe_prints_one_line_per_epoch(two_runs):
    work, results = two_runs
    lines = results[0].stdout.splitlines()
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == N_EPOCHS
    valid = read_log(work / "logs" / "valid.csv")
    first = epoch_lines[0].split(": ", 1)[1]   # "train loss A, valid loss B; best epoch 1 (B)"
    assert float(first.split("valid loss ")[1].split(";")[0]) == pytest.approx(float(valid[0]["loss"]), rel=1e-6)
    assert epoch_lines[-1].startswith("epoch {0}/{0}: ".format(N_EPOCHS))
    # the lowest valid loss of the log (epoch 6 with torch 2.13; trained weights differ across torch versions)
    best = min(range(len(valid)), key=lambda i: float(valid[i]["loss"])) + 1
    assert "best epoch {} ".format(best) in epoch_lines[-1]
    assert results[0].stderr == ""   # no progress bars
    assert len(results[0].stdout) < 100 * (N_EPOCHS + 4)


def test_evaluate_prints_the_metrics_once(two_runs):
    _, results = two_runs
    printed = results[0].stdout
    assert printed.count("mse") == 2   # the "mse:" line, and the training's "lowest valid mse"
    assert printed.count("r^2") == 1
