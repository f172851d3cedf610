"""Stage 3: post-training int8 quantization with vai_q_pytorch.

  float  evaluate the float model on --calib_data
  calib  run the quantizer's calibration over the first --subset_len rows of
         --calib_data in batches of --batch_size; write quant_info.json (and
         bias_corr.pth) to --output_dir, with calibration.json: what was
         calibrated, which test mode checks (quantization/calibration_record.py)
  test   load them and run the quantized model; --evaluate compares it with the
         float model, --deploy exports the xmodel and the deploy-check data

The real quantizer (pytorch_nndct, in the Vitis AI docker) is used when it can be
imported; elsewhere the built-in one (package vaiq) computes the same bit for bit,
following release 3.5 or, with --vai_release 2.5, the Vitis AI 2.5 docker's.
Options --nndct_* (e.g. --nndct_param_corr False) go to the quantizer.
"""
import os

from flow import start_stage

start_stage(__name__)   # first: kernels pinned and Ctrl-C handled before torch is imported

from flow.checked_io import ArgumentParser, npy_path, positive_int, seed
from vaiq.options import DEFAULT_RELEASE, RELEASES, check_supported_values, split_nndct_args

DEFAULT_DEPLOY_BATCH = 1   # the original flow's, as vai_q_pytorch wants; DPUCADF8H compiles it via --options


def build_parser():
    """The flags; needs only argparse and vaiq.options, so that --help answers before torch is imported."""
    parser = ArgumentParser(description=__doc__.splitlines()[0],
                            epilog="Options --nndct_* (e.g. --nndct_param_corr False) go to the quantizer.")
    parser.add_argument("--data_dir", default="data", help="folder of --calib_data")
    parser.add_argument("--calib_data", default="test.npy", help="rows for calibration and evaluation, in --data_dir")
    parser.add_argument("--input_size", type=positive_int, default=2, help="features per row of the data")
    parser.add_argument("--checkpoint_dir", default="checkpoints", help="folder of --model_name")
    parser.add_argument("--model_name", default="ffn_state_dict.pth", help="state dict: a file name in --checkpoint_dir, or a path")
    parser.add_argument("--subset_len", type=positive_int, default=None,
                        help="use the first N rows (default: all)")
    parser.add_argument("--batch_size", type=positive_int, default=1,
                        help="rows per forward in calibration and evaluation")
    parser.add_argument("--quant_mode", default="calib", choices=["float", "calib", "test"],
                        help="float: evaluate the float model; calib: calibrate, write the quantization "
                        "parameters; test: run the quantized model from them")
    parser.add_argument("--deploy", action="store_true", help="test mode: export xmodel, deploy-check data, "
                        "TorchScript and ONNX")
    parser.add_argument("--deploy_batch", type=positive_int, default=None, metavar="N",
                        help="with --deploy: the batch of the exported xmodel, the deploy forward runs the first N "
                        "rows (default: {}, as vai_q_pytorch wants: compile.sh gives it to DPUCADF8H's compiler as "
                        "batch 4 with vai_c_xir --options; 4: DPUCADF8H's batch in the xmodel itself)".format(
                            DEFAULT_DEPLOY_BATCH))
    parser.add_argument("--evaluate", action="store_true", help="print float and quantized mse and r^2")
    parser.add_argument("--fast_finetune", action="store_true", help="AdaQuant after calibration (calib), "
                        "use its parameters (test)")
    parser.add_argument("--output_dir", default="quantize_result",
                        help="folder of the quantization parameters and the deploy exports")
    parser.add_argument("--backend", default="auto", choices=["auto", "nndct", "builtin"],
                        help="auto: pytorch_nndct if importable, else the built-in quantizer")
    parser.add_argument("--vai_release", choices=sorted(RELEASES), default=None,
                        help="the vai_q_pytorch release whose defaults and file formats apply (default: the "
                        "installed pytorch_nndct's; the built-in: {}); 2.5 is the Vitis AI 2.5 docker's, the last "
                        "with DPUCADF8H".format(DEFAULT_RELEASE))
    parser.add_argument("--save_outputs", type=npy_path, metavar="FILE.npy",
                        help="float/test mode: save the model's outputs on the rows, float32 (n, 1) "
                        "(default: not saved)")
    parser.add_argument("--seed", type=seed, default=42, help="seed of torch and numpy")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    _, unknown = split_nndct_args(rest)
    if unknown:
        parser.error("unrecognized arguments: {}".format(" ".join(unknown)))
    check_supported_values(rest)
    return args


if __name__ == "__main__":
    # --help and bad flags answer here, before the seconds that torch takes to import; the
    # --nndct_* values are checked in main.
    build_parser().parse_known_args()

import torch

from quantization import backend as backends
from quantization import calibration_record
from flow.checked_io import InputError, check_output_dir, cli, save_npy, uninterrupted
from losses import predict, print_metrics, regression_metrics
from preprocessors import checkpoint_path, load_ffn, make_dataloader
from set_seed import DEVICE, set_seed


def save_outputs(path, outputs):
    if path:
        save_npy(path, outputs.numpy().astype("float32").reshape(-1, 1))


def loss_on(model, loader, seen=None):
    """The run function vai_q_pytorch's fast_finetune calls: the model's MSE on the
    loader; its outputs are appended to the list `seen`."""
    outputs, targets = predict(model, loader, "loss")
    if seen is not None:
        seen.append(outputs)
    return regression_metrics(outputs, targets)["mse"]


