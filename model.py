"""The float model: a small feed-forward regressor, input_size -> 3n -> 2n -> 1."""
import torch.nn as nn
import torch.nn.functional as F


class FFN(nn.Module):
    def __init__(self, input_size=2):
        super().__init__()
        self.l1 = nn.Linear(input_size, 3 * input_size)
        self.l2 = nn.Linear(3 * input_size, 2 * input_size)
        self.l3 = nn.Linear(2 * input_size, 1)

    def forward(self, x):
        # Functional ReLU, as in the original flow: the quantizer's node names
        # (FFN::nndct_relu_2, ...) and the xmodel op names depend on it.
        x = F.relu(self.l1(x))
        x = F.relu(self.l2(x))
        return self.l3(x)
