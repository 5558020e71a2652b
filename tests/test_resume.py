"""Exact resume in every case the reliability review found broken, and clear refusals where a
checkpoint cannot be continued."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import rnnkit

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, 3, generator=g), torch.randn(n, 1, generator=g)


def _model(dropout=0.2):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(15, 8), nn.Dropout(dropout), nn.Tanh(), nn.Linear(8, 1)
    )


def _trainer(model=None, optimizer=torch.optim.Adam, **kw):
    model = model or _model()
    return rnnkit.Trainer(model, optimizer(model.parameters(), lr=0.01), "mse", **kw)


class StopAt(rnnkit.Callback):
    def __init__(self, step):
        self.step = step

    def on_batch_end(self, trainer, logs):
        if trainer.step == self.step:
            trainer.stop()


def _same_run(a, b):
    assert a.history.step_values("loss") == b.history.step_values("loss")
    assert [e["loss"] for e in a.history.epochs] == [e["loss"] for e in b.history.epochs]
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


# ---- exact resume -------------------------------------------------------------------------

BUCKETED_JOB = """
import functools, sys, torch, rnnkit
from torch import nn
from torch.utils.data import DataLoader

def to_batch(raw):
    return rnnkit.Batch(raw["x"].data, raw["y"], raw["x"].lengths)

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = rnnkit.GRU(3, 6, batch_first=True)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(6, 1)
    def forward(self, x, lengths):
        out, _ = self.rnn(self.drop(x), lengths=lengths)
        return self.head(rnnkit.last_valid(out, lengths, batch_first=True))

class StopAt(rnnkit.Callback):
    def __init__(self, step):
        self.step = step
    def on_batch_end(self, trainer, logs):
        if trainer.step == self.step:
            trainer.stop()

def run(workers, stop=None, resume=None, folder=None):
    rnnkit.seed_everything(0)
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(2, 9, (40,), generator=g)
    samples = [{"x": torch.randn(int(n), 3, generator=g), "y": torch.randn(1, generator=g)}
               for n in lengths]
    sampler = rnnkit.BucketBatchSampler(lengths, batch_size=4, shuffle=True, seed=5)
    collate = functools.partial(rnnkit.collate_padded, sequence_fields=["x"])
    loader = DataLoader(samples, batch_sampler=sampler, num_workers=workers, collate_fn=collate)
    model = Model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=30)
    trainer = rnnkit.Trainer(model, opt, "mse", scheduler=sched, grad_clip=0.5,
                             checkpoint=folder, batch_fn=to_batch)
    if stop is not None:
        trainer.callbacks.append(StopAt(stop))
    trainer.fit(loader, epochs=3, resume=resume)
    return trainer

mode, folder, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "full":
    trainer = run(workers)
elif mode == "cut":
    trainer = run(workers, stop=13, folder=folder)
else:
    trainer = run(workers, resume=f"{folder}/interrupted.pt")
torch.save({"losses": trainer.history.step_values("loss"),
            "params": [p.detach() for p in trainer.model.parameters()]},
           f"{folder}/{mode}.pt")
