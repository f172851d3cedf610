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
# numpy 2 imports numpy.random on first use, and a KeyboardInterrupt raised inside that
# import (a signal arriving as main first calls np.random) is lost: the stage then runs
# on to its end. Imported here, with the script's imports, where a signal ends it at once.
import numpy.random  # noqa: F401,E402

from flow.interruption import EXIT_INTERRUPTED, SIGNALS, interrupted_message, raise_on_interrupt


class InputError(Exception):
    """A problem with the user's files or flags; the message names the file."""


EXIT_INPUT_ERROR = 2


def cli(main, hard_exit=False):
    """Run `main()` as a command: InputError and interruption end it cleanly.

    Once main has returned its work is done and written: a signal then is ignored
    rather than turned into a status of -2 with no word at interpreter shutdown.
    hard_exit: end with os._exit after flushing, without Python's exit-time cleanup,
    where torch 1.10's ONNX exporter (the Vitis AI 2.5 docker's) can hang or crash
    after every file was written."""
    prog = os.path.basename(sys.argv[0])
    code = None
    try:
        try:
            raise_on_interrupt()   # inside: a signal while the handlers change raises here too
            code = main() or 0
        finally:
            _ignore_signals()
    except InputError as e:
        print("{}: error: {}".format(prog, e), file=sys.stderr)
        code = EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        # A signal caught between main's return and the line above leaves its result as it is.
        if code is None:
            print(interrupted_message(), file=sys.stderr)
            code = EXIT_INTERRUPTED
    if hard_exit:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def note(text):
    """One line on stderr that the command says and goes on: "<script>: note: text"."""
    print("{}: note: {}".format(os.path.basename(sys.argv[0]), text), file=sys.stderr)


def _ignore_signals():
    # SIG_IGN also survives interpreter shutdown, where Python resets its own handlers to SIG_DFL.
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class HelpFormatter(argparse.HelpFormatter):
    """Every argument's default in its help: "(default: X)" is appended where the text does
    not give it itself ("(default: ...)" in words, "(required)"); a switch's is "off"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default: " in text or "(required)" in text or action.default is argparse.SUPPRESS:
            return text
        if action.required and action.option_strings:
            return text + " (required)"
        if action.nargs == 0 and isinstance(action.default, bool):     # store_true / store_false
            return text + " (default: {})".format("on" if action.default else "off")
        if action.default is None or (not action.option_strings and action.nargs not in ("?", "*")):
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) for bad flags, and every default in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super(ArgumentParser, self).__init__(*args, **kwargs)

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


# ---------------------------------------------------------------- progress

class Progress(object):
    """Progress of a wait of several seconds (a g++ build, fast finetune). On a terminal
    (stderr is one) a tqdm bar on stderr, gone when done; elsewhere, as in a log file,
    one plain line per note() on stdout, without carriage returns.

    advance(n): n of `total` units done (the bar only); note(text): a step's line (on the
    terminal: the bar's text). With ticking, the bar's clock moves between advances too."""

    TICK = 0.5   # seconds between redraws of a ticking bar

    def __init__(self, desc, total, unit="step", ticking=False, terminal=None, prog=None):
        self.desc, self.total = desc, total
        self.prog = prog or os.path.basename(sys.argv[0])
        self.bar = None
        self._stop = None
        if sys.stderr.isatty() if terminal is None else terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)
            if ticking:
                import threading

                self._stop = threading.Event()
                thread = threading.Thread(target=self._tick, name="progress")
                thread.daemon = True
                thread.start()

    def _tick(self):
        while not self._stop.wait(self.TICK):
            self.bar.refresh()

    def advance(self, n=1):
        if self.bar is not None:
            self.bar.update(n)

    def note(self, text):
        if self.bar is not None:
            self.bar.set_postfix_str(text)
        else:
            print("{}: {}: {}".format(self.prog, self.desc, text))
            sys.stdout.flush()

    def close(self):
        if self._stop is not None:
            self._stop.set()
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- reading

def require_file(path, what="file"):
    if os.path.isdir(path):
        raise InputError("{}: is a folder, expected a {}".format(path, what))
    if not os.path.isfile(path):
        raise InputError("{}: {} not found".format(path, what))


def require_dir(path, what="folder"):
    if not os.path.isdir(path):
        raise InputError("{}: {} not found".format(path, what))


def load_npy(path, n_columns=None, columns=None):
    """A finite, non-empty 2-D float array from a .npy file, loaded without pickle.
    n_columns: the number of columns it must have; columns: what they are, for the
    error (default: "input_size N + 1 target", the rows of the flow's data)."""
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
    if array.dtype.kind in "iu":
        # Whole numbers where the flow expects measurements: refused rather than trained on silently.
        raise InputError("{}: holds {} values; the flow takes float data (convert with x.astype('float64'))".format(
            path, array.dtype.name))
    if array.ndim != 2:
        raise InputError("{}: expected a 2-D array (rows, features + target), found shape {}".format(path, array.shape))
    if array.shape[0] == 0:
        raise InputError("{}: is empty (0 rows)".format(path))
    if n_columns is not None and array.shape[1] != n_columns:
        raise InputError("{}: has {} columns, expected {} ({})".format(
            path, array.shape[1], n_columns, columns or "input_size {} + 1 target".format(n_columns - 1)))
    if not np.isfinite(array).all():
        bad = int(np.argwhere(~np.isfinite(array))[0][0])
        raise InputError("{}: holds NaN or Inf values (first in row {})".format(path, bad))
    return array


def load_torch_file(path, what="checkpoint", how_to_save=None):
    """A torch.save file read by safe_torch_load: tensors, state dicts and plain
    containers of numbers and strings; a file never runs code on load, on any torch.
    how_to_save: added to the error when the file holds other Python objects (what to save
    instead, e.g. a state dict)."""
    from flow import safe_torch_load

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
                         "loaded as they could run code){}".format(path, what, e,
                                                                    "; " + how_to_save if how_to_save else ""))
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
