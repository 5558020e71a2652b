"""The IPython extension in a real InteractiveShell."""

import platform

import pytest
import torch
from IPython.core.error import UsageError
from IPython.testing import globalipapp
from IPython.utils.capture import capture_output

import rnnkit
from rnnkit.widgets import TrainingPanel
from rnnkit.widgets.magics import SUBCOMMANDS, TRAIN_KEYS

needs_diagnostics = pytest.mark.skipif(
    not hasattr(rnnkit, "gradient_flow"),
    reason="rnnkit.gradient_flow / spectral_radius (the diagnostics of branch tricks) not merged",
)


@pytest.fixture(scope="module")
def ip():
    shell = globalipapp.get_ipython()
    # every mime type, as in a Jupyter kernel (a terminal shell formats text/plain only)
    shell.display_formatter.active_types = shell.display_formatter.format_types
    shell.run_line_magic("load_ext", "rnnkit")
    return shell


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


@pytest.fixture
def workspace(ip):
    rnnkit.seed_everything(0)
    ip.user_ns["model"] = rnnkit.SequenceModel(2, 6, 1, cell="gru")
    ip.user_ns["data"] = rnnkit.tasks.adding_problem(48, 8)
    ip.user_ns["val"] = rnnkit.tasks.adding_problem(16, 8, seed=1)
    ip.user_ns["number"] = 3
    yield ip.user_ns
    for name in ("model", "data", "val", "number", "panel", "p", "run", "flow", "plain"):
        ip.user_ns.pop(name, None)


def test_load_twice_is_harmless(ip):
    ip.run_line_magic("load_ext", "rnnkit")
    ip.run_line_magic("reload_ext", "rnnkit")
    assert "rnnkit" in ip.magics_manager.magics["line"]
    assert "rnnkit" in ip.magics_manager.magics["cell"]


def test_info_prints_versions_device_threads_cudnn(ip, capsys):
    ip.run_line_magic("rnnkit", "info")
    out = capsys.readouterr().out
    assert rnnkit.__version__ in out
    assert torch.__version__ in out
    assert platform.python_version() in out
    assert "device" in out and ("cpu" in out or "cuda" in out)
    assert f"threads : {torch.get_num_threads()}" in out
    assert "cudnn" in out


def test_bad_subcommand_is_a_usage_error(ip):
    with pytest.raises(UsageError, match="unknown subcommand 'fly'"):
        ip.run_line_magic("rnnkit", "fly")
    with pytest.raises(UsageError, match="needs a subcommand"):
        ip.run_line_magic("rnnkit", "")
    with pytest.raises(UsageError, match="unrecognized arguments: extra"):
        ip.run_line_magic("rnnkit", "info extra")


def test_help_lists_every_subcommand_with_its_python_equivalent(ip):
    doc = ip.find_line_magic("rnnkit").__doc__
    for name in SUBCOMMANDS:
        assert f"%rnnkit {name}" in doc
    assert "%%rnnkit train [--name NAME] [--start] [--block]" in doc
    for func in SUBCOMMANDS.values():
        assert "Python" in func.parser.description, func.parser.prog
    for key in TRAIN_KEYS:
        assert key in doc


def test_seed(ip, capsys):
    ip.run_line_magic("rnnkit", "seed 7")
    drawn = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(drawn, torch.rand(3))
    assert "seeded" in capsys.readouterr().out
    with pytest.raises(UsageError, match="invalid int value: 'seven'") as err:
        ip.run_line_magic("rnnkit", "seed seven")
    assert "usage" in str(err.value).lower() or "%rnnkit seed" in str(err.value)
    with pytest.raises(UsageError, match=r"seed must be in \[0, 2\*\*32\)"):
        ip.run_line_magic("rnnkit", "seed -- -1")
    with pytest.raises(UsageError, match="required: seed"):
        ip.run_line_magic("rnnkit", "seed")


def test_train_line_magic_blocking(ip, workspace):
    ip.run_line_magic(
        "rnnkit",
        "train model data --val val --epochs 2 --lr 0.02 --clip 0.5 --batch-size 16 "
        "--optimizer sgd --name p --block",
    )
    panel = workspace["p"]
    assert isinstance(panel, TrainingPanel)
    trainer = panel.trainer
    assert trainer.model is workspace["model"]
    assert isinstance(trainer.optimizer, torch.optim.SGD) and trainer.lr == pytest.approx(0.02)
    assert trainer.grad_clip == 0.5
    assert trainer.status == "finished" and len(trainer.history.epochs) == 2
    assert trainer.step == 6 and "val_loss" in trainer.history.epochs[-1]


def test_train_line_magic_background_then_stop(ip, workspace):
    ip.run_line_magic("rnnkit", "train model data --epochs 100000 --start")
    panel = workspace["panel"]
    try:
        assert panel.running
    finally:
        panel.stop()
        assert panel.wait(timeout=120)
    assert panel.trainer.status in ("stopped", "finished")


