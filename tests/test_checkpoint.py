import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.checkpoint import atomic_write

ROOT = Path(__file__).resolve().parent.parent


def _run_python(code: str, *args, wait=True):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _model():
    return nn.Sequential(nn.Flatten(), nn.Linear(15, 8), nn.Tanh(), nn.Linear(8, 1))


def _trainer(model=None, **kw):
    model = model or _model()
    return rnnkit.Trainer(model, torch.optim.Adam(model.parameters(), lr=0.01), "mse", **kw)


def _data(n=20):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, 3, generator=g), torch.randn(n, 1, generator=g)


# ---- atomic save --------------------------------------------------------------------------

KILL_MID_SAVE = """
import os, sys, time, torch, rnnkit
from rnnkit.checkpoint import atomic_write
path, where = sys.argv[1], sys.argv[2]
rnnkit.save_checkpoint(path, {"w": torch.zeros(10000)})
print("first", flush=True)
if where == "before-rename":  # all bytes written, stuck in fsync before os.replace
    def stuck(fd):
        print("saving", flush=True)
        time.sleep(120)
    os.fsync = stuck
    rnnkit.save_checkpoint(path, {"w": torch.ones(10000)})
else:  # half of the bytes written
    def half(file):
        file.write(b"x" * 5000)
        file.flush()
        print("saving", flush=True)
        time.sleep(120)
    atomic_write(path, half)
"""


@pytest.mark.slow
def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    children = {}
    for where in ("before-rename", "mid-write"):
        folder = tmp_path / where
        folder.mkdir()
        children[where] = (folder, _run_python(KILL_MID_SAVE, folder / "ck.pt", where, wait=False))
    for where, (folder, child) in children.items():
        assert child.stdout.readline().strip() == "first"
        previous = (folder / "ck.pt").read_bytes()
        assert child.stdout.readline().strip() == "saving"
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        assert (folder / "ck.pt").read_bytes() == previous, where
        assert torch.equal(rnnkit.load_checkpoint(folder / "ck.pt")["w"], torch.zeros(10000))
        leftovers = sorted(p.name for p in folder.iterdir())
        assert leftovers[0].startswith(".ck.pt.") and leftovers[0].endswith(".tmp")
        assert leftovers[1:] == ["ck.pt"], where  # nothing partial under the final name


def test_atomic_write_failure_leaves_nothing(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")

    def failing(file):
        file.write(b"new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


# ---- safe load ----------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling this opens (creates) the marker file
        return (open, (self.marker, "w"))


def test_a_pickle_payload_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    zipped = tmp_path / "zip.pt"
    torch.save({"format": "rnnkit-checkpoint", "model": _Payload(marker)}, zipped)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"format": "rnnkit-checkpoint", "x": _Payload(marker)}))
    with pytest.raises(ValueError, match="refusing to load .*pickle payload"):
        rnnkit.load_checkpoint(zipped)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        rnnkit.load_checkpoint(raw)
    with pytest.raises(ValueError, match="refusing"):
        _trainer().fit(_data(), resume=zipped)
    assert not marker.exists()
    # the payload is real: full unpickling (which rnnkit never does) would create the file
    torch.load(zipped, weights_only=False)
    assert marker.exists()


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        rnnkit.load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weight": torch.ones(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not an rnnkit checkpoint"):
        rnnkit.load_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "noise.pt").write_bytes(os.urandom(64))
    with pytest.raises(ValueError, match="not an rnnkit checkpoint"):
        rnnkit.load_checkpoint(tmp_path / "noise.pt")
    torch.save({"format": "rnnkit-checkpoint", "format_version": 99}, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="format version 99"):
        rnnkit.load_checkpoint(tmp_path / "new.pt")
    with pytest.raises(TypeError, match="state must be a dict"):
        rnnkit.save_checkpoint(tmp_path / "x.pt", [1, 2])


def test_checkpoint_contents_load_weights_only(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=10)
    trainer = rnnkit.Trainer(model, opt, "mse", scheduler=sched, amp=True)
    trainer.fit(_data(), epochs=1, batch_size=8)
    path = trainer.save_checkpoint(tmp_path / "c.pt")
    state = rnnkit.load_checkpoint(path)
    expected = {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "step",
        "batch_in_epoch",
        "rng",
        "epoch_start",
        "epoch_sums",
        "carried_state",
        "history",
        "data",
        "config",
        "format",
        "format_version",
        "checksum",
    }
    assert expected <= set(state)
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert (state["epoch"], state["step"], state["batch_in_epoch"]) == (1, 3, 0)
    assert state["config"]["model_class"] == "Sequential" and state["format_version"] == 2
    assert state["history"] == json.loads(json.dumps(trainer.history.to_dict()))
    assert state["scheduler"]["total_steps"] == 10


