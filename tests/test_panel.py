"""TrainingPanel and its chart, driven through their Python objects (no browser)."""

import ctypes
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from IPython.testing import globalipapp
from IPython.utils.capture import capture_output

import rnnkit
from rnnkit.widgets import TrainingPanel
from rnnkit.widgets.chart import TrainingChart

PNG = b"\x89PNG"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class RecordingSGD(torch.optim.SGD):
    """SGD that records, at every update, the learning rate and the gradient norm it applies."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.seen: list[tuple[float, float]] = []

    def step(self, closure=None):
        grads = [
            p.grad for group in self.param_groups for p in group["params"] if p.grad is not None
        ]
        norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        self.seen.append((self.param_groups[0]["lr"], norm))
        return super().step(closure)


def small_run(loss="mse", **trainer_kwargs):
    rnnkit.seed_everything(0)
    x, y = rnnkit.tasks.adding_problem(64, 12)
    model = rnnkit.SequenceModel(2, 8, 1, cell="gru")
    optimizer = RecordingSGD(model.parameters(), lr=0.1)
    trainer = rnnkit.Trainer(model, optimizer, loss, **trainer_kwargs)
    return trainer, optimizer, (x, y)


@pytest.mark.slow
def test_background_run_pause_sliders_resume_stop():
    trainer, optimizer, data = small_run()
    panel = TrainingPanel(
        trainer, data, data, epochs=100000, batch_size=8, tick=0.02, clip_range=(1e-3, 10.0)
    )
    assert panel.lr_slider.value == pytest.approx(0.1)
    assert not panel.clip_checkbox.value and panel.clip_slider.disabled

    panel.start_button.click()
    wait_for(lambda: len(optimizer.seen) >= 3, "three steps")
    assert panel.running and trainer.status == "running"
    wait_for(lambda: panel.start_button.disabled, "Start disabled while running")

    panel.pause_button.click()
    wait_for(lambda: trainer.status == "paused", "the pause")
    wait_for(lambda: panel.pause_button.description == "Resume", "the Resume label")
    wait_for(lambda: "paused" in panel.status_label.value, "the paused status")
    before = len(optimizer.seen)
    panel.lr_slider.value = 0.005
    panel.clip_checkbox.value = True
    panel.clip_slider.value = 0.01
    assert trainer.grad_clip == pytest.approx(0.01)
    time.sleep(0.3)
    assert len(optimizer.seen) == before, "a paused run made a step"

    panel.pause_button.click()
    wait_for(lambda: len(optimizer.seen) >= before + 3, "steps after Resume")
    assert all(lr == pytest.approx(0.1) for lr, _ in optimizer.seen[:before])
    after = optimizer.seen[before : before + 3]
    assert all(lr == pytest.approx(0.005) for lr, _ in after), after
    assert all(norm <= 0.01 * (1 + 1e-4) for _, norm in after), after
    assert any(norm > 0.01 for _, norm in optimizer.seen[:before]), "clipping was already active"
    assert {"event": "set_lr", "step": before, "lr": 0.005} in trainer.history.events

    panel.clip_checkbox.value = False
    assert trainer.grad_clip is None and panel.clip_slider.disabled

    panel.stop_button.click()
    assert panel.wait(timeout=120)
    assert trainer.status == "stopped"
    assert "stopped" in panel.status_label.value
    assert panel.summary.startswith("rnnkit training run: stopped")
    assert "lr set during training: 0.005" in panel.summary
    assert panel.chart_png.startswith(PNG)
    assert panel.progress.value == trainer.step
    assert not panel.start_button.disabled and panel.pause_button.disabled
    assert panel.pause_button.description == "Pause"


def test_start_again_continues_for_more_epochs():
    trainer, optimizer, data = small_run()
    panel = TrainingPanel(trainer, data, epochs=2, batch_size=16)
    history = panel.fit(block=True)
    assert trainer.status == "finished" and len(history.epochs) == 2
    assert panel.progress.max == 8 and panel.progress.value == 8
    panel.epochs_box.value = 1
    panel.start()
    assert panel.wait(timeout=120)
    assert trainer.status == "finished" and len(history.epochs) == 3 and trainer.step == 12
    assert panel.summary.startswith("rnnkit training run: finished at epoch 3/3, 4 steps")


def test_failed_background_run_shows_the_error():
    calls = []

    def failing_loss(output, target):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the loss broke")
        return torch.nn.functional.mse_loss(output, target)

    trainer, _, data = small_run(loss=failing_loss)
    panel = TrainingPanel(trainer, data, epochs=5, batch_size=8)
    panel.start()
    assert panel.wait(timeout=120)
    assert trainer.status == "failed"
    assert "failed" in panel.status_label.value
    assert "RuntimeError: the loss broke" in panel.status_label.value
    assert "error: RuntimeError: the loss broke" in panel.summary


def test_blocking_fit_raises_after_showing_the_failure():
    trainer, _, data = small_run()
    bad = (data[0], data[1].long())  # mse needs float targets
    panel = TrainingPanel(trainer, bad, epochs=1)
    with pytest.raises(ValueError, match="float"):
        panel.fit(block=True)
    assert "failed" in panel.status_label.value and "ValueError" in panel.summary


def test_display_leaves_a_static_chart_and_summary():
    globalipapp.get_ipython()  # an IPython shell, so that fit() displays the panel
    trainer, _, data = small_run()
    panel = TrainingPanel(trainer, data, data, epochs=2, batch_size=16)
    with capture_output() as captured:
        panel.fit(block=True)
    shown = [o for o in captured.outputs if not o.update]
    updates = [o for o in captured.outputs if o.update]
    assert "application/vnd.jupyter.widget-view+json" in shown[0].data
    assert shown[1].data["text/plain"].startswith("idle")
    ids = {o.transient["display_id"] for o in shown[1:]}
    assert {o.transient["display_id"] for o in updates} == ids
    summary, chart = updates[:2]  # run begins: the status below the panel, no chart
    assert summary.data["text/plain"].startswith("running at step")
    assert chart.data["text/plain"] == ""
    summary, chart = updates[-2:]  # run ends
    assert "finished at epoch 2/2" in summary.data["text/plain"]
    assert "val_loss" in summary.data["text/plain"]
    assert chart.data["image/png"] and panel.chart_png.startswith(PNG)
    assert panel.chart_image.layout.display == "none"  # the static chart replaces the live one
    # the final chart is shown at the live chart's size
    width, height = chart.metadata["image/png"]["width"], chart.metadata["image/png"]["height"]
    assert (f"{width}px", f"{height}px") == (
        panel.chart_image.layout.width,
        panel.chart_image.layout.height,
    )
    assert panel.chart_png[16:24] == width.to_bytes(4, "big") + height.to_bytes(4, "big")


def test_the_panel_reads_well_without_a_kernel():
    trainer, _, data = small_run(grad_clip=0.5)
    panel = TrainingPanel(trainer, data, epochs=3)
    bundle = panel._repr_mimebundle_()
    model_id = bundle["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert model_id == panel.widget.model_id  # the live view where a kernel draws it
    text = bundle["text/plain"]
    assert text.startswith("TrainingPanel: SequenceModel (")
    assert "RecordingSGD at lr 0.1, loss mse, grad clip 0.5, 3 epoch(s) per run" in text
    assert "live controls in JupyterLab with a running kernel" in text
    assert "VBox(" not in text and "<b>TrainingPanel: SequenceModel" in bundle["text/html"]
    assert "image/png" not in bundle and "<img" not in bundle["text/html"]  # no second chart


def test_the_summary_below_says_paused_while_paused():
    globalipapp.get_ipython()
    trainer, _, data = small_run()
    panel = TrainingPanel(trainer, data, epochs=100000, batch_size=8, tick=0.02)
    with capture_output() as captured:
        panel._ipython_display_()
        panel.start()
        wait_for(lambda: trainer.step > 2, "steps")
        panel.pause()
        wait_for(
            lambda: any(
                o.update and o.data["text/plain"].startswith("paused at step")
                for o in list(captured.outputs)
            ),
            "'paused' below the panel",
        )
        panel.resume()
        wait_for(lambda: captured.outputs[-2].data["text/plain"].startswith("running"), "resumed")
        panel.stop()
        assert panel.wait(timeout=120)
    assert "stopped at epoch" in captured.outputs[-2].data["text/plain"]


def test_sliders_span_three_decades_around_the_current_values():
    trainer, _, data = small_run(grad_clip=2.0)
    panel = TrainingPanel(trainer, data)
    for slider, value in ((panel.lr_slider, 0.1), (panel.clip_slider, 2.0)):
        assert slider.value == pytest.approx(value)
        assert slider.max - slider.min == pytest.approx(3.0)  # log10 units
        assert 10**slider.min == pytest.approx(value / 10**1.5)
        assert slider.step == 0.01 and slider.layout.width == "380px"
    assert panel.clip_checkbox.layout.width == "auto"  # no 300 px gap before its slider
    wide = TrainingPanel(trainer, data, lr_range=(1e-5, 1.0))
    assert (wide.lr_slider.min, wide.lr_slider.max) == (-5, 0)


def test_the_background_thread_keeps_the_callers_thread_count():
    """OpenMP keeps its thread count per thread: the training thread must take the caller's
    torch.set_num_threads, or oneDNN's kernels run on every core (measured 2.9x slower)."""
    libgomp = list((Path(torch.__file__).parent / "lib").glob("libgomp*"))
    if not libgomp or (os.cpu_count() or 1) < 2:
        pytest.skip("needs torch's libgomp and two cores to tell one thread from several")
    omp = ctypes.CDLL(str(libgomp[0]))
    seen = []

    class Record(rnnkit.Callback):
        def on_fit_begin(self, trainer):
            seen.append(omp.omp_get_max_threads())  # this thread's OpenMP count, as oneDNN sees

    trainer, _, data = small_run(callbacks=[Record()])
    panel = TrainingPanel(trainer, data, epochs=1, batch_size=32)
    assert torch.get_num_threads() == 1  # the one_thread fixture
    panel.start()
    assert panel.wait(timeout=120)
    assert seen == [1]


