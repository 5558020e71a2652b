import json
import math
import os
import signal
import threading
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rnnkit
from rnnkit.batches import Batch


def _data(n=24, t=5, f=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, t, f, generator=g), torch.randn(n, 1, generator=g)


def _model(f=3, hidden=4, dropout=0.0):
    return nn.Sequential(
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(5 * f, hidden), nn.Tanh(), nn.Linear(hidden, 1)
    )


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _trainer(model=None, lr=0.1, **kw):
    model = model or _model()
    return rnnkit.Trainer(model, torch.optim.SGD(model.parameters(), lr=lr), "mse", **kw)


class Recorder(rnnkit.Callback):
    def __init__(self):
        self.events = []

    def on_fit_begin(self, trainer):
        self.events.append("fit_begin")

    def on_epoch_begin(self, trainer, epoch):
        self.events.append(f"epoch_begin {epoch}")

    def on_batch_begin(self, trainer, batch_index):
        self.events.append(f"batch_begin {batch_index}")

    def on_after_backward(self, trainer, logs):
        self.events.append("after_backward")

    def on_batch_end(self, trainer, logs):
        self.events.append(f"batch_end {logs['batch']}")

    def on_epoch_end(self, trainer, logs):
        self.events.append(f"epoch_end {logs['epoch']}")

    def on_fit_end(self, trainer):
        self.events.append(f"fit_end {trainer.status}")

    def on_interrupt(self, trainer):
        self.events.append("interrupt")

    def on_exception(self, trainer, exc):
        self.events.append(f"exception {type(exc).__name__}")


class AtStep(rnnkit.Callback):
    """Run ``action(trainer)`` in on_batch_end of step ``step``; snapshot the parameters then."""

    def __init__(self, step, action):
        self.step, self.action, self.snapshot = step, action, None

    def on_batch_end(self, trainer, logs):
        if logs["step"] == self.step:
            self.snapshot = _params(trainer.model)
            self.action(trainer)


# ---- the loop ----------------------------------------------------------------------------


def test_trainer_matches_a_bare_loop_exactly():
    x, y = _data()
    torch.manual_seed(1)
    model = _model()
    reference = _model()
    reference.load_state_dict(model.state_dict())
    trainer = _trainer(model, grad_clip=0.5)
    trainer.fit((x, y), epochs=2, batch_size=8, shuffle=False)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    losses, norms = [], []
    for _ in range(2):
        for i in range(0, 24, 8):
            opt.zero_grad()
            loss = nn.functional.mse_loss(reference(x[i : i + 8]), y[i : i + 8])
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)))
            opt.step()
            losses.append(loss.item())
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert trainer.history.step_values("loss") == pytest.approx(losses, abs=1e-7)
    assert trainer.history.step_values("grad_norm") == pytest.approx(norms, rel=1e-6)
    assert trainer.status == "finished"


def test_history_records_and_serialises():
    x, y = _data()
    trainer = _trainer(metrics=["mae"])
    history = trainer.fit((x[:16], y[:16]), val=(x[16:], y[16:]), epochs=3, batch_size=8)
    assert history is trainer.history and len(history) == 3 and len(history.steps) == 6
    step = history.steps[-1]
    for key in ("step", "epoch", "batch", "loss", "grad_norm", "lr", "time", "mae"):
        assert key in step
    assert (step["step"], step["epoch"], step["batch"]) == (5, 2, 1)
    epoch = history.epochs[-1]
    for key in ("epoch", "loss", "val_loss", "metrics", "lr", "time"):
        assert key in epoch
    assert set(epoch["metrics"]) == {"mae", "val_mae"}
    assert history["val_loss"] == [e["val_loss"] for e in history.epochs]
    assert history["val_mae"] == [e["metrics"]["val_mae"] for e in history.epochs]
    # the epoch loss is the sample-weighted mean of its steps
    assert epoch["loss"] == pytest.approx(sum(s["loss"] for s in history.steps[-2:]) / 2)
    # val_loss is the loss of the model at the epoch's end on the validation data
    with torch.no_grad():
        expected = float(nn.functional.mse_loss(trainer.model(x[16:]), y[16:]))
    assert epoch["val_loss"] == pytest.approx(expected, rel=1e-6)
    restored = rnnkit.History.from_dict(json.loads(history.to_json()))
    assert restored.to_dict() == history.to_dict()
    assert history.step_values("lr") == [0.1] * 6
    with pytest.raises(KeyError, match="nope"):
        history["nope"]


