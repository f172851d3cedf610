"""What each DPU target needs from the xmodel and the docker: one table.

    DPUCADF8H  Alveo U200/U250  compiles batch 4  Vitis AI 1.3 to 2.5 (gone from 3.0 on)
               a batch-1 xmodel: vai_c_xir --options '{"input_shape": "4,N"}' (Xilinx's
               DPUCADF8H README); or a batch-4 export (--deploy_batch 4)

A target is recognised by any of its names: the DPU name (DPUCADF8H), a path
through its folder in the docker (.../DPUCADF8H/U250/arch.json), the `target`
of its arch.json (DPUCADF8H_ISA0) or its `fingerprint` (0x700000000000000).
A DPU not in the table keeps the rule of the edge DPUs: batch 1. A DPU name given
to compile.sh must be one of KNOWN_DPUS (inside the docker: a folder of its arch folder).
"""
import json
import os
from dataclasses import dataclass
from typing import Optional, Tuple

ARCH_ROOT = "/opt/vitis_ai/compiler/arch"     # inside the Vitis AI docker
DEFAULT_BATCH = 1                             # the edge DPUs (DPUCZDX8G ...) compile batch-1 xmodels
# The DPU folders under ARCH_ROOT in the Vitis AI releases 1.3 to 3.5: the names a DPU name
# is checked against where the docker's own folder is not on the machine.
KNOWN_DPUS = ("DPUCADF8H", "DPUCADX8G", "DPUCAHX8H", "DPUCAHX8L", "DPUCV2DX8G", "DPUCVDX8G", "DPUCVDX8H",
              "DPUCZDX8G")


@dataclass(frozen=True)
class Target:
    dpu: str                        # the folder name under ARCH_ROOT
    boards: Tuple[str, ...]         # board folders; the first is the one a bare DPU name means
    batch: int                      # the batch of the xmodels its compiler puts on the DPU
    releases: str = ""              # the Vitis AI releases that ship its arch.json ("" unknown)
    dropped_in: str = ""            # the first release without it
    dockers: str = ""               # the docker images to compile for it in
    isa_targets: Tuple[str, ...] = ()     # arch.json "target" values
    fingerprint: Optional[int] = None     # arch.json "fingerprint"
    batch_reason: str = ""          # what its compiler does with another batch
    # Its compiler takes a batch-1 xmodel at `batch` when vai_c_xir gets
    # --options '{"input_shape": "<batch>,<features>"}'; batch_source: who documents it.
    batch_option: bool = False
    batch_source: str = ""
    no_front_end: str = ""          # why it cannot compile a PyTorch xmodel at all ("" if it can)
    # The activations its engines fuse, as xmodel op types (() unknown: not checked).
    activations: Tuple[str, ...] = ()

    def arch_path(self, root=ARCH_ROOT, board=None):
        return os.path.join(root, self.dpu, board or self.boards[0], "arch.json")

    def where_to_compile(self):
        """Where its arch.json exists, for a message about a missing one."""
        if not self.releases:
            return ""
        return "{}'s arch.json ships only in Vitis AI {}{}; compile in {}".format(
            self.dpu, self.releases, " (dropped in {})".format(self.dropped_in) if self.dropped_in else "",
            self.dockers)


DPUCADF8H = Target(
    dpu="DPUCADF8H", boards=("U250", "U200"), batch=4,
    releases="1.3 to 2.5", dropped_in="3.0",
    # 1.3's compiler stops at a leftover (Pdb) breakpoint, so 1.4 to 2.5.
    dockers="the xilinx/vitis-ai-cpu docker of 1.4 to 2.5 (tags 1.4.916, 1.4.1.978, 2.0.0.1103 or a 2.5 tag)",
    isa_targets=("DPUCADF8H_ISA0",), fingerprint=0x700000000000000,
    batch_reason="its compiler (Vitis AI 1.4 to 2.5) assigns every op of another batch to the CPU, "
                 "so the compiled graph would have no DPU subgraph",
    # "DPUCADF8H uses a default batchsize of 4. If the original model's batchsize is not 4, you can
    # specify the batchsize using --options argument with all vai_c_* compilers" (Vitis AI 2.5,
    # examples/DPUCADF8H/README.md). One user found it did not take with Vitis AI 2.0 (Vitis-AI #683):
    # a batch-4 export is the other route.
    batch_option=True, batch_source="Xilinx's DPUCADF8H README",
    # target_factory's description: relu, prelu, leaky_relu (alpha 26/256), relu_six.
    activations=("relu", "leaky-relu", "relu6"))
DPUCADX8G = Target(
    dpu="DPUCADX8G", boards=("ALVEO",), batch=DEFAULT_BATCH,
    no_front_end="vai_c_xir ends with 'NO FRONT END SPECIFIED' for DPUCADX8G: it has no PyTorch/XIR front end; "
                 "use DPUCADF8H on U200/U250")
TARGETS = (DPUCADF8H, DPUCADX8G)

# The command that deploys an xmodel of a given batch (the first rows of the calibration data).
DEPLOY_COMMAND = ("python vai_q_pytorch_quant.py --data_dir data --quant_mode test --deploy "
                  "--deploy_batch {} --batch_size 64")


def by_name(text):
    """The target whose DPU name appears in `text` (a DPU name, an arch path, an arch.json target)."""
    upper = str(text).upper()
    return next((t for t in TARGETS if t.dpu in upper), None)


def by_dpu_name(name):
    """The target whose DPU name is `name` exactly, in any case (DPUCADF8H, dpucadf8h)."""
    return next((t for t in TARGETS if t.dpu == str(name).upper()), None)


def by_fingerprint(value):
    """The target with this arch.json fingerprint (an int, or text such as "0x700000000000000")."""
    try:
        number = value if isinstance(value, int) else int(str(value), 0)
    except ValueError:
        return None
    return next((t for t in TARGETS if t.fingerprint is not None and t.fingerprint == number), None)


def required_batch(target):
    return target.batch if target is not None else DEFAULT_BATCH


def input_shape(batch, input_size):
    """The --options input_shape of an FFN xmodel: "batch,features"."""
    return "{},{}".format(batch, input_size)


def options_text(options):
    """vai_c_xir's --options value: the JSON object, as in Xilinx's example."""
    return json.dumps(options)


def batch_options(target, xmodel_batch, input_size):
    """The vai_c_xir --options entries that give the target's compiler its batch: for a
    batch-1 xmodel of a DPU that takes the option (DPUCADF8H) {"input_shape": "4,N"}, else {}."""
    if target is None or not target.batch_option or xmodel_batch != 1 or target.batch == 1:
        return {}
    return {"input_shape": input_shape(target.batch, input_size)}
