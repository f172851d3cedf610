"""The flow's plumbing, used by every stage: checked reading and atomic writing
(checked_io), safe .pth loading (safe_torch_load), interruption, and the pinning of
torch's CPU kernels (kernels). Standard library, numpy and torch only: nothing here
imports the quantizer (vaiq), the DPU side (dpu) or a stage."""
import os
import sys

from .interruption import exit_on_interrupt
from .kernels import pin_or_exit


def start_stage(module_name):
    """A stage script's first call, before it imports torch: Ctrl-C and SIGTERM end it
    cleanly from here on (interruption.py), and torch's CPU kernels are pinned
    (kernels.py). A module imported by a test or a notebook is left alone."""
    if module_name == "__main__":
        exit_on_interrupt(module_name)
        pin_or_exit(os.path.basename(sys.argv[0]))
