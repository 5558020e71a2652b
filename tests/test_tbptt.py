from collections import namedtuple

import pytest
import torch

import rnnkit


def test_chunks_cover_the_time_axis_in_order():
    x, y = torch.randn(10, 2, 3), torch.randn(10, 2)
    chunks = list(rnnkit.tbptt(x, y, k=4))
    assert [(c.start, c.stop, c.index, c.last) for c in chunks] == [
        (0, 4, 0, False),
        (4, 8, 1, False),
        (8, 10, 2, True),
    ]
    assert torch.equal(torch.cat([c.x for c in chunks]), x)
    assert torch.equal(torch.cat([c.y for c in chunks]), y)
    assert chunks[1].x.data_ptr() == x[4].data_ptr()  # views, no copies
    assert chunks[0].lengths is None


def test_batch_first_and_no_targets():
    x = torch.randn(2, 7, 3)
    chunks = list(rnnkit.tbptt(x, k=3, batch_first=True))
    assert [c.x.shape for c in chunks] == [(2, 3, 3), (2, 3, 3), (2, 1, 3)]
    assert all(c.y is None for c in chunks)
    assert torch.equal(torch.cat([c.x for c in chunks], dim=1), x)


def test_lengths_per_chunk_and_no_chunk_past_the_longest():
    x = torch.randn(12, 3, 1)
    chunks = list(rnnkit.tbptt(x, k=4, lengths=[7, 2, 5]))
    assert [c.lengths.tolist() for c in chunks] == [[4, 2, 4], [3, 0, 1]]
    assert chunks[-1].last and chunks[-1].stop == 7 and chunks[-1].x.shape[0] == 3


@pytest.mark.parametrize("batch_first", [False, True])
def test_carried_state_equals_one_full_pass(batch_first):
    lstm = rnnkit.LSTM(3, 5, num_layers=2, batch_first=batch_first, dtype=torch.float64)
    x = torch.randn(2, 23, 3, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1)
    full, (h_full, c_full) = lstm(x)
    state, outputs = None, []
    for chunk in rnnkit.tbptt(x, k=5, batch_first=batch_first):
        out, state = lstm(chunk.x, rnnkit.detach_state(state))
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, dim=1 if batch_first else 0), full)
    torch.testing.assert_close(state[0], h_full, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(state[1], c_full, atol=1e-12, rtol=1e-12)


def test_carried_state_with_lengths_equals_one_full_pass():
    gru = rnnkit.GRU(3, 4, dtype=torch.float64)
    x, lengths = torch.randn(11, 3, 3, dtype=torch.float64), torch.tensor([11, 3, 6])
    full, h_full = gru(x, lengths=lengths)
    state, outputs = None, []
    for chunk in rnnkit.tbptt(x, k=4, lengths=lengths):
        out, state = gru(chunk.x, rnnkit.detach_state(state), lengths=chunk.lengths)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs), full, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(state, h_full, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("detach", [True, False])
def test_gradients_flow_within_a_chunk_only(detach):
    rnn = torch.nn.RNN(2, 4)
    x = torch.randn(12, 1, 2, requires_grad=True)
    state = None
    for chunk in rnnkit.tbptt(x, k=4):
        out, state = rnn(chunk.x, rnnkit.detach_state(state) if detach else state)
    out.sum().backward()
    reached = x.grad.abs().sum(dim=(1, 2)) > 0
    assert reached[8:].all()
    assert reached[:8].any() != detach  # detached: nothing before the last chunk


def test_detach_state_structures():
    a = torch.ones(2, requires_grad=True) * 2
    Pair = namedtuple("Pair", "h c")
    state = {"lstm": Pair(a, a), "list": [a, None], "n": 3}
    out = rnnkit.detach_state(state)
    assert isinstance(out["lstm"], Pair) and not out["lstm"].h.requires_grad
    assert out["list"][1] is None and not out["list"][0].requires_grad and out["n"] == 3
    assert rnnkit.detach_state(None) is None
    assert torch.equal(rnnkit.detach_state((a,))[0], a)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be an int >= 1"),
        ({"k": True}, "k must be an int >= 1"),
        ({"k": 2, "targets": torch.zeros(3)}, "targets must share the inputs' leading"),
        ({"k": 2, "lengths": [5, 1]}, "tbptt: a length \\(5\\) exceeds"),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        list(rnnkit.tbptt(torch.zeros(4, 2, 1), **kwargs))
    with pytest.raises(ValueError, match="expected inputs with a time and a batch axis"):
        list(rnnkit.tbptt(torch.zeros(4), k=2))