def test_events_in_order_and_fit_end_always():
    x, y = _data(n=4)
    rec = Recorder()
    _trainer(callbacks=[rec]).fit((x, y), epochs=2, batch_size=2)
    batch = ["batch_begin 0", "after_backward", "batch_end 0"]
    batch += ["batch_begin 1", "after_backward", "batch_end 1"]
    assert rec.events == (
        ["fit_begin", "epoch_begin 0", *batch, "epoch_end 0", "epoch_begin 1", *batch]
        + ["epoch_end 1", "fit_end finished"]
    )


def test_exception_sets_failed_and_is_reraised():
    class Boom(rnnkit.Callback):
        def on_batch_end(self, trainer, logs):
            raise RuntimeError("boom")

    rec = Recorder()
    trainer = _trainer(callbacks=[Boom(), rec])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(_data(n=4), batch_size=2)
    assert trainer.status == "failed" and isinstance(trainer.error, RuntimeError)
    assert rec.events[-2:] == ["exception RuntimeError", "fit_end failed"]


def test_lengths_reach_the_model_and_dict_batches_work():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnnkit.GRU(1, 4, batch_first=True)
            self.head = nn.Linear(4, 1)

        def forward(self, x, lengths=None):
            seen.append(None if lengths is None else lengths.tolist())
            return self.head(self.rnn(x, lengths=lengths)[1][-1])

    x, y, lengths = rnnkit.tasks.variable_length(6, min_len=2, max_len=7, seed=0)
    model = Probe()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = rnnkit.Trainer(model, opt, lambda out, t: (out.squeeze(1) - t.float()).pow(2).mean())
    trainer.fit((x, y, lengths), epochs=1, batch_size=3, shuffle=False)
    assert seen == [lengths[:3].tolist(), lengths[3:].tolist()]
    seen.clear()
    loader = DataLoader([{"x": x[i], "y": y[i], "lengths": lengths[i]} for i in range(6)], 6)
    trainer.fit(loader, epochs=2)
    assert seen == [lengths.tolist()] * 2


def test_dict_inputs_and_forward_fn():
    x, y = rnnkit.tasks.multimodal(16, fast_len=8, rate=4, seed=0)

    class TwoRates(nn.Module):
        def __init__(self):
            super().__init__()
            self.fast, self.slow = nn.GRU(2, 4, batch_first=True), nn.GRU(3, 4, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, fast, slow):
            return self.head(torch.cat([self.fast(fast)[1][-1], self.slow(slow)[1][-1]], dim=-1))

    model = TwoRates()
    history = rnnkit.fit(
        model,
        x,
        y,
        epochs=2,
        batch_size=8,
        loss="cross_entropy",
        forward_fn=lambda m, b: m(b.x["fast"], b.x["slow"]),
        progress=False,
    )
    assert len(history.steps) == 4 and all(math.isfinite(s["loss"]) for s in history.steps)


def test_batch_fn_converts_other_layouts():
    x, y = _data(n=8)
    loader = DataLoader(TensorDataset(y, x), batch_size=4)  # (y, x): swapped
    trainer = _trainer(batch_fn=lambda raw: Batch(raw[1], raw[0]))
    trainer.fit(loader)
    assert len(trainer.history.steps) == 2


def test_bad_batch_layout_is_a_type_error():
    x, y = _data(n=4)
    loader = DataLoader(TensorDataset(x, y, y, y), batch_size=2)
    with pytest.raises(TypeError, match=r"\(x, y\), \(x, y, lengths\).*4 items"):
        _trainer().fit(loader)


def test_loss_must_be_scalar():
    model = _model()
    trainer = rnnkit.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), lambda o, t: (o - t) ** 2
    )
    with pytest.raises(ValueError, match="scalar"):
        trainer.fit(_data(n=4), batch_size=2)


# ---- control ------------------------------------------------------------------------------


def test_stop_ends_cleanly_at_a_step_boundary():
    rec = Recorder()
    at = AtStep(3, lambda t: t.stop())
    trainer = _trainer(callbacks=[at, rec])
    history = trainer.fit(_data(), epochs=3, batch_size=4)  # returns normally
    assert trainer.status == "stopped" and trainer.interrupted
    assert len(history.steps) == 4 and trainer.step == 4
    for a, b in zip(trainer.model.parameters(), at.snapshot, strict=True):
        assert torch.equal(a, b)
    assert rec.events[-2:] == ["interrupt", "fit_end stopped"]


