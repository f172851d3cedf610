"""Loss and metrics of the regression: mean squared error on flattened outputs, r^2."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm


class MSE(nn.Module):
    """MSE between the model's (batch, 1) outputs and the (batch,) targets."""

    def forward(self, outputs, targets):
        return F.mse_loss(outputs.flatten(), targets.flatten())


def regression_metrics(outputs, targets):
    """{'mse': ..., 'r^2': ...} over all rows (r^2 = 1 - SS_res / SS_tot)."""
    outputs, targets = outputs.flatten().double(), targets.flatten().double()
    ss_res = ((outputs - targets) ** 2).sum().item()
    ss_tot = ((targets - targets.mean()) ** 2).sum().item()
    return {"mse": ss_res / len(targets), "r^2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")}


def print_metrics(columns):
    """One row per metric, one column per model: {name: {'mse': .., 'r^2': ..}}."""
    print("{:>6} ".format("") + " ".join("{:>14}".format(name) for name in columns))
    for metric in ("mse", "r^2"):
        print("{:>6} ".format(metric) + " ".join("{:>14.6e}".format(m[metric]) for m in columns.values()))


def predict(model, loader, desc=None):
    """(outputs, targets) of the model over every row of the loader, in order."""
    outputs, targets = [], []
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=None, leave=False):
            outputs.append(model(batch["features"]))
            targets.append(batch["targets"])
    return torch.cat(outputs), torch.cat(targets)


def evaluate(model, loader):
    """{'mse': ..., 'r^2': ...} of `model` over every row of `loader`."""
    model.eval()
    return regression_metrics(*predict(model, loader))
