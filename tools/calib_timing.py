"""One calibration of an untrained FFN on random rows, timed, for tools/benchmark.py.

It is the work that tools/benchmark.py compares with pinned and with native kernels,
and between the built-in quantizer and the real one.

  python tools/calib_timing.py --rows 100000 --backend builtin --result timing.json

The torch kernels are pinned as in every stage (flow/kernels.py), or left native with
NATIVE_KERNELS=1. The time covers the quantizer's own work: building it on the model,
the forwards of every batch (in order, batches of --batch_size) and export_quant_config;
not the start-up. It goes to --result as JSON ({"seconds": ...}); stdout is the
quantizer's. --backend nndct runs the real vai_q_pytorch (pytorch_nndct) and needs a
Python where it is installed: of this repository it then imports only model.py and flow/
(standard library), so any Python with torch runs it.
"""
import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from flow import start_stage  # noqa: E402  (standard library only)

start_stage(__name__)   # first: kernels pinned and Ctrl-C handled before torch is imported


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, default=100000, help="random rows to calibrate on")
    parser.add_argument("--input_size", type=int, default=64, help="the FFN's input size")
    parser.add_argument("--batch_size", type=int, default=64, help="rows per forward")
    parser.add_argument("--backend", choices=["builtin", "nndct"], default="builtin",
                        help="the built-in quantizer (vaiq) or the real one (pytorch_nndct)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's weights and of the rows")
    parser.add_argument("--result", required=True, default=argparse.SUPPRESS,
                        help="JSON file that gets the time (required)")
    args = parser.parse_args()
    if args.rows < 1 or args.input_size < 1 or args.batch_size < 1:
        parser.error("--rows, --input_size and --batch_size must be positive")
    sys.argv = sys.argv[:1]   # both quantizers read their --nndct_* options from the command line

    import torch
    torch.set_num_threads(1)   # set_seed.THREADS, without importing the stage modules
    from model import FFN
    if args.backend == "nndct":
        from pytorch_nndct.apis import torch_quantizer
    else:
        from vaiq.quantizer import torch_quantizer

    torch.manual_seed(args.seed)
    model = FFN(args.input_size).eval()
    x = torch.randn(args.rows, args.input_size, generator=torch.Generator().manual_seed(args.seed))
    with tempfile.TemporaryDirectory() as output_dir:
        start = time.perf_counter()
        quantizer = torch_quantizer("calib", model, (x[:args.batch_size],), output_dir=output_dir)
        with torch.no_grad():
            for first in range(0, args.rows, args.batch_size):
                quantizer.quant_model(x[first:first + args.batch_size])
        quantizer.export_quant_config()
        seconds = time.perf_counter() - start
    with open(args.result, "w") as f:
        json.dump({"seconds": seconds, "backend": args.backend, "rows": args.rows,
                   "native": os.environ.get("NATIVE_KERNELS") == "1"}, f)


if __name__ == "__main__":
    main()