def test_train_line_magic_shows_the_panel_without_running(ip, workspace):
    with capture_output() as captured:
        ip.run_line_magic("rnnkit", "train model data")
    assert workspace["panel"].trainer.status == "idle"
    assert "application/vnd.jupyter.widget-view+json" in captured.outputs[0].data


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("train nope data", "no variable 'nope' in the notebook"),
        ("train number data", "number must be a torch.nn.Module, got int"),
        ("train model number", r"number must be \(x, y\), \(x, y, lengths\) or a DataLoader"),
        ("train model data --val nope", "no variable 'nope'"),
        ("train model data --loss hinge", "unknown loss 'hinge'"),
        ("train model data --optimizer lbfgs2", "unknown optimizer 'lbfgs2'"),
        ("train model data --epochs 0", "--epochs: must be an int >= 1, got 0"),
        ("train model data --batch-size 0", "--batch-size: must be an int >= 1, got 0"),
        ("train model data --batch-size 0 --block", "--batch-size: must be an int >= 1"),
        ("train model data --batch-size -3 --start", "--batch-size: must be an int >= 1"),
        ("train model data --lr 0", "--lr: must be a finite number > 0, got 0"),
        ("train model data --lr nan --block", "--lr: must be a finite number > 0, got nan"),
        ("train model data --epochs many", "invalid int value: 'many'"),
        ("train model data --clip -1", "--clip: must be a finite number > 0, got -1"),
        ("train model data --start --block", "--start or --block, not both"),
        ("train model data --name 2x", "--name must be a Python name"),
        ("train model", "required: data"),
    ],
)
def test_train_usage_errors(ip, workspace, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("rnnkit", line)
    assert "panel" not in workspace  # refused at parse time: no panel, no run


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_help_flag_prints_the_help(ip, capsys, flag):
    assert ip.run_line_magic("rnnkit", flag) is None
    out = capsys.readouterr().out
    assert out.strip() == ip.find_line_magic("rnnkit").__doc__.strip()
    for name in SUBCOMMANDS:
        assert f"%rnnkit {name}" in out


@pytest.mark.parametrize("sub", list(SUBCOMMANDS))
def test_subcommand_help_prints_its_help_and_runs_nothing(ip, workspace, capsys, sub):
    assert ip.run_line_magic("rnnkit", f"{sub} --help") is None
    out = capsys.readouterr().out
    assert out.strip() == SUBCOMMANDS[sub].parser.format_help().strip()
    assert "Python" in out and "panel" not in workspace


def test_cell_magic_help_prints_its_help_and_runs_nothing(ip, workspace, capsys):
    assert ip.run_cell_magic("rnnkit", "train --help", "hidden = 3") is None
    assert "%%rnnkit train" in capsys.readouterr().out and "panel" not in workspace


TOML = """
cell = "lstm"
hidden = 5
layers = 2
task = "adding"
seq_len = 6
n = 40
n_val = 10
epochs = 2
lr = 0.01
clip = 1
batch_size = 20
seed = 3
"""


def test_train_cell_magic_builds_model_data_and_panel(ip, workspace):
    ip.run_cell_magic("rnnkit", "train --name run --block", TOML)
    panel = workspace["run"]
    trainer = panel.trainer
    assert isinstance(trainer.model.rnn, rnnkit.LSTM)
    assert trainer.model.rnn.hidden_size == 5 and trainer.model.rnn.num_layers == 2
    assert trainer.lr == pytest.approx(0.01) and trainer.grad_clip == 1.0
    assert trainer.status == "finished" and len(trainer.history.epochs) == 2
    assert trainer.step == 4
    assert "val_loss" in trainer.history.epochs[-1]
    assert "accuracy" in trainer.history.epochs[-1]["metrics"]
    x, _ = panel.train
    assert torch.equal(x, rnnkit.tasks.adding_problem(40, 6, seed=3)[0])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("cell = lstm", "bad TOML in the cell"),
        ("cells = 'lstm'", "unknown key.*cells.*known keys: cell, hidden"),
        ("hidden = 'big'", "hidden must be int, got 'big'"),
        ("hidden = true", "hidden must be int, got True"),
        ("lr = 'fast'", "lr must be float"),
        ("task = 'chess'", "unknown task 'chess'; expected one of adding, copy"),
        ("cell = 'transformer'", "cell must be one of rnn, lstm, gru"),
        ("optimizer = 'nope'", "unknown optimizer 'nope'"),
        ("batch_size = 0", "batch_size must be >= 1, got 0"),
        ("epochs = -1", "epochs must be >= 1, got -1"),
        ("lr = 0.0", r"lr must be > 0, got 0.0"),
        ("clip = -1.0", "clip must be > 0"),
        ("dropout = 1.0", r"dropout must be in \[0, 1\)"),
        ("seed = -2", "seed must be >= 0"),
    ],
)
def test_train_cell_magic_usage_errors(ip, workspace, body, message):
    for line in ("train", "train --block"):
        with pytest.raises(UsageError, match=message):
            ip.run_cell_magic("rnnkit", line, body)