# ---- resume -------------------------------------------------------------------------------

RESUME_JOB = """
import json, sys, torch, rnnkit
from torch import nn

def build():
    rnnkit.seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(15, 8), nn.Dropout(0.2), nn.Tanh(),
                          nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=15)
    trainer = rnnkit.Trainer(model, opt, "mse", scheduler=sched, grad_clip=1.0, metrics=["mae"])
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(20, 5, 3, generator=g), torch.randn(20, 1, generator=g))
    return trainer, data

class StopAt(rnnkit.Callback):
    def __init__(self, steps=None, epoch=None):
        self.steps, self.epoch = steps, epoch
    def on_batch_end(self, trainer, logs):
        if trainer.step == self.steps:
            trainer.stop()
    def on_epoch_end(self, trainer, logs):
        if logs["epoch"] == self.epoch:
            trainer.stop()

def dump(trainer, path):
    result = {"losses": trainer.history.step_values("loss"),
              "epochs": [e["loss"] for e in trainer.history.epochs],
              "maes": [e["metrics"]["mae"] for e in trainer.history.epochs],
              "lrs": trainer.history.step_values("lr"),
              "step": trainer.step}
    torch.save({"result": result, "params": list(trainer.model.state_dict().values())}, path)

mode, folder = sys.argv[1], sys.argv[2]
if mode == "first":
    trainer, data = build()
    trainer.fit(data, epochs=3, batch_size=4)
    dump(trainer, f"{folder}/full.pt")
    for k in (3, 7):  # mid-epoch 0 and mid-epoch 1
        trainer, data = build()
        trainer.callbacks.append(StopAt(steps=k))
        trainer.fit(data, epochs=3, batch_size=4)
        trainer.save_checkpoint(f"{folder}/stop{k}.pt")
    trainer, data = build()  # at an epoch boundary, written by ModelCheckpoint
    trainer.callbacks.append(rnnkit.ModelCheckpoint(f"{folder}/auto", save_best=False))
    trainer.callbacks.append(StopAt(epoch=0))
    trainer.fit(data, epochs=3, batch_size=4)
else:
    trainer, data = build()
    trainer.fit(data, epochs=3, batch_size=4, resume=f"{folder}/{mode}")
    dump(trainer, f"{folder}/resumed-{mode.replace('/', '-')}")
"""


@pytest.mark.slow
def test_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    _run_python(RESUME_JOB, "first", tmp_path)
    names = ["stop3.pt", "stop7.pt", "auto/last.pt"]
    children = [_run_python(RESUME_JOB, name, tmp_path, wait=False) for name in names]
    for child in children:
        assert child.wait(300) == 0
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    assert full["result"]["step"] == 15
    for name in names:
        resumed = torch.load(tmp_path / f"resumed-{name.replace('/', '-')}", weights_only=True)
        assert resumed["result"] == full["result"], name  # every loss, lr, epoch mean: exact
        for a, b in zip(resumed["params"], full["params"], strict=True):
            assert torch.equal(a, b), name


def test_resume_in_process_continues_after_an_interrupt(tmp_path):
    x, y = _data()

    def run(resume=None, stop_at=None):
        torch.manual_seed(0)
        trainer = _trainer(checkpoint=tmp_path)
        if stop_at is not None:

            class Stop(rnnkit.Callback):
                def on_batch_end(self, trainer, logs):
                    if trainer.step == stop_at:
                        trainer.stop()

            trainer.callbacks.append(Stop())
        trainer.fit((x, y), epochs=2, batch_size=4, shuffle=False, resume=resume)
        return trainer

    full = run()
    run(stop_at=6)
    resumed = run(resume=tmp_path / "interrupted.pt")
    assert resumed.history.step_values("loss") == full.history.step_values("loss")
    assert all(
        torch.equal(a, b)
        for a, b in zip(resumed.model.parameters(), full.model.parameters(), strict=True)
    )