def test_pause_set_lr_unpause_stop_from_another_thread():
    x, y = _data(n=400)
    gate = threading.Event()

    class Slow(rnnkit.Callback):
        def on_batch_end(self, trainer, logs):
            gate.set()

    trainer = _trainer(callbacks=[Slow()])
    assert trainer.status == "idle"
    worker = threading.Thread(target=trainer.fit, args=((x, y),), kwargs={"epochs": 1000})
    worker.start()
    try:
        assert gate.wait(30)
        trainer.pause()
        deadline = time.monotonic() + 30
        while trainer.status != "paused" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert trainer.status == "paused"
        steps = len(trainer.history.steps)
        time.sleep(0.2)
        assert len(trainer.history.steps) == steps  # held between steps
        trainer.set_lr(0.01)
        trainer.grad_clip = 0.25
        trainer.unpause()
        while len(trainer.history.steps) < steps + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        trainer.stop()
    finally:
        trainer.stop()
        worker.join(30)
    assert not worker.is_alive() and trainer.status == "stopped"
    after = trainer.history.steps[steps:]
    assert after and all(s["lr"] == 0.01 for s in after)
    assert all(s["lr"] == 0.1 for s in trainer.history.steps[:steps])
    assert trainer.history.events == [{"event": "set_lr", "step": steps, "lr": 0.01}]


def test_grad_clip_is_read_every_step():
    x, y = _data()
    model = _model()
    sizes = []

    class Watch(rnnkit.Callback):
        def on_batch_begin(self, trainer, batch_index):
            self.before = _params(trainer.model)
            if trainer.step == 2:
                trainer.grad_clip = 1e-3

        def on_batch_end(self, trainer, logs):
            change = torch.cat(
                [
                    (a - b).flatten()
                    for a, b in zip(trainer.model.parameters(), self.before, strict=True)
                ]
            )
            sizes.append(change.norm().item())

    _trainer(model, lr=1.0, callbacks=[Watch()]).fit((x, y), epochs=1, batch_size=4)
    assert min(sizes[:2]) > 1e-2  # unclipped SGD steps (lr 1)
    assert max(sizes[2:]) <= 1e-3 * (1 + 1e-5)  # lr 1: the update is the clipped gradient


def test_ctrl_c_stops_at_a_boundary_and_reraises(tmp_path):
    original = signal.getsignal(signal.SIGINT)
    at = AtStep(2, lambda t: os.kill(os.getpid(), signal.SIGINT))
    rec = Recorder()
    trainer = _trainer(callbacks=[at, rec], checkpoint=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(_data(), epochs=5, batch_size=4)
    assert signal.getsignal(signal.SIGINT) is original
    assert trainer.status == "stopped" and trainer.interrupted and trainer.clean_stop
    assert len(trainer.history.steps) == 3
    for a, b in zip(trainer.model.parameters(), at.snapshot, strict=True):
        assert torch.equal(a, b)
    saved = rnnkit.load_checkpoint(tmp_path / "interrupted.pt")
    assert saved["step"] == 3 and saved["batch_in_epoch"] == 3
    assert rec.events[-2:] == ["interrupt", "fit_end stopped"]
    # the trainer stays usable: the next fit continues
    at.step = -1
    trainer.fit(_data(), epochs=1, batch_size=4)
    assert trainer.status == "finished"


def test_raw_keyboard_interrupt_is_handled_and_reraised():
    def hard(trainer):
        raise KeyboardInterrupt

    original = signal.getsignal(signal.SIGINT)
    trainer = _trainer(callbacks=[AtStep(1, hard)])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(_data(), epochs=2, batch_size=4)
    assert trainer.status == "stopped" and trainer.clean_stop
    assert signal.getsignal(signal.SIGINT) is original


def test_max_steps_and_early_stopping_finish():
    trainer = _trainer()
    trainer.fit(_data(), epochs=10, batch_size=4, max_steps=7)
    assert trainer.step == 7 and trainer.status == "finished"
    # a model that cannot improve: val loss constant
    model = _model()
    early = rnnkit.EarlyStopping("val_loss", patience=2)
    trainer = rnnkit.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.0), "mse", callbacks=[early]
    )
    x, y = _data()
    trainer.fit((x, y), val=(x, y), epochs=10, batch_size=8)
    assert trainer.status == "finished" and len(trainer.history) == 3
    assert early.stopped_epoch == 2 and early.best_epoch == 0


