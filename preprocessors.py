"""Data: a Dataset over one .npy file of rows (features..., target) and its loaders."""
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from flow.checked_io import InputError, load_npy, load_torch_file, require_dir
from model import FFN
from set_seed import DEVICE


class NpyDataset(Dataset):
    """Rows of a float .npy file: the first `input_size` columns are the features,
    the last one the target. Items are {'features': float32[n], 'targets': float32}."""

    def __init__(self, path, input_size=None, subset_len=None, sample_method="first", seed=0):
        rows = load_npy(path, None if input_size is None else input_size + 1)
        if subset_len is not None:
            if subset_len > len(rows):
                raise InputError("{}: has {} rows, fewer than subset_len {}".format(path, len(rows), subset_len))
            if sample_method == "random":
                rows = rows[np.random.RandomState(seed).choice(len(rows), subset_len, replace=False)]
            else:  # "first": the first rows in order, as the quantizer's calibration needs
                rows = rows[:subset_len]
        self.path = path
        with np.errstate(over="ignore"):
            rows = rows.astype(np.float32)
        if not np.isfinite(rows).all():   # finite in float64, beyond float32 (about 3.4e38)
            raise InputError("{}: holds values beyond the float32 range (first in row {})".format(
                path, int(np.argwhere(~np.isfinite(rows))[0][0])))
        self.features = torch.from_numpy(np.ascontiguousarray(rows[:, :-1]))
        self.targets = torch.from_numpy(np.ascontiguousarray(rows[:, -1]))

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return {"features": self.features[index], "targets": self.targets[index]}


def make_dataloader(data_dir, data_file, is_train, batch_size, subset_len=None, sample_method="first",
                    input_size=None, seed=0):
    """One loader over data_dir/data_file; training loaders shuffle with a seeded generator."""
    require_dir(data_dir, "data folder")
    dataset = NpyDataset(os.path.join(data_dir, data_file), input_size, subset_len, sample_method, seed)
    generator = torch.Generator().manual_seed(seed) if is_train else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=is_train, generator=generator)


def make_dataloaders(data_dir, batch_size, input_size=None, seed=0):
    """{name: loader} for every .npy in data_dir; 'train' shuffles, the others keep order."""
    require_dir(data_dir, "data folder")
    names = sorted(f[:-4] for f in os.listdir(data_dir) if f.endswith(".npy"))
    if not names:
        raise InputError("{}: holds no .npy files".format(data_dir))
    return {
        name: make_dataloader(data_dir, name + ".npy", name == "train", batch_size, input_size=input_size, seed=seed)
        for name in names
    }


def _describe(value):
    """What a loaded checkpoint holds instead of a state dict, in a few words."""
    if isinstance(value, dict):
        return "an empty dict" if not value else "a dict of {}".format(
            ", ".join(sorted({type(v).__name__ for v in value.values()})))
    return "a {}".format(type(value).__name__)


def checkpoint_path(checkpoint_dir, model_name):
    """--model_name as given when it exists or names a folder too, else inside --checkpoint_dir."""
    if os.path.exists(model_name) or os.path.dirname(model_name):
        return model_name
    return os.path.join(checkpoint_dir, model_name)


def load_ffn(checkpoint_dir, model_name, input_size):
    """The float FFN of a checkpoint, ready to evaluate."""
    return load_from_state_dict(FFN(input_size), checkpoint_path(checkpoint_dir, model_name)).to(DEVICE).eval()


# What a checkpoint that is not a state dict needs instead, for its error line.
SAVE_STATE_DICT = "a whole model saved with torch.save(model)? Save its state dict instead: " \
                  "torch.save(model.state_dict(), {!r})"


def _is_state_dict(value):
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def load_from_state_dict(model, path):
    """Load a state dict (weights only, never code) into `model`, with clear errors."""
    state = load_torch_file(path, "checkpoint", how_to_save=SAVE_STATE_DICT.format(path))
    if isinstance(state, dict) and not _is_state_dict(state):
        # A training checkpoint ({"model_state_dict": ..., "optimizer_state_dict": ..., "epoch": ...}):
        # name the key of the state dict inside.
        inside = [key for key, value in state.items() if _is_state_dict(value)]
        if inside:
            raise InputError("{}: is not a state dict of tensors but a dict holding {} under the key{} {}; save "
                             "{}: torch.save({}, 'ffn_state_dict.pth')".format(
                                 path, "a state dict" if len(inside) == 1 else "state dicts",
                                 "" if len(inside) == 1 else "s", ", ".join(repr(k) for k in inside),
                                 "that one" if len(inside) == 1 else "the model's",
                                 "torch.load({!r})[{!r}]".format(path, inside[0]) if len(inside) == 1 else
                                 "torch.load({!r})[KEY]".format(path)))
    if not _is_state_dict(state):
        raise InputError("{}: is not a state dict of tensors ({}); save one with torch.save(model.state_dict(), "
                         "PATH)".format(path, _describe(state)))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise InputError("{}: keys do not match the model (missing {}, unexpected {})".format(path, missing, extra))
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise InputError("{}: {} has shape {}, the model needs {} (a checkpoint for another --input_size?)".format(
                path, key, tuple(state[key].shape), tuple(tensor.shape)))
        if not torch.isfinite(state[key]).all():
            raise InputError("{}: {} holds NaN or Inf".format(path, key))
    model.load_state_dict(state)
    return model
