"""The second route to the U250: an hls4ml HLS project of a quantizer xmodel, with a C
simulation that must equal the integer DPU reference (dpu/reference.py) bit for bit.

    python hls4ml_project.py [XMODEL] [--output_dir hls_project] [--data data/test.npy]
                             [--save_outputs FILE.npy] [--backend Vitis|Vivado]
                             [--part xcu250-figd2104-2L-e] [--synth]

The xmodel (ours or the real vai_q_pytorch's, any batch: the design takes one row at a
time) becomes an hls4ml layer list with the DPU's types (spec hls4ml.md): every tensor
ap_fixed<8, 8 - fix_point, AP_RND, AP_SAT> (round half up, saturate), weights and biases
passed as their exact values q * 2^-fp, and accumulators wide enough to hold every sum
exactly, so the cast to the output type is the DPU's single rounding. A fused activation
gets the exact sum and does the rounding itself (leaky-relu's 26/256 and relu6's clamp
then act on the exact value, as on the DPU). The project is written, its C simulation
built with g++ (no Xilinx tools; a progress bar on a terminal, a line per step in a log),
every row of --data run through it and compared with the integer reference; one line
gives the result. The project folder is built aside and
swapped in whole, with no time stamp or temporary path in its files.

--synth runs HLS synthesis where the backend's tool is on PATH (Vitis: vitis-run,
Vivado: vivado_hls) and prints latency and resources from its report.

Exit codes: 0 all rows equal; 1 some row differs; 2 bad input or a missing g++/hls4ml;
3 --synth without the HLS tool (the C simulation ran and was equal); 4 Python older than
3.10, where hls4ml 1.3.0 does not install (nothing was done).
"""
import os
import sys
import time

from flow import start_stage

start_stage(__name__)   # first: kernels pinned and Ctrl-C handled before torch is imported

from dpu.simulation import load_model, run_reference
from flow.checked_io import ArgumentParser, atomic_path, check_output_dir, cli, npy_path, save_npy
from hls.project import (PROJECT_FILES, SYNTH_TOOLS, U250_PART, build_csim, build_model, compare, csim_outputs,
                         part_name, require_tools, synthesize, write_project)

EXIT_MISMATCH = 1
EXIT_NO_HLS_TOOL = 3
EXIT_OLD_PYTHON = 4
MIN_PYTHON = (3, 10)


def parse_args():
    # The description is the docstring's first paragraph, whole.
    parser = ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("xmodel", nargs="?", default=os.path.join("quantize_result", "FFN_int.xmodel"),
                        help="the quantizer's <Net>_int.xmodel")
    parser.add_argument("--output_dir", default="hls_project", help="the HLS project folder; replaced whole")
    parser.add_argument("--data", default=os.path.join("data", "test.npy"),
                        help=".npy (rows, input_size + 1): features, then the target")
    parser.add_argument("--save_outputs", type=npy_path, metavar="FILE.npy",
                        help="save the C-simulation outputs, float32 (rows, 1) (default: not saved)")
    parser.add_argument("--backend", choices=sorted(SYNTH_TOOLS), default="Vitis",
                        help="the hls4ml backend: Vitis (Vitis HLS) or Vivado (Vivado HLS)")
    parser.add_argument("--part", type=part_name, default=U250_PART,
                        help="the FPGA part, a Xilinx part name (the default is the Alveo U250's)")
    parser.add_argument("--synth", action="store_true", help="also run HLS synthesis (needs Vitis HLS or Vivado HLS)")
    return parser.parse_args()


# ---------------------------------------------------------------- types

def main():
    args = parse_args()
    if sys.version_info[:2] < MIN_PYTHON:
        print("hls4ml_project.py: skipped: hls4ml 1.3.0 needs Python {}.{} or newer, this is {}".format(
            MIN_PYTHON[0], MIN_PYTHON[1], sys.version.split()[0]))
        return EXIT_OLD_PYTHON
    has_synth_tool = require_tools(args.synth, args.backend)
    check_output_dir(args.output_dir, own_files=PROJECT_FILES)
    model = load_model(args.xmodel)
    features, reference, _ = run_reference(args.xmodel, model, args.data)

    times = []
    synth_line = None
    with atomic_path(args.output_dir) as tmp:
        start = time.perf_counter()
        hls_model = build_model(model, tmp, args.backend, args.part)
        write_project(hls_model, tmp, args.output_dir)
        times.append(time.perf_counter() - start)
        build_csim(hls_model, tmp, args.output_dir)
        times.append(time.perf_counter() - sum(times) - start)
        outputs = csim_outputs(hls_model, features)
        times.append(time.perf_counter() - sum(times) - start)
        equal, text = compare(outputs, reference)
        if args.synth and has_synth_tool and equal:
            synth_line = synthesize(hls_model, args.output_dir, args.backend)
    print("hls4ml_project: {} ({}, {}) written in {:.2f} s, C simulation built in {:.1f} s, "
          "{} rows run in {:.2f} s".format(args.output_dir, args.backend, args.part, times[0], times[1],
                                           len(features), times[2]))
    if args.save_outputs:
        save_npy(args.save_outputs, outputs)
    print("hls4ml_project {}: {}".format(os.path.basename(args.xmodel), text))
    if not equal:
        return EXIT_MISMATCH
    if synth_line:
        print("hls4ml_project: {} synthesis: {}".format(args.backend, synth_line))
    elif args.synth:
        print("hls4ml_project: --synth needs {} ({}) on PATH; the C simulation ran".format(
            "Vitis HLS" if args.backend == "Vitis" else "Vivado HLS", SYNTH_TOOLS[args.backend]), file=sys.stderr)
        return EXIT_NO_HLS_TOOL
    return 0


if __name__ == "__main__":
    cli(main)