def test_cell_magic_other_subcommands_and_bad_options(ip):
    with pytest.raises(UsageError, match="cell magic for 'train' only"):
        ip.run_cell_magic("rnnkit", "info", "x = 1")
    with pytest.raises(UsageError, match="unrecognized arguments: --epochs"):
        ip.run_cell_magic("rnnkit", "train --epochs 3", "hidden = 4")


def test_compare_shows_a_rich_table_and_plots(ip):
    with capture_output() as captured:
        ip.run_line_magic(
            "rnnkit", "compare --cells rnn,gru --task adding --seq-len 6 --steps 2 --hidden 4"
        )
    table, chart = captured.outputs
    assert {"text/html", "text/markdown", "text/plain"} <= set(table.data)
    markdown = table.data["text/markdown"]
    assert "| cell | params | held-out loss | within 0.04 | time (s) |" in markdown
    assert "| rnn | 37 |" in markdown and "| gru |" in markdown and "| lstm |" not in markdown
    assert "| baseline | - |" in markdown
    assert "task adding, seq_len 6, 2 steps" in table.data["text/plain"]
    assert "<table>" in table.data["text/html"]
    assert "image/png" in chart.data
    assert captured.stdout == ""  # no raw Markdown printed as text
    with pytest.raises(UsageError, match="expected a comma-separated list of rnn, lstm, gru"):
        ip.run_line_magic("rnnkit", "compare --cells rnn,transformer")
    with pytest.raises(UsageError, match="invalid choice: 'chess'"):
        ip.run_line_magic("rnnkit", "compare --task chess")


def test_compare_has_no_metric_column_for_forecasting(ip):
    with capture_output() as captured:
        ip.run_line_magic("rnnkit", "compare --cells gru --task sine --seq-len 6 --steps 2")
    markdown = captured.outputs[0].data["text/markdown"]
    assert "| cell | params | held-out loss | time (s) |" in markdown
    assert "accuracy" not in markdown


@needs_diagnostics
def test_gradflow(ip, workspace):
    x, y = workspace["data"]
    workspace["x"], workspace["y"] = x[:4], y[:4]
    with capture_output() as captured:
        ip.run_line_magic("rnnkit", "gradflow model x y --name flow")
    flow = workspace["flow"]
    expected = rnnkit.gradient_flow(workspace["model"], x[:4], y[:4], torch.nn.functional.mse_loss)
    torch.testing.assert_close(flow.per_step["rnn.l0"], expected.per_step["rnn.l0"])
    table = captured.outputs[0].data
    assert "| rnn.l0 | 8 |" in table["text/markdown"] and "<table>" in table["text/html"]
    assert "rnn.l0" in table["text/plain"] and captured.stdout == ""
    assert "image/png" in captured.outputs[-1].data
    with capture_output():
        ip.run_line_magic("rnnkit", "gradflow model x --name flow")  # L = sum of the output
    with torch.no_grad():
        expected_loss = float(workspace["model"](x[:4]).sum())
    assert workspace["flow"].loss == pytest.approx(expected_loss, 1e-5)
    with pytest.raises(UsageError, match="no variable 'nope'"):
        ip.run_line_magic("rnnkit", "gradflow model nope")
    with pytest.raises(UsageError, match="unknown loss 'hinge'"):
        ip.run_line_magic("rnnkit", "gradflow model x y --loss hinge")
    with pytest.raises(UsageError, match="number must be a torch.nn.Module"):
        ip.run_line_magic("rnnkit", "gradflow number x y")


@needs_diagnostics
def test_check(ip, workspace, capsys):
    ip.run_line_magic("rnnkit", "check model")
    out = capsys.readouterr().out
    model = workspace["model"]
    total = sum(p.numel() for p in model.parameters())
    assert f"parameters: {total:,} ({total:,} trainable)" in out
    assert f"rnn: {sum(p.numel() for p in model.rnn.parameters()):,}" in out
    assert str(rnnkit.explain_fast_path(model)[0]).splitlines()[0] in out
    assert "non-finite parameters: none" in out
    radius = rnnkit.spectral_radius(model)["rnn.l0"]["z"]
    assert f"z={radius:.3f}" in out
    assert "rho > 1 grows" in out and "only once the gates saturate open" in out
    assert "RNN: rho < 1" not in out  # the tanh-RNN reading is shown for RNNs only
    workspace["plain"] = rnnkit.SequenceModel(2, 6, 1, cell="rnn")
    ip.run_line_magic("rnnkit", "check plain")
    out = capsys.readouterr().out
    assert "RNN: rho < 1 makes gradients vanish" in out and "LSTM/GRU" not in out
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    ip.run_line_magic("rnnkit", "check model")
    assert "non-finite parameters: head.bias" in capsys.readouterr().out
    with pytest.raises(UsageError, match="number must be a torch.nn.Module"):
        ip.run_line_magic("rnnkit", "check number")


def test_unload(ip):
    ip.run_line_magic("unload_ext", "rnnkit")
    assert "rnnkit" not in ip.magics_manager.magics["line"]
    assert "rnnkit" not in ip.magics_manager.magics["cell"]
    ip.run_line_magic("load_ext", "rnnkit")
    assert "rnnkit" in ip.magics_manager.magics["line"]