def test_from_model_and_bad_arguments():
    model = rnnkit.SequenceModel(2, 4, 1)
    data = rnnkit.tasks.adding_problem(16, 5)
    panel = TrainingPanel.from_model(model, data, optimizer="sgd", lr=0.05, grad_clip=2.0)
    assert isinstance(panel.trainer.optimizer, torch.optim.SGD)
    assert panel.lr_slider.value == pytest.approx(0.05)
    assert panel.clip_checkbox.value and panel.clip_slider.value == pytest.approx(2.0)
    assert repr(panel) == "TrainingPanel(idle, step 0)"
    with pytest.raises(TypeError, match="rnnkit.Trainer"):
        TrainingPanel(model, data)
    with pytest.raises(ValueError, match="epochs must be an int >= 1, got 0"):
        TrainingPanel(panel.trainer, data, epochs=0)
    with pytest.raises(ValueError, match="render_budget"):
        TrainingPanel(panel.trainer, data, render_budget=0)
    with pytest.raises(ValueError, match="tick"):
        TrainingPanel(panel.trainer, data, tick=0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainingPanel.from_model(model, data, optimizer="nope")


def test_blocking_fit_while_running_is_refused():
    trainer, _, data = small_run()
    panel = TrainingPanel(trainer, data, epochs=100000, batch_size=8)
    panel.start()
    try:
        wait_for(lambda: trainer.step > 0, "a step")
        with pytest.raises(RuntimeError, match="already running"):
            panel.fit(block=True)
    finally:
        panel.stop()
        assert panel.wait(timeout=120)


def test_chart_reads_incrementally_and_places_validation_at_epoch_ends():
    history = rnnkit.History()
    chart = TrainingChart()
    assert not chart.read(history)
    for step in range(6):
        history.steps.append(
            {
                "step": step,
                "epoch": step // 3,
                "loss": 1.0 / (step + 1),
                "grad_norm": 2.0,
                "lr": 0.1,
            }
        )
        if step % 3 == 2:
            history.epochs.append({"epoch": step // 3, "loss": 0.5, "val_loss": 0.4 - step / 100})
    assert chart.read(history)
    assert chart.steps == [1, 2, 3, 4, 5, 6]
    assert chart.val_steps == [3, 6] and chart.val_loss == pytest.approx([0.38, 0.35])
    history.steps.append({"step": 6, "epoch": 2, "loss": float("nan"), "grad_norm": 1.0, "lr": 0.1})
    assert chart.read(history) and chart.steps[-1] == 7 and chart.loss[-1] != chart.loss[-1]
    assert not chart.read(history)
    assert chart.render(max_points=3).startswith(PNG)
    assert len(chart.loss_line.get_xdata()) == 3


def _held_at_start(panel: TrainingPanel) -> threading.Event:
    """Hold a panel's background run before ``trainer.fit`` begins until the event is set, so
    that a request made meanwhile surely comes before the trainer clears its flags."""
    gate = threading.Event()
    fit = panel._fit

    def held_fit():
        assert gate.wait(timeout=120)
        fit()

    panel._fit = held_fit
    return gate


def test_stop_right_after_start_is_not_lost():
    trainer, _, data = small_run()
    panel = TrainingPanel(trainer, data, epochs=100000, batch_size=8)
    gate = _held_at_start(panel)
    panel.start()
    panel.stop()  # before the trainer has begun (it waits for the gate)
    gate.set()
    assert panel.wait(timeout=120)
    assert trainer.status == "stopped" and trainer.step == 0


def test_pause_right_after_start_is_not_lost():
    trainer, optimizer, data = small_run()
    panel = TrainingPanel(trainer, data, epochs=100000, batch_size=8)
    gate = _held_at_start(panel)
    panel.start()
    panel.pause()  # before the trainer has begun (it waits for the gate)
    gate.set()
    try:
        wait_for(lambda: trainer.status == "paused", "the pause")
        assert optimizer.seen == []
    finally:
        panel.stop()
        assert panel.wait(timeout=120)
    assert trainer.status == "stopped"


def test_max_steps_per_run():
    trainer, _, data = small_run()
    panel = TrainingPanel(trainer, data, epochs=10, batch_size=8, max_steps=5)
    panel.fit()
    assert trainer.step == 5 and panel.progress.max == 5 and panel.progress.value == 5
    panel.fit()
    assert trainer.step == 10 and panel.progress.value == 5


def _lr_steps(history, lrs, start=0):
    for step, lr in enumerate(lrs, start=start):
        history.steps.append({"step": step, "epoch": 0, "loss": 1.0, "grad_norm": 1.0, "lr": lr})


def test_the_lr_chart_rescales_at_every_redraw_with_labelled_ticks():
    history = rnnkit.History()
    chart = TrainingChart()
    _lr_steps(history, [3e-3] * 20)  # a flat line first: the draw that used to fix the limits
    chart.read(history)
    chart.render()
    low, high = chart.lr_ax.get_ylim()
    assert low < 3e-3 < high and chart.lr_ax.get_yscale() == "log"
    _lr_steps(history, [2.8e-4] * 20, start=20)  # the slider dragged down a decade
    chart.read(history)
    chart.render()
    low, high = chart.lr_ax.get_ylim()
    assert low < 2.8e-4 and high > 3e-3, "the new lr is inside the axis"
    labels = [
        t.get_text() for t in chart.lr_ax.get_yticklabels() if low <= t.get_position()[1] <= high
    ]
    assert len([text for text in labels if text]) >= 2, labels
    assert "now 0.00028" in chart.lr_ax.get_title()


def test_log_ticks_label_every_range():
    from rnnkit.widgets.chart import log_limits, log_ticks

    for values in ([3e-3], [3e-3, 2.8e-4], [1e-5, 1.0], [0.5, 40.0], [0.01, 0.0101]):
        low, high = log_limits(values)
        ticks = log_ticks(low, high)
        assert ticks and all(low <= t <= high for t in ticks), (values, ticks)
        assert len(ticks) <= 5
    assert log_limits([float("nan"), 0.0]) is None