def print_finetune_losses(seen, float_outputs, targets):
    """fast_finetune calls the run function twice before it tunes (vai_q_pytorch 3.5, and
    the built-in as it): with quantization off, then as one more calibration pass. That
    second call is the int8 model before finetuning; the finetuned one runs only in test
    mode. (Any other count of calls: nothing is printed, the calls are not known.)"""
    if len(seen) != 2:
        return
    print("fast finetune: the int8 model before it (the quantizer's calibration pass): MSE vs float outputs "
          "{:.6e}, vs targets {:.6e}; the finetuned model: --quant_mode test --fast_finetune --evaluate".format(
              regression_metrics(seen[1], float_outputs)["mse"], regression_metrics(seen[1], targets)["mse"]))


def check_flags(args):
    """Refuse flags that the mode would ignore, and unwritable outputs, before any work."""
    if args.deploy and args.quant_mode != "test":
        raise InputError("--deploy needs --quant_mode test (run --quant_mode calib first)")
    if args.deploy_batch is not None and not args.deploy:
        raise InputError("--deploy_batch needs --deploy")
    if args.fast_finetune and args.quant_mode == "float":
        raise InputError("--fast_finetune needs --quant_mode calib or test")
    if args.save_outputs and args.quant_mode == "calib":
        raise InputError("--save_outputs needs --quant_mode float or test (calibration changes the model "
                         "batch by batch)")
    if args.quant_mode == "calib" or args.deploy:
        check_output_dir(args.output_dir)
    if args.save_outputs:
        check_output_dir(os.path.dirname(args.save_outputs) or ".")


def main(argv=None):
    args = parse_args(argv)
    check_flags(args)
    set_seed(args.seed)
    backend = backends.load(args.backend, args.vai_release)
    torch_quantizer = backend.torch_quantizer
    checkpoint = checkpoint_path(args.checkpoint_dir, args.model_name)
    model = load_ffn(args.checkpoint_dir, args.model_name, args.input_size)
    loader = make_dataloader(args.data_dir, args.calib_data, False, args.batch_size, args.subset_len,
                             input_size=args.input_size)
    rows = "{} rows of {}".format(len(loader.dataset), loader.dataset.path)

    if args.quant_mode == "float":
        float_outputs, targets = predict(model, loader, "float")
        save_outputs(args.save_outputs, float_outputs)
        float_metrics = regression_metrics(float_outputs, targets)
        print_metrics({"float": float_metrics})
        print("float: {}: mse {:.6e}".format(rows, float_metrics["mse"]))
        return 0

    if args.quant_mode == "calib":
        # The trace input only fixes shapes; its batch is the xmodel's batch.
        trace_input = torch.randn(args.batch_size, args.input_size)
        quantizer = torch_quantizer("calib", model, (trace_input,), output_dir=args.output_dir, device=DEVICE)
        calib_outputs, targets = predict(quantizer.quant_model, loader, "calib")
        if args.evaluate:   # as the original: the int8 model while it is being calibrated
            print_metrics({"float": regression_metrics(predict(model, loader, "float")[0], targets),
                           "int8 (calib)": regression_metrics(calib_outputs, targets)})
        if args.fast_finetune:
            seen = []
            last_batch = len(loader.dataset) - (len(loader) - 1) * args.batch_size
            backends.fast_finetune(backend, quantizer, loss_on, (quantizer.quant_model, loader, seen), last_batch)
            print_finetune_losses(seen, predict(model, loader, "float")[0], targets)
        record = calibration_record.of_run(args, checkpoint, loader.dataset, argv, backend)
        with uninterrupted():
            changes = quantizer.export_quant_config()
            calibration_record.write(args.output_dir, record)
        for change in changes or []:
            print("legalized for the DPU: {}".format(change))
        print("calib ({}): {} in {} batches -> {}".format(backend.describe(), rows, len(loader), args.output_dir))
        calibration_record.note_calibration(record)
        return 0

    calibration_record.check(args, checkpoint, loader.dataset, argv, backend)

    if args.evaluate or args.save_outputs or not args.deploy:
        trace_input = torch.randn(args.batch_size, args.input_size)
        quantizer = torch_quantizer("test", model, (trace_input,), output_dir=args.output_dir, device=DEVICE)
        if args.fast_finetune:
            quantizer.load_ft_param()
        quant_outputs, targets = predict(quantizer.quant_model, loader, "test")
        save_outputs(args.save_outputs, quant_outputs)
        if args.evaluate:
            print_metrics({"float": regression_metrics(predict(model, loader, "float")[0], targets),
                           "int8": regression_metrics(quant_outputs, targets)})
    if args.deploy:
        deploy(torch_quantizer, model, loader, args)
    print("test ({}): {}{}".format(backend.describe(), rows,
                                   " -> deployed to " + args.output_dir if args.deploy else ""))
    return 0


def deploy(torch_quantizer, model, loader, args):
    """Export with a quantizer of batch N after one forward of the first N rows: the
    xmodel has batch N and the deploy-check data is that forward (as vai_q_pytorch)."""
    batch = args.deploy_batch or DEFAULT_DEPLOY_BATCH
    if batch > len(loader.dataset):
        raise InputError("--deploy_batch {}: {} has only {} rows".format(batch, loader.dataset.path, len(loader.dataset)))
    # A copy: release 2.5 fake-quantizes its input in place, even a slice of a larger tensor.
    first_rows = loader.dataset.features[:batch].clone().to(DEVICE)
    quantizer = torch_quantizer("test", model, (first_rows,), output_dir=args.output_dir, device=DEVICE)
    if args.fast_finetune:
        quantizer.load_ft_param()
    with torch.no_grad():
        quantizer.quant_model(first_rows)
    with uninterrupted():
        quantizer.export_xmodel(output_dir=args.output_dir, deploy_check=True)
        backends.export_torch_script(quantizer, args.output_dir)
        quantizer.export_onnx_model(output_dir=args.output_dir)


if __name__ == "__main__":
    cli(main, hard_exit=True)   # the real 2.5's ONNX export can hang at interpreter exit
