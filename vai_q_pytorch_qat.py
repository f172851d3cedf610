"""Stage 3, QAT: quantization-aware training with vai_q_pytorch's QatProcessor.

  train   from the float checkpoint: train the quantized model on train.npy (thresholds
          and weights together; the epoch with the lowest int8 MSE on valid.npy is kept),
          then to_deployable into --output_dir: quant_info.json, test/quant_info.json,
          deployable.pth, and the training log train.csv, valid.csv, hparams.json (the
          folder is replaced whole); prints float and int8 MSE on --eval_data
  deploy  in a new process, as Xilinx's example: the deployable model of --output_dir,
          one forward of the first --deploy_batch rows of --eval_data, then
          <Net>_0_int.xmodel, deploy_check_data_int/<Net>_0/, <Net>_0_int.pt, <Net>_0_int.onnx

The real QatProcessor (pytorch_nndct, in the Vitis AI docker) is used when it can be
imported; elsewhere the built-in one (vaiq.qat) computes the same bit for bit. The
model is model.py's float FFN, put into the form QatProcessor takes (an input QuantStub,
activations as modules) by vaiq.qat.qat_form. docs/qat.md.
"""
import argparse
import os

from flow import start_stage

start_stage(__name__)   # first: kernels pinned and Ctrl-C handled before torch is imported

from flow.checked_io import ArgumentParser, positive_float, positive_int, seed
from quantization.qat import RECIPE

DEFAULT_DEPLOY_BATCH = 1   # as vai_q_pytorch wants; compile.sh gives DPUCADF8H's compiler batch 4
TRAIN_FLAGS = RECIPE._fields          # the recipe's flags: train mode only
DEPLOY_FLAGS = ("deploy_batch",)


def decay(text):
    """A learning-rate factor per epoch, in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError("must be in (0, 1], got {}".format(text))
    return value


def non_negative_float(text):
    """A coefficient: 0 (none) or a positive number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("{!r} is not a number".format(text))
    if not (value == 0 or value > 0) or value == float("inf"):
        raise argparse.ArgumentTypeError("must be 0 or a positive number, got {}".format(text))
    return value


def build_parser():
    """The flags; needs only argparse and the recipe, so that --help answers before torch is imported."""
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="train", choices=["train", "deploy"],
                        help="train: QAT training, then to_deployable; deploy: export the trained result "
                        "(xmodel, deploy-check data, TorchScript, ONNX), as Xilinx's example")
    parser.add_argument("--data_dir", default="data", help="folder of train.npy, valid.npy and --eval_data")
    parser.add_argument("--eval_data", default="test.npy",
                        help="rows in --data_dir: train mode prints float and int8 MSE on them, deploy mode "
                        "runs its forward on the first --deploy_batch")
    parser.add_argument("--input_size", type=positive_int, default=2, help="features per row of the data")
    parser.add_argument("--checkpoint_dir", default="checkpoints", help="folder of --model_name")
    parser.add_argument("--model_name", default="ffn_state_dict.pth",
                        help="the float state dict: a file name in --checkpoint_dir, or a path")
    parser.add_argument("--output_dir", default="qat_result",
                        help="folder of the QAT result: train mode replaces it whole, deploy mode adds the exports")
    parser.add_argument("--backend", default="auto", choices=["auto", "nndct", "builtin"],
                        help="auto: pytorch_nndct's QatProcessor if importable, else the built-in one")
    parser.add_argument("--seed", type=seed, default=42, help="seed of torch, numpy and the shuffling")
    recipe = parser.add_argument_group("the recipe (train mode; docs/qat.md)")
    recipe.add_argument("--epochs", type=positive_int, metavar="N",
                        help="passes over train.npy (default: {})".format(RECIPE.epochs))
    recipe.add_argument("--batch_size", type=positive_int, metavar="N",
                        help="rows per optimizer step (default: {})".format(RECIPE.batch_size))
    recipe.add_argument("--weight_lr", type=positive_float, metavar="LR",
                        help="Adam's learning rate of the weights and biases (default: {})".format(RECIPE.weight_lr))
    recipe.add_argument("--quantizer_lr", type=positive_float, metavar="LR",
                        help="Adam's learning rate of the quantizers' log2 thresholds (default: {})".format(
                            RECIPE.quantizer_lr))
    recipe.add_argument("--weight_lr_decay", type=decay, metavar="F",
                        help="factor on --weight_lr after each epoch (default: {})".format(RECIPE.weight_lr_decay))
    recipe.add_argument("--quantizer_lr_decay", type=decay, metavar="F",
                        help="factor on --quantizer_lr after each epoch (default: {})".format(
                            RECIPE.quantizer_lr_decay))
    recipe.add_argument("--quantizer_norm", type=non_negative_float, metavar="C",
                        help="coefficient of the example's threshold-norm loss term C * sqrt(sum of the squared "
                        "log2 thresholds); 0: none (default: {})".format(RECIPE.quantizer_norm))
    recipe.add_argument("--weight_decay", type=non_negative_float, metavar="C",
                        help="Adam's weight decay, on both parameter groups as in the example (default: {})".format(
                            RECIPE.weight_decay))
    recipe.add_argument("--hidden_max", type=non_negative_float, metavar="M",
                        help="equalize every live hidden ReLU unit to the maximum M on train.npy and fix the hidden "
                        "thresholds at the power of two above; 0: off, thresholds trained (default: {})".format(
                            RECIPE.hidden_max))
    recipe.add_argument("--revive", type=int, choices=[0, 1], metavar="0|1",
                        help="with --hidden_max: each dead hidden unit becomes a copy of a live one, half a hidden "
                        "LSB apart (default: {})".format(RECIPE.revive))
    deploy = parser.add_argument_group("deploy mode")
    deploy.add_argument("--deploy_batch", type=positive_int, metavar="N",
                        help="the batch of the exported xmodel: the deploy forward runs the first N rows of "
                        "--eval_data (default: {}, as vai_q_pytorch wants; compile.sh gives it to DPUCADF8H's "
                        "compiler as batch 4)".format(DEFAULT_DEPLOY_BATCH))
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    ignored = DEPLOY_FLAGS if args.mode == "train" else TRAIN_FLAGS
    given = ["--" + name for name in ignored if getattr(args, name) is not None]
    if given:
        parser.error("{} {} not used in --mode {}".format(", ".join(given), "is" if len(given) == 1 else "are",
                                                           args.mode))
    return args