def test_resume_refuses_another_model(tmp_path):
    trainer = _trainer()
    trainer.fit(_data(), batch_size=10)
    trainer.save_checkpoint(tmp_path / "c.pt")
    other = nn.Sequential(nn.Flatten(), nn.Linear(15, 9), nn.Tanh(), nn.Linear(9, 1), nn.Tanh())
    with pytest.raises(ValueError, match=r"do not fit this Sequential.*shape mismatches: 1.weight"):
        _trainer(other).fit(_data(), resume=tmp_path / "c.pt")
    renamed = nn.Sequential()
    renamed.add_module("inp", nn.Flatten())
    renamed.add_module("lin", nn.Linear(15, 8))
    with pytest.raises(ValueError, match=r"missing keys: lin.weight.*unexpected keys: 1.weight"):
        _trainer(renamed).fit(_data(), resume=tmp_path / "c.pt")
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    with pytest.raises(ValueError, match="has no LR scheduler state but this Trainer has one"):
        rnnkit.Trainer(model, opt, "mse", scheduler=sched).fit(_data(), resume=tmp_path / "c.pt")


# ---- best model ---------------------------------------------------------------------------


def test_best_checkpoint_never_takes_nan(tmp_path):
    calls = {"n": 0}

    def score(output, target):  # NaN in epoch 0 (train and val), then finite
        calls["n"] += 1
        return torch.tensor(float("nan")) if calls["n"] <= 2 else (output - target).abs().mean()

    x, y = _data()
    trainer = _trainer(
        metrics={"score": score}, checkpoint=rnnkit.ModelCheckpoint(tmp_path, monitor="val_score")
    )
    trainer.fit((x[:16], y[:16]), val=(x[16:], y[16:]), epochs=1, batch_size=16)
    first = trainer.history["val_score"][0]
    assert first != first  # NaN
    assert not (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    trainer.fit((x[:16], y[:16]), val=(x[16:], y[16:]), epochs=1, batch_size=16)
    best = rnnkit.load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 2 and trainer.callbacks[-1].best == trainer.history["val_score"][1]


# ---- safetensors --------------------------------------------------------------------------


def test_safetensors_round_trip_and_errors(tmp_path):
    from safetensors.torch import load_file

    model = rnnkit.SequenceModel(3, 6, 2, cell="lstm", num_layers=2)
    path = rnnkit.export_safetensors(model, tmp_path / "w.safetensors", {"note": "test"})
    assert set(load_file(path)) == set(model.state_dict())
    fresh = rnnkit.SequenceModel(3, 6, 2, cell="lstm", num_layers=2)
    rnnkit.import_safetensors(fresh, path)
    for (ka, a), (kb, b) in zip(
        fresh.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(a, b)
    # weights move to torch.nn too
    reference = nn.LSTM(3, 6, num_layers=2, batch_first=True)
    reference.load_state_dict(
        {k[4:]: v for k, v in load_file(path).items() if k.startswith("rnn.")}
    )
    with pytest.raises(ValueError, match="do not fit this SequenceModel"):
        rnnkit.import_safetensors(rnnkit.SequenceModel(3, 7, 2), path)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        rnnkit.import_safetensors(fresh, tmp_path / "bad.safetensors")


def test_safetensors_with_tied_weights(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight

    model = Tied()
    path = rnnkit.export_safetensors(model, tmp_path / "t.safetensors")
    fresh = Tied()
    rnnkit.import_safetensors(fresh, path)
    assert torch.equal(fresh.a.weight, model.a.weight) and fresh.a.weight is fresh.b.weight


def test_model_checkpoint_every_steps(tmp_path):
    seen = []

    class Watch(rnnkit.Callback):
        def on_batch_end(self, trainer, logs):
            if (tmp_path / "last.pt").exists():
                seen.append(rnnkit.load_checkpoint(tmp_path / "last.pt")["step"])

    trainer = _trainer(
        callbacks=[Watch()],
        checkpoint=rnnkit.ModelCheckpoint(tmp_path, every_steps=2, save_best=False),
    )
    trainer.fit(_data(), epochs=1, batch_size=4)
    assert seen == [2, 2, 4, 4]
    assert rnnkit.load_checkpoint(tmp_path / "last.pt")["step"] == 5  # and after the epoch
    with pytest.raises(ValueError, match="every_steps must be"):
        rnnkit.ModelCheckpoint(tmp_path, every_steps=0)
