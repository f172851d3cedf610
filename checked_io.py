"""Reading user files with clear errors, writing outputs atomically.

Every stage script reads its inputs through these functions and runs its main
through `cli()`: bad input ends in one line on stderr that names the file and
the problem, a non-zero exit code and no traceback; an interrupted run leaves
the earlier outputs as they were, because every output is written to a
temporary name first and renamed into place.
"""
import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import zipfile

import numpy as np

from interruption import EXIT_INTERRUPTED, interrupted_message, raise_on_interrupt


class InputError(Exception):
    """A problem with the user's files or flags; the message names the file."""


EXIT_INPUT_ERROR = 2


def cli(main):
    """Run `main()` as a command: InputError and interruption end it cleanly."""
    raise_on_interrupt()
    prog = os.path.basename(sys.argv[0])
    try:
        code = main()
    except InputError as e:
        print("{}: error: {}".format(prog, e), file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)
    except KeyboardInterrupt:
        print(interrupted_message(), file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code or 0)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) for bad flags."""

    def error(self, message):
        self.exit(EXIT_INPUT_ERROR, "{}: error: {}\n".format(self.prog, message))


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("{!r} is not an integer".format(text))
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive, got {}".format(value))
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("{!r} is not a number".format(text))
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number, got {}".format(text))
    return value


MAX_SEED = 2 ** 32 - 1   # numpy's seeds are 32-bit


def seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("{!r} is not an integer".format(text))
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError("must be in [0, {}], got {}".format(MAX_SEED, value))
    return value


def npy_path(text):
    """An output file name that np.save keeps as it is."""
    if not text.endswith(".npy"):
        raise argparse.ArgumentTypeError("{}: must be a .npy file".format(text))
    return text


# ---------------------------------------------------------------- reading

def require_file(path, what="file"):
    if os.path.isdir(path):
        raise InputError("{}: is a folder, expected a {}".format(path, what))
    if not os.path.isfile(path):
        raise InputError("{}: {} not found".format(path, what))


def require_dir(path, what="folder"):
    if not os.path.isdir(path):
        raise InputError("{}: {} not found".format(path, what))


def load_npy(path, n_columns=None):
    """A finite, non-empty 2-D float array from a .npy file, loaded without pickle."""
    if not path.endswith(".npy"):
        raise InputError("{}: not a .npy file".format(path))
    require_file(path, "data file")
    # np.load takes any file without the .npy header for a pickle, so a text or
    # random file would otherwise be reported as "needs pickle".
    try:
        with open(path, "rb") as f:
            header = f.read(len(np.lib.format.MAGIC_PREFIX))
    except OSError as e:
        raise InputError("{}: cannot read ({})".format(path, e.strerror or e))
    if header != np.lib.format.MAGIC_PREFIX:
        raise InputError("{}: not a valid .npy file (no NumPy header)".format(path))
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise InputError("{}: holds Python objects (needs pickle); expected a numeric array".format(path))
        # numpy < 1.21 puts a newline into its "Cannot parse header" text: one line here
        raise InputError("{}: not a valid .npy file ({})".format(path, " ".join(str(e).split())))
    except (OSError, EOFError) as e:
        raise InputError("{}: not a valid .npy file ({})".format(path, e))
    except Exception as e:  # a damaged header: numpy lets tokenize and syntax errors through,
        # and a MemoryError when the header claims a shape far larger than the file
        raise InputError("{}: not a valid .npy file (damaged header: {})".format(path, type(e).__name__))
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise InputError("{}: expected a numeric array, found dtype {}".format(path, getattr(array, "dtype", type(array))))
    if array.ndim != 2:
        raise InputError("{}: expected a 2-D array (rows, features + target), found shape {}".format(path, array.shape))
    if array.shape[0] == 0:
        raise InputError("{}: is empty (0 rows)".format(path))
    if n_columns is not None and array.shape[1] != n_columns:
        raise InputError("{}: has {} columns, expected {} (input_size {} + 1 target)".format(
            path, array.shape[1], n_columns, n_columns - 1))
    if not np.isfinite(array).all():
        bad = int(np.argwhere(~np.isfinite(array))[0][0])
        raise InputError("{}: holds NaN or Inf values (first in row {})".format(path, bad))
    return array


def load_torch_file(path, what="checkpoint"):
    """A torch.save file read by safe_torch_load: tensors, state dicts and plain
    containers of numbers and strings; a file never runs code on load, on any torch."""
    import safe_torch_load

    require_file(path, what)
    # The current format is a zip archive; the pre-1.6 one a pickle (first byte 0x80).
    try:
        legacy = safe_torch_load.is_legacy(path)
    except OSError as e:
        raise InputError("{}: cannot read ({})".format(path, e.strerror or e))
    if not (legacy or _is_zipfile(path)):
        raise InputError("{}: not a loadable {} (not a torch.save file, or truncated)".format(path, what))
    try:
        return safe_torch_load.load(path)
    except safe_torch_load.UnsafeError as e:
        raise InputError("{}: not a loadable {} (it holds Python objects besides tensors ({}), which are not "
                         "loaded as they could run code)".format(path, what, e))
    except EOFError:
        raise InputError("{}: not a loadable {} (the file ends early, truncated?)".format(path, what))
    except Exception as e:  # corrupt zip or pickle: every other failure of a damaged file
        text = str(e).strip()
        reason = text.splitlines()[0] if text else type(e).__name__
        raise InputError("{}: not a loadable {} ({})".format(path, what, reason))


def _is_zipfile(path):
    try:
        return zipfile.is_zipfile(path)
    except zipfile.BadZipFile:  # e.g. a damaged end record that reads as a multi-disk archive
        return False


# ---------------------------------------------------------------- writing

def check_output_dir(path, own_files=None):
    """Fail now, not after the work, if `path` cannot be made or written; create nothing.
    With `own_files`, the folder is one that is replaced whole: refuse it when it
    holds anything else, which the replacement would delete."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError("{}: is a file, expected an output folder".format(path))
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError("{}: cannot create output folder ({} is a file)".format(path, existing))
    try:  # os.access says yes to root even where nothing can be made (/proc, /sys, read-only mounts)
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=existing))
    except OSError as e:
        raise InputError("{}: cannot create output folder ({})".format(path, e.strerror or e))
    if own_files is not None and os.path.isdir(path):
        other = sorted(set(os.listdir(path)) - set(own_files))
        if other:
            raise InputError("{}: holds files this stage does not write ({}); it is replaced whole, so choose "
                             "another folder".format(path, ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")))


def _make_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise InputError("{}: cannot create output folder ({})".format(path, e.strerror or e))


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path with the same file name; rename it to `path` on success.

    The temporary file sits in a private folder beside the target, so tools
    that embed the file name (torch.save names its zip archive after it) write
    the same bytes as a direct write, and a failed or interrupted write leaves
    the old file untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    _make_dir(folder)
    try:
        tmp_dir = tempfile.mkdtemp(prefix=".tmp-", dir=folder)
    except OSError as e:
        raise InputError("{}: cannot write in its folder ({})".format(path, e.strerror or e))
    try:
        tmp = os.path.join(tmp_dir, os.path.basename(path))
        yield tmp
        if os.path.isdir(path) and not os.path.isdir(tmp):
            raise InputError("{}: is a folder, cannot write a file there".format(path))
        if os.path.isdir(tmp):
            _replace_dir(tmp, path, tmp_dir)
        else:
            os.replace(tmp, path)
    except OSError as e:
        raise InputError("{}: cannot write ({})".format(path, e.strerror or e))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _replace_dir(new, path, scratch):
    """Swap folder `new` into `path`: two renames, the old one removed last.
    If the second rename fails or is interrupted, the old folder is put back."""
    old = os.path.join(scratch, ".old")
    try:
        if os.path.exists(path):
            os.rename(path, old)
        os.rename(new, path)
    except BaseException:
        if os.path.isdir(old) and not os.path.exists(path):
            os.rename(old, path)
        raise


@contextlib.contextmanager
def uninterrupted():
    """Hold SIGINT and SIGTERM until the block has run: files written in it
    (quant_info.json with bias_corr.pth, the deploy exports) are replaced as a
    set, and the interruption takes effect right after."""
    received = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt


def write_bytes(path, data):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def save_npy(path, array):
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def torch_save(obj, path):
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