if __name__ == "__main__":
    parse_args()    # --help and bad flags answer here, before the seconds that torch takes to import

import torch

from flow.checked_io import InputError, atomic_path, check_output_dir, cli, note, require_dir, uninterrupted
from losses import predict, print_metrics, regression_metrics
from preprocessors import load_ffn, make_dataloader
from quantization import backend as backends
from quantization import qat as recipe_qat
from set_seed import DEVICE, set_seed


def recipe_of(args):
    """The recipe: the flags given, the defaults for the rest."""
    return RECIPE._replace(**{name: getattr(args, name) for name in RECIPE._fields if getattr(args, name) is not None})


def qat_model(args):
    """(float model, its QAT form with the built-in stub) of the checkpoint; a model QAT cannot
    take is refused in one line."""
    from vaiq.qat import qat_form

    float_model = load_ffn(args.checkpoint_dir, args.model_name, args.input_size)
    try:
        return float_model, qat_form(float_model).to(DEVICE)
    except InputError as e:
        raise InputError("model.py: {}".format(e))


def train(args, backend):
    recipe = recipe_of(args)
    float_model, form = qat_model(args)
    net = type(form).__name__
    check_output_dir(args.output_dir, own_files=recipe_qat.result_files(net))

    def loader(name, is_train, batch_size):
        return make_dataloader(args.data_dir, name, is_train, batch_size, input_size=args.input_size, seed=args.seed)

    train_loader, valid_loader = loader("train.npy", True, recipe.batch_size), loader("valid.npy", False, 64)
    eval_loader = loader(args.eval_data, False, 64)
    features = train_loader.dataset.features.to(DEVICE)
    hidden_log_threshold = recipe_qat.reshape_hidden(form, features, recipe)
    if recipe.hidden_max and hidden_log_threshold is None:
        note("--hidden_max {}: model.py is not a chain of Linear layers with ReLU between, so its hidden "
             "thresholds are trained (as with --hidden_max 0)".format(recipe.hidden_max))
    form = recipe_qat.with_backend_stub(form, backend)
    qat = backend.QatProcessor(form, (features[:recipe.batch_size],), bitwidth=8)
    trainable = qat.trainable_model()
    recipe_qat.warm_up(trainable, features)
    if hidden_log_threshold is not None:
        recipe_qat.fix_hidden_thresholds(trainable, hidden_log_threshold)
    optimizer = recipe_qat.optimizer(trainable, recipe)
    hparams = dict(recipe._asdict(), input_size=args.input_size, seed=args.seed, backend=backend.name)

    from runner import train_qat   # Catalyst takes a second or two to import: only to train

    with atomic_path(args.output_dir) as result:
        os.makedirs(result)
        best, stopped = train_qat(trainable, optimizer, train_loader, valid_loader, recipe.epochs, args.seed,
                                  result, hparams, penalty=recipe_qat.threshold_norm(trainable, recipe.quantizer_norm),
                                  check=lambda: recipe_qat.divergence(trainable),
                                  schedule=recipe_qat.lr_schedule(optimizer, recipe))
        if stopped is not None or best.state_dict is None:
            raise InputError(diverged_message(args, recipe, stopped, best, train_loader.dataset.path))
        trainable.load_state_dict(best.state_dict)
        with uninterrupted():
            deployable = qat.to_deployable(trainable, result)
    deployable.eval()
    float_outputs, targets = predict(float_model, eval_loader, "float")
    # The deployable model rounds the tensor it is given in place: here each batch, a new tensor.
    int8_outputs, _ = predict(deployable, eval_loader, "int8 QAT")
    print_metrics({"float": regression_metrics(float_outputs, targets),
                   "int8 QAT": regression_metrics(int8_outputs, targets)})
    print("train ({}): {} epochs on {} rows of {}, kept epoch {} (int8 MSE {:.6e} on {}) -> {}".format(
        backend.describe(), recipe.epochs, len(features), train_loader.dataset.path, best.epoch, best.valid_loss,
        valid_loader.dataset.path, args.output_dir))
    return 0