def test_early_stopping_restores_best_weights_and_ignores_nan():
    model = _model()
    early = rnnkit.EarlyStopping("score", patience=2, mode="max")

    class FakeTrainer:
        pass

    fake = FakeTrainer()
    fake.model, fake.stop_training = model, False
    for epoch, score in enumerate([float("nan"), 1.0, float("nan"), 0.5]):
        if epoch == 1:
            best = _params(model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        if epoch == 1:
            best = _params(model)
        early.on_epoch_end(fake, {"epoch": epoch, "metrics": {"score": score}})
    assert early.best == 1.0 and early.best_epoch == 1 and fake.stop_training
    early.on_fit_end(fake)
    for a, b in zip(model.parameters(), best, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="monitors 'score'"):
        early.on_epoch_end(fake, {"epoch": 5, "loss": 1.0})


# ---- non-finite guard ---------------------------------------------------------------------


def _nan_at_batch(x, index, batch_size):
    x = x.clone()
    x[index * batch_size] = float("nan")
    return x


def test_nonfinite_stop_names_step_batch_and_parameter():
    x, y = _data()
    x = _nan_at_batch(x, 4, 4)  # epoch 0 batch 4 = step 4
    at = AtStep(3, lambda t: None)
    trainer = _trainer(callbacks=[at])
    with pytest.raises(rnnkit.NonFiniteError) as info:
        trainer.fit((x, y), epochs=2, batch_size=4, shuffle=False)
    message = str(info.value)
    assert "step 4" in message and "batch 4" in message and "epoch 0" in message
    assert "first non-finite gradient: 2.weight" in message  # first Linear (after Flatten, Dropout)
    assert trainer.status == "failed" and trainer.error is info.value
    for a, b in zip(trainer.model.parameters(), at.snapshot, strict=True):
        assert torch.equal(a, b)  # parameters as before the failing step


def test_nonfinite_skip_counts_and_keeps_parameters_finite():
    x, y = _data()
    x = _nan_at_batch(x, 1, 4)
    trainer = _trainer(nonfinite="skip")
    trainer.fit((x, y), epochs=2, batch_size=4, shuffle=False)
    assert trainer.skipped_steps == 2
    assert [s["step"] for s in trainer.history.steps if s.get("skipped")] == [1, 7]
    assert [e["skipped"] for e in trainer.history.epochs] == [1, 1]
    assert all(math.isfinite(e["loss"]) for e in trainer.history.epochs)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_huge_learning_rate_never_makes_parameters_nan_silently():
    x, y = _data()
    trainer = _trainer(lr=1e25)
    with pytest.raises(rnnkit.NonFiniteError, match="non-finite training step"):
        trainer.fit((x, y * 1e10), epochs=50, batch_size=4)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


# ---- determinism, schedules, amp ----------------------------------------------------------


def _seeded_run(seed):
    rnnkit.seed_everything(seed)
    model = _model(dropout=0.3)
    trainer = rnnkit.Trainer(model, torch.optim.Adam(model.parameters(), lr=0.01), "mse")
    x, y = _data()
    trainer.fit((x, y), epochs=2, batch_size=5)
    return [{k: v for k, v in s.items() if k != "time"} for s in trainer.history.steps]


def test_same_seed_gives_bit_identical_history():
    first, second = _seeded_run(3), _seeded_run(3)
    assert first == second
    assert first != _seeded_run(4)


def test_seed_everything_deterministic_flags(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic
    try:
        rnnkit.seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic = before[1]
    with pytest.raises(ValueError, match="seed must be in"):
        rnnkit.seed_everything(-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        rnnkit.seed_everything(1.5)


def test_one_cycle_per_batch_and_step_lr_per_epoch():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=12)
    trainer = rnnkit.Trainer(model, opt, "mse", scheduler=sched)
    trainer.fit(_data(), epochs=2, batch_size=4)
    ref_opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=0.5, total_steps=12)
    expected = []
    for _ in range(12):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert trainer.history.step_values("lr") == pytest.approx(expected, rel=1e-12)

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trainer = rnnkit.Trainer(model, opt, "mse", scheduler=sched, scheduler_interval="epoch")
    trainer.fit(_data(), epochs=3, batch_size=12)
    assert trainer.history.step_values("lr") == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_reduce_on_plateau_and_set_lr_stops_a_schedule():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    trainer = rnnkit.Trainer(model, opt, "mse", scheduler=sched, scheduler_interval="epoch")
    x, y = _data()
    trainer.fit((x, y), val=(x, y), epochs=1, batch_size=24)
    assert sched.best == trainer.history["val_loss"][0]
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trainer = rnnkit.Trainer(
        model, opt, "mse", scheduler=sched, callbacks=[AtStep(1, lambda t: t.set_lr(0.3))]
    )
    trainer.fit(_data(), epochs=1, batch_size=4)
    assert trainer.history.step_values("lr") == pytest.approx([0.1, 0.05, 0.3, 0.3, 0.3, 0.3])
    assert trainer.history.events == [
        {"event": "set_lr", "step": 2, "lr": 0.3, "scheduler": "stopped"}
    ]


def test_gradient_clipping_callback_schedule():
    trainer = _trainer(callbacks=[rnnkit.GradientClipping(lambda step: 1.0 / (step + 1))])
    clips = []
    trainer.callbacks.append(AtStep(-1, lambda t: None))

    class Read(rnnkit.Callback):
        def on_after_backward(self, trainer, logs):
            clips.append(trainer.grad_clip)

    trainer.callbacks.append(Read())
    trainer.fit(_data(n=12), batch_size=4)
    assert clips == [1.0, 0.5, 1.0 / 3]
    with pytest.raises(ValueError, match="max_norm"):
        rnnkit.GradientClipping(-1.0)


def test_amp_bf16_on_cpu_trains():
    x, y = _data()
    trainer = _trainer(amp=True)
    trainer.fit((x, y), epochs=1, batch_size=8)
    assert trainer.scaler is not None and not trainer.scaler_enabled  # no scaler for bf16
    assert all(math.isfinite(s["loss"]) for s in trainer.history.steps)


def test_lr_find_restores_and_suggests():
    x, y = _data(n=64)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.123)
    before = _params(model)
    result = rnnkit.lr_find(
        model, opt, "mse", (x, y), start_lr=1e-5, end_lr=1e2, num_steps=30, batch_size=8
    )
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))
    assert opt.param_groups[0]["lr"] == 0.123 and not opt.state
    assert result.lrs[0] == pytest.approx(1e-5)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:], strict=False)]
    assert ratios == pytest.approx([(1e7) ** (1 / 29)] * len(ratios))
    assert result.lrs[0] < result.suggestion < result.lrs[-1]
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        rnnkit.lr_find(model, opt, "mse", (x, y), start_lr=1.0, end_lr=0.1)


