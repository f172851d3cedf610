"""Ctrl-C and SIGTERM end a stage with exit code 130 and one line, from its first line on.

A stage script calls `exit_on_interrupt(__name__)` before its other imports: torch
alone takes one to several seconds to import, and an interruption then would
otherwise print a long traceback (SIGINT) or end the process silently with 143
(SIGTERM). `checked_io.cli` then turns both signals into KeyboardInterrupt for the
script's main, so that its cleanup runs and it ends the same way. Only the
standard library is imported here, so the handlers are in place within
milliseconds of the start.
"""
import os
import signal
import sys

EXIT_INTERRUPTED = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def interrupted_message():
    return "{}: interrupted; earlier outputs are left as they were".format(os.path.basename(sys.argv[0]))


def _exit_at_once(signum, frame):
    # While a script imports it has written nothing: end at once. os._exit, because
    # a SystemExit raised inside an import could be caught by the package imported.
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)   # a second signal must not print a second line
    try:
        sys.stderr.write(interrupted_message() + "\n")
        sys.stderr.flush()
    finally:
        os._exit(EXIT_INTERRUPTED)


def exit_on_interrupt(module_name):
    """In a script run as a command (`module_name` is its __name__, "__main__"):
    an interruption before main runs exits at once; a module imported by a test is
    left alone."""
    if module_name == "__main__":
        _install(_exit_at_once, _exit_at_once)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def raise_on_interrupt():
    """Both signals raise KeyboardInterrupt (what Ctrl-C does by default), so that an
    interrupted main unwinds: atomic writes remove their temporary files."""
    _install(signal.default_int_handler, _raise_keyboard_interrupt)


def _install(on_sigint, on_sigterm):
    # A signal ignored from the start stays ignored, as Python itself keeps it: a
    # shell starts its background jobs with SIGINT ignored, so that Ctrl-C does not
    # reach them.
    for sig, handler in ((signal.SIGINT, on_sigint), (signal.SIGTERM, on_sigterm)):
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, handler)
