"""CSVLogger and TensorBoardLogger: what they write is read back (csv; TensorBoard's own reader)
and compared with the trainer's history."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnkit

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(callbacks, metrics=None):
    rnnkit.seed_everything(0)
    model = rnnkit.SequenceModel(2, 6, 1, cell="gru")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return rnnkit.Trainer(model, optimizer, "mse", metrics=metrics, callbacks=callbacks)


def _data(n=48, seed=0):
    return rnnkit.tasks.adding_problem(n, 8, seed=seed)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_per_epoch_matches_the_history(tmp_path):
    path = tmp_path / "logs" / "epochs.csv"
    trainer = _trainer([rnnkit.CSVLogger(path)], metrics={"mae": "mae"})
    trainer.fit(_data(), _data(16, 1), epochs=3, batch_size=16)
    rows = _read_csv(path)
    assert list(rows[0]) == [
        "epoch",
        "loss",
        "val_loss",
        "mae",
        "val_mae",
        "lr",
        "time",
        "steps",
        "skipped",
    ]
    assert len(rows) == 3
    for row, record in zip(rows, trainer.history.epochs, strict=True):
        assert int(row["epoch"]) == record["epoch"]
        assert float(row["loss"]) == record["loss"]  # full precision: exactly the same float
        assert float(row["val_loss"]) == record["val_loss"]
        assert float(row["val_mae"]) == record["metrics"]["val_mae"]
        assert int(row["steps"]) == 3


def test_csv_per_step_and_a_second_fit_appends(tmp_path):
    path = tmp_path / "steps.csv"
    logger = rnnkit.CSVLogger(path, per="step")
    trainer = _trainer([logger])
    trainer.fit(_data(), epochs=1, batch_size=16)
    trainer.fit(_data(), epochs=1, batch_size=16)  # continue: the same file goes on
    rows = _read_csv(path)
    assert [int(r["step"]) for r in rows] == list(range(6))
    assert [float(r["loss"]) for r in rows] == trainer.history.step_values("loss")
    assert [float(r["grad_norm"]) for r in rows] == trainer.history.step_values("grad_norm")
    assert {r["skipped"] for r in rows} == {"0"}

    again = _trainer([rnnkit.CSVLogger(path, per="step")])  # a new logger starts afresh
    again.fit(_data(), epochs=1, batch_size=16, max_steps=2)
    assert len(_read_csv(path)) == 2
    appended = _trainer([rnnkit.CSVLogger(path, per="step", append=True)])
    appended.fit(_data(), epochs=1, batch_size=16, max_steps=1)
    assert len(_read_csv(path)) == 3


def test_csv_widens_for_a_key_that_appears_later(tmp_path):
    path = tmp_path / "w.csv"
    logger = rnnkit.CSVLogger(path, per="step")
    trainer = _trainer([logger])
    logger.on_fit_begin(trainer)
    logger.on_batch_end(trainer, {"step": 0, "loss": 0.5})
    logger.on_batch_end(trainer, {"step": 1, "loss": 0.25, "extra": 3})
    logger.on_fit_end(trainer)
    rows = _read_csv(path)
    assert list(rows[0]) == ["step", "loss", "skipped", "extra"]
    assert [r["extra"] for r in rows] == ["", "3"] and rows[1]["loss"] == "0.25"


def test_csv_rejects_a_bad_per():
    with pytest.raises(ValueError, match="per must be 'epoch' or 'step', got 'batch'"):
        rnnkit.CSVLogger("x.csv", per="batch")


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def test_tensorboard_scalars_read_back_with_tensorboards_reader(tmp_path):
    pytest.importorskip("tensorboard")
    logger = rnnkit.TensorBoardLogger(tmp_path / "run")
    trainer = _trainer([logger], metrics={"mae": "mae"})
    trainer.fit(_data(), _data(16, 1), epochs=2, batch_size=16)
    logger.close()
    events = _events(tmp_path / "run")
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/grad_norm", "train/lr", "train/mae"} <= scalars
    assert {"epoch/loss", "epoch/val_loss", "epoch/lr", "epoch/mae", "epoch/val_mae"} <= scalars
    assert not {"train/step", "train/time", "train/batch_size"} & scalars
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(6))
    expected = trainer.history.step_values("loss")
    assert [e.value for e in loss] == pytest.approx(expected, rel=1e-6)  # stored as float32
    grad = [e.value for e in events.Scalars("train/grad_norm")]
    assert grad == pytest.approx(trainer.history.step_values("grad_norm"), rel=1e-6)
    val = events.Scalars("epoch/val_loss")
    assert [e.step for e in val] == [3, 6]  # the global step at each epoch's end
    assert [e.value for e in val] == pytest.approx(trainer.history["val_loss"], rel=1e-6)
    assert events.Tags()["histograms"] == []  # gradient flow is off by default


def test_tensorboard_gradient_flow_histograms(tmp_path):
    pytest.importorskip("tensorboard")
    x, y = _data(8, 2)
    logger = rnnkit.TensorBoardLogger(tmp_path, gradient_flow=(x, y), flow_every=2)
    trainer = _trainer([logger])
    before = []

    class Grads(rnnkit.Callback):  # the flow must leave the update's gradients alone
        def on_batch_end(self, trainer, logs):
            before.append([p.grad.clone() for p in trainer.model.parameters()])

    trainer.callbacks.insert(0, Grads())
    trainer.fit(_data(), epochs=1, batch_size=16)
    for saved, p in zip(before[-1], trainer.model.parameters(), strict=True):
        assert torch.equal(saved, p.grad)
    logger.close()
    events = _events(tmp_path)
    assert events.Tags()["histograms"] == ["gradient_flow/rnn.l0"]
    histograms = events.Histograms("gradient_flow/rnn.l0")
    assert [h.step for h in histograms] == [0, 2]
    last = histograms[-1].histogram_value
    flow = rnnkit.gradient_flow(trainer.model, x, y, trainer.loss_fn)  # the weights after step 2
    assert last.num == 8  # one value per time step
    ratios = events.Scalars("gradient_flow/rnn.l0/first_over_last")
    assert [r.step for r in ratios] == [0, 2] and all(math.isfinite(r.value) for r in ratios)
    norms = flow.per_step["rnn.l0"].double()  # step 2 is the last update: the same weights
    assert last.sum == pytest.approx(float(norms.sum()), rel=1e-6)
    assert (last.min, last.max) == pytest.approx((float(norms.min()), float(norms.max())), rel=1e-6)


def test_loggers_may_run_a_step_late_unless_they_measure_the_weights():
    pytest.importorskip("tensorboard")
    assert rnnkit.CSVLogger("x.csv").deferrable and rnnkit.TensorBoardLogger().deferrable
    probe = _data(4)
    assert not rnnkit.TensorBoardLogger(gradient_flow=probe).deferrable


def test_tensorboard_logger_bad_arguments():
    pytest.importorskip("tensorboard")
    with pytest.raises(
        ValueError, match=r"gradient_flow must be a probe batch \(inputs, targets\)"
    ):
        rnnkit.TensorBoardLogger(gradient_flow=torch.zeros(2))
    with pytest.raises(ValueError, match="flow_every must be an int >= 1, got 0"):
        rnnkit.TensorBoardLogger(flow_every=0)


@pytest.mark.slow  # a fresh interpreter imports torch
def test_import_rnnkit_does_not_import_tensorboard():
    done = subprocess.run(
        [sys.executable, "-c", "import sys, rnnkit; print('tensorboard' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