def test_progress_bar_runs_headless(capsys):
    x, y = _data()
    rnnkit.fit(_model(), x, y, epochs=2, batch_size=8, progress=True, device="cpu")
    assert "epoch 2/2" in capsys.readouterr().err


# ---- Keras-style fit and bad input (issue section 9) --------------------------------------


def test_keras_fit_validation_split_takes_the_last_samples():
    x, y = _data(n=20)
    history = rnnkit.fit(
        _model(),
        x,
        y,
        epochs=1,
        batch_size=4,
        validation_split=0.25,
        optimizer="sgd",
        lr=0.0,
        progress=False,
        device="cpu",
    )
    assert len(history.steps) == 4  # 15 training samples in batches of 4
    model = _model()
    history = rnnkit.fit(
        model,
        x,
        y,
        epochs=1,
        batch_size=4,
        validation_split=0.25,
        optimizer="sgd",
        lr=0.0,
        progress=False,
        device="cpu",
        seed=None,
    )
    with torch.no_grad():
        expected = float(nn.functional.mse_loss(model(x[15:]), y[15:]))
    assert history["val_loss"][0] == pytest.approx(expected, rel=1e-6)


def test_keras_fit_one_cycle_and_names():
    x, y, lengths = rnnkit.tasks.variable_length(32, min_len=3, max_len=8, seed=0)
    model = rnnkit.SequenceModel(1, 8, 3, cell="gru")
    history = rnnkit.fit(
        model,
        x,
        y,
        lengths=lengths,
        epochs=2,
        batch_size=8,
        loss="cross_entropy",
        metrics=["accuracy"],
        schedule="one_cycle",
        optimizer="adamw",
        lr=0.05,
        progress=False,
        device="cpu",
    )
    lrs = history.step_values("lr")
    assert max(lrs) == pytest.approx(0.05, rel=0.05) and lrs[-1] < 0.01
    assert 0.0 <= history["accuracy"][-1] <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"y": torch.randn(23, 1)}, ValueError, "x has 24, y has 23"),
        ({"x": torch.randn(0, 5, 3), "y": torch.randn(0, 1)}, ValueError, "empty"),
        ({"y": torch.zeros(24, 1, dtype=torch.long)}, ValueError, "floating-point targets"),
        ({"loss": "cross_entropy"}, ValueError, "integer class labels"),
        ({"x": torch.randn(24, 5, 3, dtype=torch.float64)}, ValueError, "float64.*float32"),
        ({"x": torch.zeros(24, 5, 3, dtype=torch.bool)}, ValueError, "torch.bool"),
        ({"validation_split": 0.0}, ValueError, r"validation_split must be in \(0, 1\)"),
        ({"validation_split": 1.0}, ValueError, r"validation_split must be in \(0, 1\)"),
        ({"validation_split": -0.2}, ValueError, r"validation_split must be in \(0, 1\)"),
        ({"validation_split": 0.01}, ValueError, "leaves 24 to train on and 0"),
        ({"optimizer": "adamax2"}, ValueError, "unknown optimizer 'adamax2'; expected one of"),
        ({"loss": "msle"}, ValueError, "unknown loss 'msle'; expected one of"),
        ({"metrics": ["f1"]}, ValueError, "unknown metric 'f1'"),
        ({"schedule": "warm"}, ValueError, "unknown schedule 'warm'"),
        ({"optimizer": 3}, TypeError, "optimizer must be a name"),
        ({"lengths": torch.ones(24)}, ValueError, "lengths must be a 1-D integer"),
        ({"epochs": -1}, ValueError, "epochs must be an int >= 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
    ],
)
def test_keras_fit_bad_input(kwargs, error, match):
    x, y = _data()
    args = {"x": x, "y": y, "progress": False, "device": "cpu"} | kwargs
    with pytest.raises(error, match=match):
        rnnkit.fit(_model(), **args)


