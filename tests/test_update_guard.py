"""The non-finite guard keeps the parameters finite: a step whose loss, gradients or updated
parameters are NaN/inf is undone bit-exactly (parameters and optimizer state), the schedule
does not advance for it, and no checkpoint takes non-finite weights."""

import copy

import pytest
import torch
from torch import nn

import rnnkit


def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, 3, generator=g), torch.randn(n, 1, generator=g)


def _states(trainer):
    return copy.deepcopy(
        {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()}
    )


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_the_issues_overflowing_update_leaves_every_parameter_as_it_was(tmp_path):
    torch.manual_seed(0)
    model = rnnkit.SequenceModel(3, 8, 1)
    before = copy.deepcopy(model.state_dict())
    x, y = _data()
    history = rnnkit.fit(
        model,
        x,
        y * 1e10,
        optimizer="sgd",
        lr=1e30,
        batch_size=4,
        nonfinite="skip",
        progress=False,
        checkpoint=tmp_path,
    )
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert _equal(model.state_dict(), before)  # every update overflowed and was undone
    assert all(s.get("skipped") for s in history.steps)
    assert history.epochs[0]["skipped"] == 4
    saved = rnnkit.load_checkpoint(tmp_path / "last.pt")
    assert _equal(saved["model"], before)


def _nan_at(batch, n=16):
    """Data whose batch ``batch`` (of 4, in order) makes a NaN loss and NaN gradients."""
    x, y = _data(n)
    x[4 * batch] = float("nan")
    return x, y


class _StatesAround(rnnkit.Callback):
    """The model and optimizer states before step ``step`` and after it."""

    def __init__(self, step):
        self.step, self.before, self.after = step, None, None

    def on_batch_begin(self, trainer, batch_index):
        if trainer.step == self.step:
            self.before = _states(trainer)

    def on_batch_end(self, trainer, logs):
        if logs["step"] == self.step:
            self.after = _states(trainer)


@pytest.mark.parametrize("defer", [False, True])
def test_adam_state_and_parameters_restored_bit_exactly(defer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(15, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    around = _StatesAround(2)
    trainer = rnnkit.Trainer(model, opt, "mse", nonfinite="skip", callbacks=[around])
    trainer._reads_override = defer  # the GPU path (device-side restore), on the CPU
    trainer.fit(_nan_at(2), batch_size=4, shuffle=False)
    assert [bool(s.get("skipped")) for s in trainer.history.steps] == [0, 0, 1, 0]
    assert around.before is not None and _equal(around.after, around.before)
    assert trainer.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_error_inside_the_optimizer_step_leaves_the_parameters_as_they_were():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e38)  # torch cannot even form the step size
    trainer = rnnkit.Trainer(model, opt, "mse")
    around = _StatesAround(0)
    trainer.callbacks.append(around)
    with pytest.raises(RuntimeError, match="overflow"):
        trainer.fit((torch.randn(4, 3), torch.randn(4, 1)), batch_size=4)
    assert _equal(_states(trainer), around.before)


def test_a_nonfinite_first_step_leaves_no_optimizer_state():
    model = nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    trainer = rnnkit.Trainer(model, opt, "mse", nonfinite="skip")
    x = torch.ones(4, 3)
    x[0] = float("inf")
    trainer.fit((x, torch.ones(4, 1)), batch_size=4, max_steps=1)
    assert trainer.history.steps[0].get("skipped")
    assert len(opt.state) == 0  # as before the step: Adam had not started


def test_deferred_reads_give_the_same_run_as_prompt_reads():
    def run(defer):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(15, 8), nn.Dropout(0.2), nn.Linear(8, 1))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=8)
        trainer = rnnkit.Trainer(model, opt, "mse", scheduler=sched, nonfinite="skip")
        trainer._reads_override = defer
        history = trainer.fit(_nan_at(3), epochs=2, batch_size=4)
        return [p.detach().clone() for p in model.parameters()], history, trainer

    a, ha, ta = run(False)
    b, hb, tb = run(True)
    assert not ta.defer_reads and tb.defer_reads
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    strip = lambda h: [repr({k: v for k, v in s.items() if k != "time"}) for s in h.steps]
    assert strip(ha) == strip(hb)
    assert [e["loss"] for e in ha.epochs] == [e["loss"] for e in hb.epochs]


def test_a_skipped_step_does_not_advance_the_schedule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(15, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trainer = rnnkit.Trainer(model, opt, "mse", scheduler=sched, nonfinite="skip")
    trainer.fit(_nan_at(1), batch_size=4, shuffle=False)
    assert sched.last_epoch == 3  # four steps, one skipped
    lrs = trainer.history.step_values("lr")
    assert lrs == pytest.approx([0.01, 0.005, 0.005, 0.0025])  # step 2: the lr step 1 had


def test_stop_policy_names_an_update_that_overflowed():
    model = nn.Linear(3, 1)
    before = copy.deepcopy(model.state_dict())
    trainer = rnnkit.Trainer(model, torch.optim.SGD(model.parameters(), lr=1e38), "mse")
    with pytest.raises(rnnkit.NonFiniteError, match=r"update made (weight|bias) non-finite"):
        trainer.fit((torch.ones(4, 3) * 1e3, torch.ones(4, 1)), batch_size=4)
    assert _equal(model.state_dict(), before)


def test_parameters_outside_the_model_are_clipped_and_guarded():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    extra = nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([*model.parameters(), extra], lr=0.1)

    def loss(output, target):
        return ((output - target) ** 2).mean() * extra.square().sum() * 1e3

    trainer = rnnkit.Trainer(model, opt, loss, grad_clip=1e-3)
    trainer.fit((torch.randn(8, 3), torch.randn(8, 1)), batch_size=8, max_steps=1)
    grads = [*(p.grad for p in model.parameters()), extra.grad]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    assert float(norm) == pytest.approx(1e-3, rel=1e-4)  # the extra parameter is clipped too
    assert trainer.history.steps[0]["grad_norm"] > 1e-3


def test_an_optimizer_without_the_models_parameters_is_refused():
    model, other = nn.Linear(3, 1), nn.Linear(3, 1)
    with pytest.raises(ValueError, match="holds none of the Linear's parameters"):
        rnnkit.Trainer(model, torch.optim.SGD(other.parameters(), lr=0.1), "mse")
