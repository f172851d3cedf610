"""Quantization-aware training, whichever QatProcessor runs (backend.load_qat: the real
pytorch_nndct one or the built-in vaiq.qat): the recipe's defaults, the QAT form of the user's
float model, Adam with the two parameter groups of Xilinx's example (example/resnet18_qat.py),
the learning-rate decay, the threshold-norm term, and the check that stops a training whose
loss or parameters stop being finite. The epoch loop is the project's Catalyst runner
(runner.train_qat); the stage is vai_q_pytorch_qat.py; docs/qat.md tells how the recipe was
chosen.
"""
import collections

# torch and vaiq are imported by the functions that use them: the stage's --help shows the
# recipe before the seconds that torch takes to import.

# The recipe: what `make qat` runs unless a flag says otherwise (docs/qat.md: the measurements).
Recipe = collections.namedtuple("Recipe", [
    "epochs",              # passes over train.npy; the epoch with the lowest int8 MSE on valid.npy is kept
    "batch_size",          # rows per optimizer step
    "weight_lr",           # Adam's learning rate of the weights and biases ("weight" group)
    "quantizer_lr",        # Adam's learning rate of the log2 thresholds ("quantizer" group)
    "weight_lr_decay",     # factor on weight_lr after every epoch
    "quantizer_lr_decay",  # factor on quantizer_lr after every epoch
    "quantizer_norm",      # coefficient of the threshold-norm term, sqrt(sum log_threshold^2); 0: none
    "weight_decay",        # Adam's L2 weight decay, on both groups as in the example
])
RECIPE = Recipe(epochs=40, batch_size=64, weight_lr=3e-4, quantizer_lr=1e-2, weight_lr_decay=0.95,
                quantizer_lr_decay=0.7, quantizer_norm=1e-2, weight_decay=0.0)

# The optimizer's parameter groups, named as in Xilinx's example (and the golden run).
QUANTIZER_GROUP, WEIGHT_GROUP = "quantizer", "weight"

# What the stage writes into its result folder, by the model's class name: to_deployable's
# files and the training log (train mode), the deploy exports of the "<Net>_0" graph and the
# real tool's generated <Net>.py (deploy mode). Train mode replaces the folder whole.
TRAINED_FILES = ("quant_info.json", "deployable.pth")
LOG_FILES = ("train.csv", "valid.csv", "hparams.json")


def deploy_name(net):
    """The name of the deployed graph and its files: the quantized region of a model with a
    QuantStub, <Net>_0 (vaiq.qat.DEPLOY_GRAPH)."""
    from vaiq.qat import DEPLOY_GRAPH
    return DEPLOY_GRAPH.format(net)


def result_files(net):
    name = deploy_name(net)
    return TRAINED_FILES + ("test",) + LOG_FILES + (
        name + "_int.xmodel", "deploy_check_data_int", name + "_int.pt", name + "_int.onnx", net + ".py")


# A log2 threshold beyond this is no training any more: 2^ceil(t) leaves float32 at 128, and
# a fix position 7 - ceil(t) beyond the quantizer's limit (64) cannot be written.
LOG_THRESHOLD_LIMIT = 56


def qat_model(float_model, backend):
    """The QAT form of the user's float model (vaiq.qat.qat_form: an input QuantStub and every
    activation a module of its own; the float checkpoint's keys unchanged), with the stub class
    of the backend's QatProcessor."""
    from vaiq.nn import QuantStub as BuiltinQuantStub
    from vaiq.qat import qat_form

    form = qat_form(float_model)
    if backend.QuantStub is not BuiltinQuantStub:
        for name, module in list(form.named_modules()):
            if isinstance(module, BuiltinQuantStub):
                parent, _, leaf = name.rpartition(".")
                setattr(form.get_submodule(parent) if parent else form, leaf, backend.QuantStub())
    return form


def warm_up(trainable, features):
    """One forward of `features` in training mode, without gradients: every quantizer sets its
    initial threshold on its first forward (spec qat.md, "Warm-up"), here from all the rows
    rather than from whichever batch the shuffle puts first."""
    import torch

    trainable.train()
    with torch.no_grad():
        trainable(features.clone())   # a clone: the forward must not touch the dataset's tensor


def optimizer(trainable, recipe):
    """Adam over the quantizer parameters and the other parameters, each group with its
    learning rate, as the example and the golden run; its fused step where torch has one, for
    the same bits on any CPU (flow.kernels.adam)."""
    from flow import kernels

    return kernels.adam([
        {"params": trainable.quantizer_parameters(), "lr": recipe.quantizer_lr, "name": QUANTIZER_GROUP},
        {"params": trainable.non_quantizer_parameters(), "lr": recipe.weight_lr, "name": WEIGHT_GROUP},
    ], lr=recipe.weight_lr, weight_decay=recipe.weight_decay)


def learning_rates(recipe, epoch):
    """{group: learning rate} of epoch `epoch` (1, 2, ...): each decayed once per epoch before it."""
    return {QUANTIZER_GROUP: recipe.quantizer_lr * recipe.quantizer_lr_decay ** (epoch - 1),
            WEIGHT_GROUP: recipe.weight_lr * recipe.weight_lr_decay ** (epoch - 1)}


def lr_schedule(opt, recipe):
    """The call the runner makes after each epoch: the next epoch's learning rates."""
    def schedule(finished_epoch):
        rates = learning_rates(recipe, finished_epoch + 1)
        for group in opt.param_groups:
            group["lr"] = rates[group["name"]]
    return schedule


def threshold_norm(trainable, coefficient):
    """The example's extra loss term, coefficient * sqrt(sum of the squared log2 thresholds):
    it pulls every threshold towards 1 (fix position 7), against the MSE, which pulls a clipped
    tensor's threshold up. None when the coefficient is 0."""
    if not coefficient:
        return None
    import torch

    params = trainable.quantizer_parameters()

    def penalty():
        return coefficient * torch.sqrt(sum(torch.pow(p, 2.0)[0] for p in params))
    return penalty


def divergence(trainable):
    """What stopped being a training in the last optimizer step, in a few words; None when
    every parameter is finite and every threshold within reach."""
    import torch

    for name, param in trainable.named_parameters():
        values = param.detach()
        if not torch.isfinite(values).all():
            return "{} became {}".format(name, "nan" if torch.isnan(values).any() else "inf")
        if "log_threshold" in name and values.abs().max().item() > LOG_THRESHOLD_LIMIT:
            return "{} reached {:.3g}, a threshold of 2^{:.3g}".format(
                name, values.flatten()[0].item(), values.flatten()[0].item())
    return None
