"""Stage 2 on Catalyst: train the FFN with Adam on the MSE, keep the best weights; evaluate.
The QAT stage (vai_q_pytorch_qat.py) trains its quantized model through the same runner
(`train_qat`).

Two Catalyst 22.4 behaviours shape this module:
- `SupervisedRunner` with a criterion fails on accelerate 1.x (AttributeError: TPU),
  so `FFNRunner` is a plain `dl.Runner` that computes its loss and metrics itself;
- Catalyst's checkpoint callback saves the last epoch's weights as `model.best.pth`,
  so the runner keeps the state dict of the lowest-validation-loss epoch in memory
  and the caller saves exactly that.

Per-epoch metrics go to `<log_dir>/train.csv` and `<log_dir>/valid.csv`
(columns: step, loss, r2; `step` is the epoch, `loss` the MSE over the loader),
the run's hyper-parameters to `<log_dir>/hparams.json`.
On a terminal the console shows Catalyst's progress bars and metric lines; into a
file or a pipe, one line per epoch.
"""
import collections
import copy
import math
import os
import sys

import torch
from catalyst import dl
from catalyst.utils import set_global_seed

from flow import kernels
from flow.checked_io import InputError, atomic_path
from losses import MSE, evaluate, regression_metrics  # noqa: F401 - evaluate, for callers of runner

# What `train` returns: the weights of the best epoch, its number and validation loss.
Best = collections.namedtuple("Best", ["state_dict", "epoch", "valid_loss"])


class Diverged(Exception):
    """Raised in the epoch loop of `train_qat` when the loss or a parameter stops being finite."""

    def __init__(self, epoch, batch, problem):
        super().__init__("epoch {}, batch {}: {}".format(epoch, batch, problem))
        self.epoch, self.batch, self.problem = epoch, batch, problem


class FFNRunner(dl.Runner):
    """Forward, loss and optimiser step per batch; loss and r2 per loader;
    the state dict of the epoch with the lowest validation loss.

    For `train_qat` also: `penalty()`, a term added to the loss that is minimized (the
    logged loss stays the MSE); `check()`, called after each optimizer step, a text when the
    parameters diverged (the loss is checked too: both stop the run with `Diverged`);
    `schedule(epoch)`, called after each epoch (the next epoch's learning rates)."""

    def __init__(self, optimizer, criterion=None, penalty=None, check=None, schedule=None):
        super().__init__()
        # The optimiser is stepped here, not handed to Catalyst's engine: on one CPU
        # accelerate's wrapper adds nothing to the step but a package look-up on every
        # call, which alone made the training about 1.5x slower.
        self.adam = optimizer
        self.loss_fn = criterion if criterion is not None else MSE()
        self.penalty, self.check, self.schedule = penalty, check, schedule
        self.best = Best(None, 0, math.inf)

    def on_loader_start(self, runner):
        super().on_loader_start(runner)
        # The loader's metrics are computed once over all its rows, not averaged per batch.
        self.outputs, self.targets = [], []

    def handle_batch(self, batch):
        outputs = self.model(batch["features"])
        loss = self.loss_fn(outputs, batch["targets"])
        self.batch_metrics["loss"] = loss.detach()  # shown in the progress bar
        self.outputs.append(outputs.detach())
        self.targets.append(batch["targets"])
        if self.is_train_loader:
            if self.penalty is not None:
                loss = loss + self.penalty()
            if self.check is not None and not torch.isfinite(loss.detach()).all():
                raise Diverged(self.epoch_step, self.loader_batch_step, "the loss became {}".format(
                    "nan" if torch.isnan(loss.detach()).any() else "inf"))
            self.engine.backward(loss)
            self.adam.step()
            self.adam.zero_grad()
            problem = self.check() if self.check is not None else None
            if problem:
                raise Diverged(self.epoch_step, self.loader_batch_step, problem)

    def on_loader_end(self, runner):
        metrics = regression_metrics(torch.cat(self.outputs), torch.cat(self.targets))
        self.loader_metrics["loss"] = metrics["mse"]
        self.loader_metrics["r2"] = metrics["r^2"]
        super().on_loader_end(runner)
        # Strictly lower: on a tie the earlier epoch stays. A NaN loss never wins.
        if self.is_valid_loader and metrics["mse"] < self.best.valid_loss:
            model = self.engine.unwrap_model(self.model)
            self.best = Best(copy.deepcopy(model.state_dict()), self.epoch_step, metrics["mse"])

    def on_epoch_end(self, runner):
        # Shown on the console's "* Epoch" line, which is otherwise empty.
        self.epoch_metrics["_epoch_"].update(best_epoch=self.best.epoch, best_valid_loss=self.best.valid_loss)
        super().on_epoch_end(runner)
        if self.schedule is not None:
            self.schedule(self.epoch_step)


