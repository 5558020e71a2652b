"""The layers under CPU autocast (bfloat16): what ``Trainer(amp=True)`` does on a CPU.

``torch.nn.LSTM`` itself fails there on CPUs whose oneDNN cannot build a bfloat16 LSTM; rnnkit's
layers run the fused kernel in float32 instead, and accept the bfloat16 activations that other
layers emit under autocast.
"""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit

LAYERS = {
    "LSTM": lambda engine: rnnkit.LSTM(4, 6, num_layers=2, engine=engine),
    "LSTM bidirectional": lambda engine: rnnkit.LSTM(4, 6, bidirectional=True, engine=engine),
    "GRU": lambda engine: rnnkit.GRU(4, 6, engine=engine),
    "RNN": lambda engine: rnnkit.RNN(4, 6, engine=engine),
    "Recurrent(LSTMCell)": lambda engine: rnnkit.Recurrent(rnnkit.LSTMCell(4, 6), engine=engine),
    "Recurrent(LayerNormLSTMCell)": lambda engine: rnnkit.Recurrent(
        rnnkit.LayerNormLSTMCell(4, 6), engine="auto" if engine == "fused" else engine
    ),
}
LENGTHS = torch.tensor([7, 3, 5])


def _bf16_lstm_unsupported() -> bool:
    return not torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("engine", ["fused", "loop"])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_layers_run_under_cpu_autocast(name, engine, with_lengths, input_dtype):
    torch.manual_seed(0)
    layer = LAYERS[name](engine)
    x = torch.randn(7, 3, 4)
    kw = {"lengths": LENGTHS} if with_lengths else {}
    reference, _ = layer(x, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, state = layer(x.to(input_dtype), **kw)
        loss = output.float().square().mean()
    loss.backward()
    assert output.shape == reference.shape
    assert torch.allclose(output.float(), reference, atol=0.1), "bfloat16 drifted too far"
    for p in layer.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.skipif(not _bf16_lstm_unsupported(), reason="this CPU runs oneDNN's bf16 LSTM")
def test_the_lstm_kernel_runs_in_float32_where_bf16_is_unsupported():
    torch.manual_seed(0)
    layer = rnnkit.LSTM(4, 6)
    twin = nn.LSTM(4, 6)
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(7, 3, 4)
    expected, (h, c) = twin(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match="primitive descriptor"):
            twin(x)  # what rnnkit works around
        output, (h_n, c_n) = layer(x)
        packed, _ = layer(pack_padded_sequence(x, torch.tensor([7, 5, 3])))
    assert output.dtype == torch.float32 and packed.data.dtype == torch.float32
    assert torch.equal(output, expected) and torch.equal(h_n, h) and torch.equal(c_n, c)


def test_mixed_dtypes_are_still_refused_outside_autocast():
    layer = rnnkit.GRU(4, 6)
    with pytest.raises(ValueError, match="does not match the weights' dtype"):
        layer(torch.randn(5, 2, 4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="h_0 dtype torch.float64 does not match"):
        layer(torch.randn(5, 2, 4), torch.zeros(1, 2, 6, dtype=torch.float64))


def test_trainer_amp_trains_an_lstm_on_cpu():
    rnnkit.seed_everything(0)
    model = rnnkit.SequenceModel(3, 8, 2, cell="lstm")
    x, y = torch.randn(32, 10, 3), torch.randint(0, 2, (32,))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    trainer = rnnkit.Trainer(model, optimizer, "cross_entropy", amp=True)
    history = trainer.fit((x, y), epochs=2, batch_size=16)
    losses = history["loss"]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_bad_input_is_still_named_under_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(ValueError, match="expected a Tensor or PackedSequence, got list"):
            rnnkit.LSTM(4, 6)([[1.0] * 4])
