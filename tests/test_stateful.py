"""Stateful training (the state carried across batches, detached, reset each epoch), batch
sources with positions and variable windows, and copies of the model taken at step boundaries."""

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnkit


class TinyLM(nn.Module):
    """``forward(x, state=None) -> (logits, state)``: the stateful contract."""

    def __init__(self, vocab=7, hidden=8, dropout=0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.drop = nn.Dropout(dropout)
        self.rnn = rnnkit.LSTM(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        out, state = self.rnn(self.drop(self.embed(x)), state)
        return self.head(out), state


class Windows:
    """A minimal batch source: ``streams`` rows of a token tensor cut into windows of
    ``seq_len`` (the last one shorter), with a position for exact resume."""

    def __init__(self, ids, streams=4, seq_len=5, variable=False):
        usable = (len(ids) - 1) // streams * streams
        self.data = ids[: usable + 1]
        self.x = ids[:usable].view(streams, -1)
        self.y = ids[1 : usable + 1].view(streams, -1)
        self.seq_len, self.variable, self.streams = seq_len, variable, streams
        self.batch_size = streams
        self.epoch, self.position = 0, 0
        self._start = 0

    def _cuts(self):
        steps = self.x.shape[1]
        lens = [self.seq_len if not self.variable or i % 2 == 0 else 3 for i in range(steps)]
        cuts, t = [], 0
        for n in lens:
            if t >= steps:
                break
            cuts.append((t, min(t + n, steps)))
            t += n
        return cuts

    def __len__(self):
        return len(self._cuts())

    def set_epoch(self, epoch):
        if epoch != self.epoch:
            self.epoch, self._start = epoch, 0

    def __iter__(self):
        cuts, start, self._start = self._cuts(), self._start, 0
        for i in range(start, len(cuts)):
            self.position = i + 1
            a, b = cuts[i]
            yield self.x[:, a:b], self.y[:, a:b]

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position, "streams": self.streams}

    def load_state_dict(self, state):
        if state["streams"] != self.streams:
            raise ValueError(f"streams {state['streams']} then, {self.streams} now")
        self.epoch, self._start = state["epoch"], state["position"]


def _ids(n=161, seed=0):
    return torch.randint(0, 7, (n,), generator=torch.Generator().manual_seed(seed))


def _trainer(model, **kw):
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    return rnnkit.Trainer(model, opt, "cross_entropy", stateful=True, **kw)


def test_state_is_carried_detached_and_reset_each_epoch_like_a_hand_loop():
    ids = _ids()
    torch.manual_seed(0)
    model = TinyLM()
    reference = TinyLM()
    reference.load_state_dict(model.state_dict())
    _trainer(model).fit(Windows(ids), epochs=2)
    opt = torch.optim.Adam(reference.parameters(), lr=0.01)
    for _ in range(2):
        state = None
        for x, y in Windows(ids):
            out, state = reference(x, state)
            state = tuple(s.detach() for s in state)
            loss = F.cross_entropy(out.reshape(-1, 7), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)


def test_evaluation_resets_once_and_carries_the_state_through_the_data():
    torch.manual_seed(0)
    model = TinyLM()
    ids = _ids(seed=1)
    result = _trainer(model).evaluate(Windows(ids))
    with torch.no_grad():
        state, total, count = None, 0.0, 0
        for x, y in Windows(ids):
            out, state = model(x, state)
            total += F.cross_entropy(out.reshape(-1, 7), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    assert result["loss"] == pytest.approx(total / count, rel=1e-6)


def test_shuffled_batches_and_a_changing_number_of_streams_are_refused():
    model = TinyLM()
    x, y = _ids(40).view(8, 5), _ids(40, 1).view(8, 5)
    with pytest.raises(ValueError, match="must come in order: pass shuffle=False"):
        _trainer(model).fit((x, y), shuffle=True)
    with pytest.raises(ValueError, match="the epoch began with 3, this batch has 2"):
        _trainer(model).fit((x, y), batch_size=3)
    _trainer(model).fit((x, y), batch_size=3, drop_last=True)


def test_mid_epoch_resume_of_a_stateful_run_is_exact(tmp_path):
    def run(stop_at=None, resume=None):
        torch.manual_seed(0)
        model = TinyLM(dropout=0.3)
        trainer = _trainer(model, checkpoint=tmp_path, grad_clip=0.5)
        if stop_at is not None:
            trainer.callbacks.append(StopAt(stop_at))
        trainer.fit(Windows(_ids(), variable=True), epochs=2, resume=resume)
        return trainer

    full = run()
    cut = run(stop_at=3)
    assert cut.status == "stopped"
    saved = rnnkit.load_checkpoint(tmp_path / "interrupted.pt")
    assert saved["batch_in_epoch"] == 3 and saved["carried_state"] is not None
    resumed = run(resume=tmp_path / "interrupted.pt")
    assert resumed.history.step_values("loss") == full.history.step_values("loss")
    for a, b in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_with_another_number_of_streams_is_refused(tmp_path):
    torch.manual_seed(0)
    trainer = _trainer(TinyLM(), checkpoint=tmp_path)
    trainer.callbacks.append(StopAt(2))
    trainer.fit(Windows(_ids(), streams=4))
    with pytest.raises(ValueError, match="cut differently.*batch_size 4 then, 2 now"):
        _trainer(TinyLM()).fit(Windows(_ids(), streams=2), resume=tmp_path / "interrupted.pt")


class StopAt(rnnkit.Callback):
    def __init__(self, step):
        self.step = step

    def on_batch_end(self, trainer, logs):
        if trainer.step == self.step:
            trainer.stop()


def test_variable_windows_scale_the_learning_rate_by_their_length():
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = rnnkit.Trainer(model, opt, "cross_entropy", stateful=True)
    source = Windows(_ids(), seq_len=6, variable=True)
    trainer.fit(source)
    lengths = [b - a for a, b in source._cuts()]
    assert {6, 3} <= set(lengths)
    assert trainer.history.step_values("lr") == pytest.approx([0.1 * n / 6 for n in lengths])
    assert opt.param_groups[0]["lr"] == 0.1  # the scaled rate is for the update only


def test_copy_model_from_another_thread_is_taken_at_a_step_boundary_and_changes_nothing():
    def run(copy_from_thread):
        torch.manual_seed(0)
        model = TinyLM(dropout=0.2)
        trainer = _trainer(model)
        copies = []
        started = threading.Event()

        class Signal(rnnkit.Callback):
            def on_batch_end(self, trainer, logs):
                if logs["step"] == 2:
                    started.set()

        trainer.callbacks.append(Signal())
        thread = threading.Thread(target=trainer.fit, args=(Windows(_ids()),), kwargs={"epochs": 3})
        thread.start()
        if copy_from_thread:
            started.wait(60)
            copies.append(trainer.copy_model(timeout=60))
        thread.join(120)
        return trainer, copies

    plain, _ = run(False)
    copied, copies = run(True)
    assert len(copies) == 1 and copies[0] is not copied.model
    assert copied.history.step_values("loss") == plain.history.step_values("loss")
    for a, b in zip(copied.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.equal(a, b)
    midway = [p for p in copies[0].parameters()]
    assert any(
        not torch.equal(a, b) for a, b in zip(midway, copied.model.parameters(), strict=True)
    )


def test_copy_model_while_a_fit_is_still_setting_up_waits_for_its_first_boundary():
    torch.manual_seed(0)
    trainer = _trainer(TinyLM())
    entered, go = threading.Event(), threading.Event()
    prepare = trainer._prepare_run

    def slow_prepare():
        entered.set()
        go.wait(60)
        prepare()

    trainer._prepare_run = slow_prepare
    queued = threading.Event()
    ask = trainer.requests.ask_copy

    def ask_copy(timeout):
        queued.set()
        return ask(timeout)

    trainer.requests.ask_copy = ask_copy
    runner = threading.Thread(target=trainer.fit, args=(Windows(_ids()),))
    runner.start()
    entered.wait(60)
    copies = []
    copier = threading.Thread(target=lambda: copies.append(trainer.copy_model(timeout=60)))
    copier.start()
    assert queued.wait(60)  # the request goes to the fit, not a copy taken on the spot
    assert trainer.status == "idle" and not copies  # not copied while the fit sets up
    go.set()
    copier.join(60)
    runner.join(120)
    assert len(copies) == 1 and trainer.status == "finished"
