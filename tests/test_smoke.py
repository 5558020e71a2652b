import torch

import rnnkit


def test_lstm_matches_torch():
    layer = rnnkit.LSTM(3, 4)
    reference = torch.nn.LSTM(3, 4)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(layer(x)[0], reference(x)[0])