"""


def _python(code, *args):
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_fresh_process_resume_with_a_bucket_sampler_dropout_schedule_and_clipping(
    tmp_path, workers
):
    for mode in ("full", "cut", "resumed"):
        _python(BUCKETED_JOB, mode, tmp_path, workers)
    full, resumed = (
        torch.load(tmp_path / f"{m}.pt", weights_only=True) for m in ("full", "resumed")
    )
    cut = torch.load(tmp_path / "cut.pt", weights_only=True)
    assert len(cut["losses"]) == 13 and len(full["losses"]) == 30
    assert resumed["losses"] == full["losses"]
    for a, b in zip(resumed["params"], full["params"], strict=True):
        assert torch.equal(a, b)


class InterruptInForward(nn.Module):
    """Raises KeyboardInterrupt in its ``calls``-th forward, after its dropout has drawn."""

    def __init__(self, calls):
        super().__init__()
        self.net, self.calls, self.count = _model(0.3), calls, 0

    def forward(self, x):
        h = self.net[2](self.net[1](self.net[0](x)))  # flatten, linear, dropout: draws
        self.count += 1
        if self.count == self.calls:
            raise KeyboardInterrupt
        return self.net[4](self.net[3](h))


def test_interrupted_checkpoint_from_inside_a_step_resumes_exactly(tmp_path):
    def run(model, resume=None, folder=None):
        trainer = _trainer(model, checkpoint=folder)
        trainer.fit(_data(), epochs=2, batch_size=4, resume=resume)
        return trainer

    torch.manual_seed(0)
    full = run(InterruptInForward(calls=0))
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        run(InterruptInForward(calls=5), folder=tmp_path)  # inside step 4
    saved = rnnkit.load_checkpoint(tmp_path / "interrupted.pt")
    assert saved["step"] == 4
    torch.manual_seed(0)
    resumed = run(InterruptInForward(calls=0), resume=tmp_path / "interrupted.pt")
    _same_run(resumed, full)


def test_fit_takes_resume_and_verbose(tmp_path, capsys):
    torch.manual_seed(0)
    model = _model()
    x, y = _data()
    rnnkit.fit(model, x, y, epochs=1, batch_size=4, verbose=0, checkpoint=tmp_path)
    assert capsys.readouterr().err == ""
    history = rnnkit.fit(
        model, x, y, epochs=2, batch_size=4, verbose=2, resume=tmp_path / "last.pt"
    )
    assert len(history.epochs) == 2
    assert "epoch 2/2 - loss" in capsys.readouterr().out
    with pytest.raises(
        TypeError,
        match=r"rnnkit.fit got unexpected keyword argument\(s\) 'epoch'"
        r".*it takes model, x, y, epochs",
    ):
        rnnkit.fit(model, x, y, epoch=3)


# ---- refusals -------------------------------------------------------------------------------


def _stopped_midway(tmp_path, **kw):
    torch.manual_seed(0)
    trainer = _trainer(checkpoint=tmp_path, **kw)
    trainer.callbacks.append(StopAt(3))
    trainer.fit(_data(), epochs=2, batch_size=4)
    return tmp_path / "interrupted.pt"


def test_a_mid_epoch_checkpoint_of_another_epoch_cut_is_refused(tmp_path):
    path = _stopped_midway(tmp_path)
    with pytest.raises(ValueError, match=r"cut differently \(batch_size 4 then, 8 now"):
        _trainer().fit(_data(), epochs=2, batch_size=8, resume=path)
    with pytest.raises(ValueError, match="samples 24 then, 20 now"):
        _trainer().fit(_data(20), epochs=2, batch_size=4, resume=path)
    state = rnnkit.load_checkpoint(path)
    state["data"]["world_size"] = 2
    with pytest.raises(ValueError, match="world_size 2 then, 1 now"):
        _trainer().fit(_data(), epochs=2, batch_size=4, resume=state)


def test_another_optimizer_and_a_weights_only_file_are_refused_clearly(tmp_path):
    path = _stopped_midway(tmp_path, optimizer=torch.optim.SGD)
    with pytest.raises(ValueError, match="state of a SGD optimizer, this Trainer has a Adam"):
        _trainer().fit(_data(), epochs=2, batch_size=4, resume=path)
    rnnkit.save_checkpoint(tmp_path / "weights.pt", {"model": _model().state_dict()})
    with pytest.raises(ValueError, match="holds no training state.*lacks optimizer"):
        _trainer().fit(_data(), resume=tmp_path / "weights.pt")


def test_a_flipped_byte_inside_a_tensor_is_detected(tmp_path):
    model = nn.Linear(64, 1)
    with torch.no_grad():
        model.weight.fill_(0.123456)
    path = rnnkit.save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict()})
    raw = bytearray(path.read_bytes())
    needle = model.weight.detach().numpy().tobytes()[:16]
    at = raw.find(needle)
    assert at > 0
    raw[at + 5] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"c.pt is damaged: its content does not match"):
        rnnkit.load_checkpoint(path)


def test_a_truncated_checkpoint_says_so(tmp_path):
    path = rnnkit.save_checkpoint(tmp_path / "c.pt", {"model": nn.Linear(64, 4).state_dict()})
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match="truncated or damaged"):
        rnnkit.load_checkpoint(path)


def test_an_old_checkpoint_without_a_checksum_loads_with_a_warning(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": "rnnkit-checkpoint", "format_version": 1, "w": torch.ones(2)}, path)
    with pytest.warns(UserWarning, match="without a checksum.*cannot be verified"):
        state = rnnkit.load_checkpoint(path)
    assert torch.equal(state["w"], torch.ones(2))


def test_nonfinite_parameters_are_never_saved(tmp_path):
    model = nn.Linear(3, 1)
    good = rnnkit.save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict()})
    before = good.read_bytes()
    with torch.no_grad():
        model.bias.fill_(float("nan"))
    with pytest.raises(rnnkit.checkpoint.NonFiniteCheckpointError, match="parameter bias"):
        rnnkit.save_checkpoint(good, {"model": model.state_dict()})
    assert good.read_bytes() == before
    with pytest.raises(rnnkit.checkpoint.NonFiniteCheckpointError):
        rnnkit.export_safetensors(model, tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_buffer_may_hold_inf_in_a_trainers_checkpoint(tmp_path):
    model = _model()
    model.register_buffer("mask", torch.tensor([0.0, float("-inf")]))
    trainer = _trainer(model)
    trainer.fit(_data(), batch_size=8)
    trainer.save_checkpoint(tmp_path / "c.pt")
    assert rnnkit.load_checkpoint(tmp_path / "c.pt")["model"]["mask"][1] == float("-inf")
    with pytest.raises(rnnkit.checkpoint.NonFiniteCheckpointError):  # plain dict: all checked
        rnnkit.save_checkpoint(tmp_path / "d.pt", {"model": model.state_dict()})
    rnnkit.save_checkpoint(
        tmp_path / "d.pt", {"model": model.state_dict()}, allow_nonfinite=["mask"]
    )


def test_temporary_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    import socket

    host = socket.gethostname()
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(child.stdout)
    stale = tmp_path / f".ck.pt.{host}.{dead}.abc.tmp"
    live = tmp_path / f".ck.pt.{host}.{os.getppid()}.def.tmp"
    other = tmp_path / f".other.pt.{host}.{dead}.ghi.tmp"
    for f in (stale, live, other):
        f.write_bytes(b"x" * 100)
    rnnkit.save_checkpoint(tmp_path / "ck.pt", {"w": torch.ones(1)})
    assert not stale.exists() and live.exists() and other.exists()


def test_saving_after_an_interrupt_inside_a_step_without_a_checkpoint_callback_warns(tmp_path):
    torch.manual_seed(0)
    trainer = _trainer(InterruptInForward(calls=3))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(_data(), batch_size=4)
    with pytest.warns(UserWarning, match="after an interrupt inside a step"):
        trainer.save_checkpoint(tmp_path / "late.pt")