class CSVLogger(dl.CSVLogger):
    """Catalyst's CSV logger, but every run starts its files afresh.

    Catalyst appends to `<loader>.csv`, so a second run would leave a second
    header in the middle of the file and the plot would mix two runs.
    """

    def log_metrics(self, metrics, scope, runner):
        if scope != "epoch":
            return
        # "_epoch_" holds epoch-wide values such as a scheduler's lr; there are none here.
        metrics = {key: value for key, value in metrics.items() if key != "_epoch_"}
        for key, values in metrics.items():
            if key not in self.loggers:
                self.loggers[key] = open(os.path.join(self.logdir, key + ".csv"), "w")
                self._make_header(metrics=values, loader_key=key)
        super().log_metrics(metrics, scope, runner)


class EpochLineLogger(dl.ConsoleLogger):
    """One line per epoch: train and valid loss, and the best epoch so far.

    For a file or a pipe: Catalyst's progress bars redraw themselves after every
    batch, which made 440 KB of log for the 32 epochs of the Makefile's training.
    (A ConsoleLogger, so that Catalyst adds no console logger of its own.)"""

    def log_metrics(self, metrics, scope, runner):
        if scope != "epoch":
            return
        print("epoch {}/{}: train loss {:.6e}, valid loss {:.6e}; best epoch {} ({:.6e})".format(
            runner.epoch_step, runner.num_epochs, float(metrics["train"]["loss"]), float(metrics["valid"]["loss"]),
            runner.best.epoch, runner.best.valid_loss), flush=True)


def on_terminal():
    return sys.stdout.isatty() and sys.stderr.isatty()


def train(model, train_loader, valid_loader, lr=1e-3, n_epochs=1, seed=42, log_dir="logs",
          hparams=None, verbose=None):
    """Train `model` with Adam on the MSE; return the `Best` epoch (weights kept in memory).

    `model` itself ends with the last epoch's weights; load `best.state_dict` to use the best.
    verbose: Catalyst's progress bars and metric lines (True), one line per epoch
    (False), or the first on a terminal and the second elsewhere (None).
    """
    if verbose is None:
        verbose = on_terminal()
    set_global_seed(seed)   # Catalyst's global seed: the same random, numpy and torch seeds as set_seed
    runner = FFNRunner(kernels.adam(model.parameters(), lr=lr))
    # The logs are written to a temporary folder that replaces log_dir at the end,
    # so an interrupted training leaves the earlier logs with the earlier checkpoint.
    with atomic_path(log_dir) as tmp_log_dir:
        os.makedirs(tmp_log_dir)
        _run(runner, model, train_loader, valid_loader, tmp_log_dir, hparams, seed, n_epochs, verbose)
    if runner.best.state_dict is None:
        raise InputError("--lr {}: training diverged, the validation loss was NaN in every epoch".format(lr))
    return runner.best


def train_qat(model, optimizer, train_loader, valid_loader, n_epochs, seed, log_dir, hparams=None, penalty=None,
              check=None, schedule=None, verbose=None):
    """Train a QAT model (QatProcessor.trainable_model()) with `optimizer` on the MSE plus
    `penalty()`, keeping the epoch with the lowest MSE on valid_loader (the quantized model's);
    train.csv, valid.csv and hparams.json go into log_dir, an existing folder (the caller's,
    written atomically as a whole). `check` and `schedule`: FFNRunner's.

    Returns (Best, None), or (Best of the epochs before, Diverged) when the loss or a
    parameter stopped being finite: the training stops there."""
    if verbose is None:
        verbose = on_terminal()
    set_global_seed(seed)
    runner = FFNRunner(optimizer, penalty=penalty, check=check, schedule=schedule)
    try:
        _run(runner, model, train_loader, valid_loader, log_dir, hparams, seed, n_epochs, verbose)
    except Diverged as stopped:
        return runner.best, stopped
    return runner.best, None


def _run(runner, model, train_loader, valid_loader, log_dir, hparams, seed, n_epochs, verbose):
    runner.train(
        model=model,
        engine=dl.CPUEngine(),
        loaders=collections.OrderedDict([("train", train_loader), ("valid", valid_loader)]),
        # No `logdir`: it would add Catalyst's checkpoint callback (last weights
        # saved as "best") and a TensorBoard logger; the loggers are given instead.
        loggers={"console": dl.ConsoleLogger() if verbose else EpochLineLogger(), "csv": CSVLogger(log_dir)},
        hparams=hparams,
        seed=seed,
        num_epochs=n_epochs,
        verbose=verbose,
    )