def diverged_message(args, recipe, stopped, best, train_path):
    """The one line of a training that diverged: where, what, and that nothing was written."""
    where = "in epoch {}, batch {} ({})".format(stopped.epoch, stopped.batch, stopped.problem) if stopped else \
        "(the int8 validation MSE was not finite in any epoch)"
    kept = "; the best epoch before it, {} (int8 valid MSE {:.6e}), comes again with --epochs {}".format(
        best.epoch, best.valid_loss, best.epoch) if best.state_dict is not None else ""
    return ("the QAT training diverged {} with --weight_lr {} --quantizer_lr {} on {}: stopped, nothing written ({} "
            "as it was){}; or lower the learning rates".format(where, recipe.weight_lr, recipe.quantizer_lr,
                                                               train_path, args.output_dir, kept))


def deploy(args, backend):
    require_dir(args.output_dir, "QAT result folder (run --mode train first)")
    missing = [name for name in recipe_qat.TRAINED_FILES if not os.path.isfile(os.path.join(args.output_dir, name))]
    if missing:
        raise InputError("{}: holds no QAT training result ({} missing); run --mode train first".format(
            args.output_dir, " and ".join(missing)))
    check_output_dir(args.output_dir)
    form = recipe_qat.with_backend_stub(qat_model(args)[1], backend)
    eval_loader = make_dataloader(args.data_dir, args.eval_data, False, 64, input_size=args.input_size)
    batch = args.deploy_batch or DEFAULT_DEPLOY_BATCH
    if batch > len(eval_loader.dataset):
        raise InputError("--deploy_batch {}: {} has only {} rows".format(
            batch, eval_loader.dataset.path, len(eval_loader.dataset)))
    first_rows = eval_loader.dataset.features[:batch].to(DEVICE)
    qat = backend.QatProcessor(form, (first_rows,), bitwidth=8)
    deployable = qat.deployable_model(args.output_dir, used_for_xmodel=True)
    with torch.no_grad():
        deployable(first_rows.clone())   # a copy: the deployable model rounds its input in place
    with uninterrupted():
        qat.export_xmodel(args.output_dir, deploy_check=True)
        qat.export_torch_script(args.output_dir)
        qat.export_onnx_model(args.output_dir)
    net = recipe_qat.deploy_name(type(form).__name__)
    print("deploy ({}): the first {} of {} -> {}: {}_int.xmodel, deploy_check_data_int/{}/, {}_int.pt, "
          "{}_int.onnx".format(backend.describe(), "row" if batch == 1 else "{} rows".format(batch),
                               eval_loader.dataset.path, args.output_dir, net, net, net, net))
    return 0


def main(argv=None):
    args = parse_args(argv)
    set_seed(args.seed)
    backend = backends.load_qat(args.backend)
    return (train if args.mode == "train" else deploy)(args, backend)


if __name__ == "__main__":
    cli(main, hard_exit=True)   # as vai_q_pytorch_quant.py: the real 2.5's ONNX export can hang at exit
