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
    "hidden_max",          # equalize: every live hidden ReLU unit's max on train.npy made this, and the hidden
                           # thresholds fixed at the power of two above (not trained); 0: off (thresholds trained).
                           # 1.95: just inside threshold 2's int8 range (127/64), whose LSB 1/64 is the output's
    "revive",              # 1: each dead hidden unit becomes a copy of a live one, the two half an LSB apart
                           # (with hidden_max only); 0: off
])
RECIPE = Recipe(epochs=40, batch_size=64, weight_lr=3e-4, quantizer_lr=1e-2, weight_lr_decay=0.95,
                quantizer_lr_decay=0.5, quantizer_norm=0.0, weight_decay=0.0, hidden_max=1.95, revive=1)

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


def with_backend_stub(form, backend):
    """The QAT form of the user's float model (vaiq.qat.qat_form: an input QuantStub and every
    activation a module of its own; the float checkpoint's keys unchanged) with the stub class
    of the backend's QatProcessor, in place. The recipe's reshape_hidden runs before it, on the
    built-in stub's form, whose chain the project reads."""
    from vaiq.nn import QuantStub as BuiltinQuantStub

    if backend.QuantStub is not BuiltinQuantStub:
        for name, module in list(form.named_modules()):
            if isinstance(module, BuiltinQuantStub):
                parent, _, leaf = name.rpartition(".")
                setattr(form.get_submodule(parent) if parent else form, leaf, backend.QuantStub())
    return form


def _relu_chain(model):
    """The Linear layers of a model whose forward is Linear, ReLU, Linear, ReLU, ..., Linear
    (every hidden activation a ReLU, the last layer none); None for any other model."""
    import torch.nn as nn
    from vaiq.qat import QatModelError, qat_chain

    try:
        chain = qat_chain(model)
    except QatModelError:
        return None
    acts = [None if a is None else model.get_submodule(a) for a in chain.activation_modules]
    if not acts or acts[-1] is not None or not all(type(a) is nn.ReLU for a in acts[:-1]):
        return None
    return [model.get_submodule(layer.name) for layer in chain.layers]


def reshape_hidden(form, features, recipe, bitwidth=8):
    """The function-preserving start of the recipe, on the QAT form's float weights, in place:
    every live hidden ReLU unit scaled to the maximum `recipe.hidden_max` on `features` (its
    next layer's column scaled back), so that all of them use the range of one fixed threshold,
    the smallest power of two whose int8 range (127/128 of it) holds hidden_max; then
    (recipe.revive) each unit below one LSB on every row (zero in int8) becomes a
    copy of a live unit, the most important first, their biases +-1/4 of the hidden LSB apart
    and the next layer's column halved between them: in int8 the two round on grids half an
    LSB apart, and their mean is rounded about as finely as a unit with one more bit.
    Returns the hidden threshold's log2, or None (nothing done: off, or not a ReLU chain)."""
    import math
    import torch

    layers = _relu_chain(form) if recipe.hidden_max else None
    if layers is None:
        return None
    top_level = 2 ** (bitwidth - 1)
    log_threshold = math.ceil(math.log2(recipe.hidden_max * top_level / (top_level - 1)))
    lsb = 2.0 ** log_threshold / top_level
    offset = lsb / 4
    with torch.no_grad():
        h = features
        for layer, nxt in zip(layers[:-1], layers[1:]):
            pre = torch.relu(layer(h))
            top = pre.max(0).values
            live = top >= lsb   # below one LSB a unit rounds to zero: dead in int8, and not scaled up
            scale = torch.where(live, recipe.hidden_max / top.clamp(min=lsb), torch.ones_like(top))
            layer.weight.mul_(scale[:, None])
            layer.bias.mul_(scale)
            nxt.weight.div_(scale[None, :])
            if recipe.revive:
                importance = nxt.weight.abs().sum(0) * (pre * scale).std(0)
                order = [int(i) for i in torch.argsort(torch.where(live, importance, -torch.ones_like(importance)),
                                                       descending=True)]
                dead = [int(i) for i in torch.nonzero(~live).flatten()]
                for d, u in zip(dead, order[:int(live.sum())]):   # copies of live units only
                    layer.weight[d] = layer.weight[u]
                    layer.bias[d] = layer.bias[u] - offset
                    layer.bias[u] += offset
                    nxt.weight[:, u] /= 2
                    nxt.weight[:, d] = nxt.weight[:, u]
            h = torch.relu(layer(h))
    return float(log_threshold)


def fix_hidden_thresholds(trainable, log_threshold):
    """The hidden ReLU outputs' thresholds fixed at 2^log_threshold, out of training (after the
    warm-up, which sets them first)."""
    import torch.nn as nn

    fixed = 0
    for module in trainable.modules():
        quantizer = getattr(module, "output_quantizer", None)
        if isinstance(module, nn.ReLU) and quantizer is not None:
            quantizer.log_threshold.data.fill_(log_threshold)
            quantizer.log_threshold.requires_grad_(False)
            fixed += 1
    if not fixed:
        from flow.checked_io import InputError
        raise InputError("--hidden_max: the QAT model has no ReLU output quantizer to fix; "
                         "train with --hidden_max 0")


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
        # The vector norm, not torch.sqrt of the sum: torch.sqrt (and pow 0.5) is MKL's, whose
        # last bits follow the CPU (flow/kernels.py); the norm's square root is the exact one.
        return coefficient * torch.cat([p.reshape(-1)[:1] for p in params]).norm()
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