def test_validation_split_and_data_together_is_an_error():
    x, y = _data()
    with pytest.raises(ValueError, match="not both"):
        rnnkit.fit(_model(), x, y, validation_split=0.2, validation_data=(x, y), progress=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"nonfinite": "ignore"}, ValueError, "nonfinite policy must be 'stop' or 'skip'"),
        ({"scheduler_interval": "step"}, ValueError, "scheduler_interval must be"),
        ({"grad_clip": -1.0}, ValueError, "grad_clip must be a positive"),
        ({"amp": "int8"}, ValueError, "amp must be"),
        ({"callbacks": [object()]}, TypeError, "rnnkit.Callback"),
        ({"scheduler": object()}, TypeError, "lr_scheduler"),
    ],
)
def test_trainer_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _trainer(**kwargs)


def test_trainer_bad_model_optimizer_and_data():
    model = _model()
    with pytest.raises(TypeError, match="torch.nn.Module"):
        rnnkit.Trainer(lambda x: x, torch.optim.SGD(model.parameters(), lr=0.1), "mse")
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        rnnkit.Trainer(model, "adam", "mse")
    with pytest.raises(TypeError, match="a DataLoader, a batch source .* or a tuple"):
        _trainer().fit([1, 2, 3, 4])
    trainer = _trainer()
    with pytest.raises(ValueError, match="val data: .*x has 4, y has 3"):
        trainer.fit(_data(), val=(torch.randn(4, 5, 3), torch.randn(3, 1)))
    assert trainer.status == "failed" and isinstance(trainer.error, ValueError)
    with pytest.raises(ValueError, match="lr must be a positive"):
        _trainer().set_lr(0)


def test_evaluate():
    x, y = _data()
    trainer = _trainer(metrics={"mean_abs": lambda o, t: (o - t).abs().mean()})
    result = trainer.evaluate((x, y), batch_size=7)
    with torch.no_grad():
        out = trainer.model(x)
    assert result["loss"] == pytest.approx(float(nn.functional.mse_loss(out, y)), rel=1e-6)
    assert result["metrics"]["mean_abs"] == pytest.approx(float((out - y).abs().mean()), rel=1e-6)


def test_validation_does_not_change_the_training_run():
    def run(val):
        torch.manual_seed(0)
        model = _model(dropout=0.3)
        trainer = _trainer(model)
        x, y = _data()
        trainer.fit((x, y), val=(x[:8], y[:8]) if val else None, epochs=3, batch_size=4)
        return _params(model), trainer.history.step_values("loss")

    with_val, without = run(True), run(False)
    assert with_val[1] == without[1]
    assert all(torch.equal(a, b) for a, b in zip(with_val[0], without[0], strict=True))
