"""Which models the built-in quantizer takes, and the one-line refusals of the others,
each saying what the real quantizer would do (layers.md, "Not covered here")."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vaiq.trace import LEAKY_RELU_WARNING, UnsupportedModelError, check_model, trace_chain


class Net(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.l1, self.l2 = nn.Linear(2, 6), nn.Linear(6, 1)
        self.body = body

    def forward(self, x):
        return self.l2(self.body(self.l1(x)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(2, 2), nn.Linear(2, 1)

    def forward(self, x):
        return self.l2(self.l1(x) + x)


class Sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(2, 1)

    def forward(self, x):
        return torch.sigmoid(self.l1(x))


@pytest.mark.parametrize("model, must_contain", [
    (Net(nn.Hardtanh()), ["unsupported operation Hardtanh", "nndct_hardtanh", "does not store"]),
    (Sigmoid(), ["unsupported operation sigmoid", "float op"]),
    (Residual(), ["unsupported operation add", "its own fix"]),
    (Net(nn.Tanh()), ["unsupported operation Tanh", "nn.Linear and nn.BatchNorm1d"]),
    (Net(nn.Sequential(nn.ReLU(), nn.ReLU())), ["two activations in a row"]),
    (Net(nn.BatchNorm1d(6)), ["body is in train mode", "model.eval()",
                              "batch_norm eps must be positive"]),
    (Net(nn.BatchNorm1d(6, track_running_stats=False)).eval(), ["track_running_stats=False"]),
    (Net(nn.BatchNorm1d(5)).eval(), ["normalizes 5 features after a layer of 6"]),
])
def test_refusals_say_what_the_real_quantizer_does(model, must_contain):
    with pytest.raises(UnsupportedModelError) as e:
        trace_chain(model)
    text = str(e.value)
    assert "\n" not in text and text.startswith(type(model).__name__ + ": ")
    for part in must_contain:
        assert part in text
    assert check_model(model) == text


def test_layers_it_takes_with_their_names():
    body = nn.Sequential(nn.BatchNorm1d(6), nn.LeakyReLU(0.2), nn.Dropout(0.5))
    chain = trace_chain(Net(body).eval())
    assert [(layer.name, layer.kind, layer.activation) for layer in chain.layers] == [
        ("l1", "dense", None), ("body.0", "batch_norm", "leaky_relu"), ("l2", "dense", None)]
    assert chain.activation_tensors() == ["Net::nndct_input_0", "Net::nndct_dense_1", "Net::nndct_leaky_relu_3",
                                          "Net::nndct_dense_4"]
    assert chain.layers[1].act_traced == "Net::Net/Sequential[body]/LeakyReLU[1]/ret.5"
    assert chain.messages[1] == LEAKY_RELU_WARNING.format(0.2)
    assert chain.messages[0].startswith("[VAIQ_NOTE][QUANTIZER_TORCH_NOT_FUSED_BN]: Node "
                                        "Net::Net/Sequential[body]/BatchNorm1d[0]/ret.3 cannot be fused")
    assert check_model(Net(body).eval()) is None


def test_the_dpu_slope_and_functional_relu6_are_taken_silently():
    class Quiet(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.l3 = nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 1)

        def forward(self, x):
            return self.l3(F.relu6(self.l2(F.leaky_relu(self.l1(x), 0.1015625))))

    chain = trace_chain(Quiet())
    assert chain.messages == []
    assert [layer.activation for layer in chain.layers] == ["leaky_relu", "relu6", None]
