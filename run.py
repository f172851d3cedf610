"""Stage 2: train the float FFN and/or evaluate a state dict.

  python run.py --data_dir data --train --lr 1e-1 --n_epochs 32
      trains on train.npy, selects the epoch by valid.npy and writes
      <checkpoint_dir>/ffn_state_dict.pth and the per-epoch logs in <log_dir>/
  python run.py --data_dir data --evaluate --model_name checkpoints/ffn_state_dict.pth
      prints the mse and r^2 on <data_dir>/<eval_data>
"""
import copy
import os
import sys

from flow import start_stage

start_stage(__name__)   # first: kernels pinned and Ctrl-C handled before torch is imported

from flow.checked_io import ArgumentParser, positive_float, positive_int, seed

CHECKPOINT_NAME = "ffn_state_dict.pth"
# What runner.train writes into --log_dir, which it replaces whole when training ends.
LOG_FILES = ("train.csv", "valid.csv", "hparams.json")


def parse_args():
    """The flags, checked; needs only argparse, so that --help and bad flags answer before torch is imported."""
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="data", help="folder with train.npy, valid.npy and the eval file")
    parser.add_argument("--eval_data", default="test.npy", help="file in --data_dir that --evaluate uses")
    parser.add_argument("--input_size", type=positive_int, default=2, help="features per row of the data")
    parser.add_argument("--checkpoint_dir", default="checkpoints",
                        help="folder that --train writes {} into".format(CHECKPOINT_NAME))
    parser.add_argument("--model_name", help="state dict to start training from, or to evaluate: a file "
                        "name in --checkpoint_dir, or a path (default: none, training starts from the seed's "
                        "initial weights)")
    parser.add_argument("--train", action="store_true",
                        help="train, keep the epoch with the lowest validation loss")
    parser.add_argument("--evaluate", action="store_true", help="print mse and r^2 on --eval_data")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="rows per batch, in training and evaluation")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate of the optimiser")
    parser.add_argument("--n_epochs", type=positive_int, default=1, help="training epochs")
    parser.add_argument("--seed", type=seed, default=42, help="seed of the initial weights and the shuffling")
    parser.add_argument("--log_dir", default="logs", help="per-epoch train.csv and valid.csv; replaced whole")
    args = parser.parse_args()
    if not (args.train or args.evaluate):
        parser.error("nothing to do: give --train, --evaluate or both")
    if args.evaluate and not (args.train or args.model_name):
        parser.error("--evaluate needs --model_name (a state dict) or --train")
    return args


if __name__ == "__main__":
    parse_args()    # --help and bad flags answer here, before the seconds that torch takes to import

from flow.checked_io import InputError, check_output_dir, cli, torch_save
from losses import evaluate
from model import FFN
from preprocessors import checkpoint_path, load_from_state_dict, make_dataloader
from set_seed import DEVICE, set_seed


def warn_if_not_quantizable(model):
    """Say before the first epoch, not after the last, when model.py's FFN holds a layer the
    built-in quantizer cannot take (and what vai_q_pytorch would do with it)."""
    from vaiq.trace import check_model

    problem = check_model(copy.deepcopy(model).eval())   # traced as the quantizer will see it
    if problem:
        print("{}: warning: model.py: {}".format(os.path.basename(sys.argv[0]), problem), file=sys.stderr)


def main():
    args = parse_args()

    def loader(name, is_train):
        return make_dataloader(args.data_dir, name, is_train, args.batch_size, input_size=args.input_size,
                               seed=args.seed)

    # Every input and output folder is checked before the first epoch.
    if args.train:
        train_loader, valid_loader = loader("train.npy", True), loader("valid.npy", False)
    if args.evaluate:
        eval_loader = loader(args.eval_data, False)
    set_seed(args.seed)  # before the model: its initial weights come from the seed
    model = FFN(args.input_size).to(DEVICE)
    if args.model_name:
        load_from_state_dict(model, checkpoint_path(args.checkpoint_dir, args.model_name))
    if args.train:
        checkpoint = os.path.join(args.checkpoint_dir, CHECKPOINT_NAME)
        if os.path.isdir(checkpoint):
            raise InputError("{}: is a folder, cannot write the checkpoint there".format(checkpoint))
        check_output_dir(args.checkpoint_dir)
        check_output_dir(args.log_dir, own_files=LOG_FILES)
        warn_if_not_quantizable(model)
    summary = []
    if args.train:
        # Imported only to train: Catalyst takes a second or two to import, bad input fails without it.
        from runner import train

        hparams = {k: getattr(args, k) for k in ("input_size", "batch_size", "lr", "n_epochs", "seed")}
        best = train(model, train_loader, valid_loader, args.lr, args.n_epochs, args.seed, args.log_dir, hparams)
        model.load_state_dict(best.state_dict)
        torch_save(best.state_dict, checkpoint)
        summary.append("wrote {} (epoch {}/{}, lowest valid mse {:.4g}); logs in {}".format(
            checkpoint, best.epoch, args.n_epochs, best.valid_loss, args.log_dir))
    if args.evaluate:
        metrics = evaluate(model, eval_loader)
        print("mse: {:.6e}".format(metrics["mse"]))
        print("r^2: {:.8f}".format(metrics["r^2"]))
        summary.append("evaluated on {} ({} rows)".format(os.path.join(args.data_dir, args.eval_data),
                                                         len(eval_loader.dataset)))
    print("; ".join(summary))


if __name__ == "__main__":
    cli(main)
