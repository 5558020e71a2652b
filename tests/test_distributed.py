"""Two processes under torchrun (gloo, CPU, 127.0.0.1) against one process with the same global
batch. Tolerance: 1e-6 absolute on parameters and losses (float32; only the order of the
gradient sums differs: DDP averages two per-rank means of 4 samples, one process takes the mean
of 8)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rnnkit

ROOT = Path(__file__).resolve().parent.parent

JOB = """
import os, sys, torch, rnnkit
from torch import nn

out = sys.argv[1]
rnnkit.seed_everything(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(15, 8), nn.Tanh(), nn.Linear(8, 1))
g = torch.Generator().manual_seed(1)
x, y = torch.randn(32, 5, 3, generator=g), torch.randn(32, 1, generator=g)
trainer = rnnkit.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "mse",
                         metrics=["mae"], checkpoint=f"{out}/ck")
# per-rank batch 4 on 2 ranks: global batch 8
trainer.fit((x[:24], y[:24]), val=(x[24:], y[24:]), epochs=2, batch_size=4, shuffle=False)
assert trainer.is_main_process == (os.environ["RANK"] == "0")
torch.save({"params": [p.detach() for p in model.parameters()],
            "history": trainer.history.to_dict(), "world": trainer._env.world_size},
           f"{out}/rank{os.environ['RANK']}.pt")
rnnkit.distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process():
    rnnkit.seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(15, 8), nn.Tanh(), nn.Linear(8, 1))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 5, 3, generator=g), torch.randn(32, 1, generator=g)
    trainer = rnnkit.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), "mse", metrics=["mae"]
    )
    trainer.fit((x[:24], y[:24]), val=(x[24:], y[24:]), epochs=2, batch_size=8, shuffle=False)
    return model, trainer.history


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(script),
        str(tmp_path),
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    for a, b in zip(ranks[0]["params"], ranks[1]["params"], strict=True):
        assert torch.equal(a, b)  # DDP keeps the replicas identical
    timeless = [
        [{k: v for k, v in e.items() if k != "time"} for e in r["history"]["epochs"]] for r in ranks
    ]
    assert timeless[0] == timeless[1]  # epoch losses and metrics are over all ranks
    model, history = _single_process()
    for a, b in zip(ranks[0]["params"], model.parameters(), strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6)
    dist_history = rnnkit.History.from_dict(ranks[0]["history"])
    assert len(dist_history.steps) == len(history.steps) == 6
    for key in ("loss", "val_loss", "mae", "val_mae"):
        assert dist_history[key] == pytest.approx(history[key], abs=1e-6), key
    # per-step logs are each rank's own: equal halves of the global batch average to its loss
    per_rank = [rnnkit.History.from_dict(r["history"]).step_values("loss") for r in ranks]
    averaged = [(a + b) / 2 for a, b in zip(*per_rank, strict=True)]
    assert averaged == pytest.approx(history.step_values("loss"), abs=1e-6)
    checkpoint = rnnkit.load_checkpoint(tmp_path / "ck" / "last.pt")
    assert checkpoint["config"]["world_size"] == 2 and checkpoint["step"] == 6
    assert not any(k.startswith("module.") for k in checkpoint["model"])  # unwrapped weights


def test_distributed_setup_off_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rnnkit.distributed.setup("auto") is None
    assert rnnkit.distributed.setup(False) is None
    with pytest.raises(ValueError, match="torchrun"):
        rnnkit.distributed.setup(True)
    with pytest.raises(ValueError, match="distributed must be"):
        rnnkit.distributed.setup("yes")


def test_distribute_loader_refuses_a_custom_sampler():
    from torch.utils.data import DataLoader, Sampler

    class Custom(Sampler):
        def __iter__(self):
            return iter(range(4))

        def __len__(self):
            return 4

    loader = DataLoader(list(range(4)), sampler=Custom())
    env = rnnkit.distributed.DistEnv(2, 0, 0)
    with pytest.raises(ValueError, match="needs a distributed sampler"):
        rnnkit.distributed.distribute_loader(loader, env)
    plain = rnnkit.distributed.distribute_loader(DataLoader(list(range(8)), batch_size=2), env)
    assert [b.tolist() for b in plain] == [[0, 2], [4, 6]]


UNEVEN_JOB = """
import os, sys, torch, rnnkit
from torch import nn

out = sys.argv[1]
g = torch.Generator().manual_seed(1)
x, y = torch.randn(34, 5, 3, generator=g), torch.randn(34, 1, generator=g)
rnnkit.seed_everything(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(15, 8), nn.Tanh(), nn.Linear(8, 1))
trainer = rnnkit.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "mse",
                         metrics=["mae"])
# 25 training samples on 2 ranks, the odd one left out; 9 validation samples, none repeated
trainer.fit((x[:25], y[:25]), val=(x[25:], y[25:]), epochs=2, batch_size=4, shuffle=False,
            drop_last=True)
evaluated = trainer.evaluate((x[25:], y[25:]))
torch.save({"params": [p.detach() for p in model.parameters()],
            "history": trainer.history.to_dict(), "evaluated": evaluated},
           f"{out}/uneven{os.environ['RANK']}.pt")
rnnkit.distributed.shutdown()
"""


@pytest.mark.slow
def test_uneven_data_under_ddp_counts_each_validation_sample_once(tmp_path):
    script = tmp_path / "uneven.py"
    script.write_text(UNEVEN_JOB)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(script),
        str(tmp_path),
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"uneven{r}.pt", weights_only=True) for r in (0, 1)]
    # one process, global batch 8, on the 24 samples the two ranks trained on
    rnnkit.seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(15, 8), nn.Tanh(), nn.Linear(8, 1))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(34, 5, 3, generator=g), torch.randn(34, 1, generator=g)
    single = rnnkit.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), "mse", metrics=["mae"]
    )
    single.fit((x[:24], y[:24]), val=(x[25:], y[25:]), epochs=2, batch_size=8, shuffle=False)
    for a, b in zip(ranks[0]["params"], model.parameters(), strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6)
    for rank in ranks:
        history = rnnkit.History.from_dict(rank["history"])
        assert history["val_loss"] == pytest.approx(single.history["val_loss"], abs=1e-6)
        assert history["val_mae"] == pytest.approx(single.history["val_mae"], abs=1e-6)
        assert history["loss"] == pytest.approx(single.history["loss"], abs=1e-6)
        assert rank["evaluated"]["loss"] == pytest.approx(single.history["val_loss"][-1], abs=1e-6)
