"""rnnkit: a notebook-first PyTorch toolkit for recurrent neural networks.

The public API is flat: ``rnnkit.LSTM``, ``rnnkit.pad``, ``rnnkit.explain_fast_path``, ...
The Jupyter layer lives in ``rnnkit.widgets`` and is never imported by the core.
"""

from pathlib import Path as _Path

from rnnkit import distributed, tasks
from rnnkit.attention import BahdanauAttention, LuongAttention
from rnnkit.batches import Batch
from rnnkit.callbacks import (
    Callback,
    EarlyStopping,
    GradientClipping,
    History,
    LRSchedule,
    ModelCheckpoint,
    NonFiniteGuard,
    ProgressBar,
)
from rnnkit.cells import GRUCell, LSTMCell, RecurrentCell, RNNCell
from rnnkit.checkpoint import (
    NonFiniteCheckpointError,
    export_safetensors,
    import_safetensors,
    load_checkpoint,
    save_checkpoint,
)
from rnnkit.clipping import (
    NonFiniteError,
    NonFiniteGradientError,
    clip_gradients,
    first_nonfinite_gradient,
)
from rnnkit.compare import Comparison, compare_cells
from rnnkit.diagnostics import GradientFlow, gradient_flow, saturation, spectral_radius
from rnnkit.errors import InputError
from rnnkit.generate import beam_search, sample
from rnnkit.init import init_recurrent
from rnnkit.kerasfit import fit
from rnnkit.language_model import LanguageModel, Stateful
from rnnkit.loggers import CSVLogger, TensorBoardLogger
from rnnkit.losses import (
    UncertaintyWeighting,
    balanced_accuracy,
    class_balanced_weights,
    focal_loss,
    recall_per_class,
)
from rnnkit.lr_find import LRFinderResult, lr_find
from rnnkit.models import SequenceModel
from rnnkit.padding import (
    PaddedBatch,
    collate_padded,
    last_valid,
    lengths_to_mask,
    mask_to_lengths,
    masked_mean,
    masked_sum,
    pad,
    sequence_loss,
    unpad,
)
from rnnkit.recurrent import GRU, LSTM, RNN, Recurrent, explain_fast_path
from rnnkit.regularization import (
    ActivationRegularization,
    LockedDropout,
    Zoneout,
    activation_regularization,
    embedding_dropout,
)
from rnnkit.sampling import (
    BucketBatchSampler,
    DistributedBucketSampler,
    PaddingStats,
    padding_stats,
)
from rnnkit.scan import MinGRU, MinLSTM, MinRNNStack, linear_scan
from rnnkit.seeding import seed_everything
from rnnkit.seq2seq import ScheduledSampling, Seq2Seq
from rnnkit.tbptt import Chunk, detach_state, tbptt
from rnnkit.text import BPTTBatches, CharVocab, Vocab, bptt_batches, lm_streams
from rnnkit.trace import StateTrace, trace_states
from rnnkit.train import Trainer
from rnnkit.units import RecurrentUnit, recurrent_units
from rnnkit.variants import IndRNNCell, LayerNormGRUCell, LayerNormLSTMCell
from rnnkit.weight_drop import WeightDrop

__version__ = "0.1.0"

# In a source checkout the Jupyter layer sits in ../widgets (pyproject maps it to rnnkit.widgets
# when built); adding the checkout root to the search path makes `rnnkit.widgets` resolve there too.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "widgets" / "__init__.py").is_file() and not (
    _checkout / "rnnkit/widgets"
).exists():
    __path__.append(str(_checkout))


def load_ipython_extension(ipython):
    """``%load_ext rnnkit``: register the ``%rnnkit`` magics (see :mod:`rnnkit.widgets.magics`)."""
    from rnnkit.widgets.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):
    """``%unload_ext rnnkit``: remove the ``%rnnkit`` magics."""
    from rnnkit.widgets.magics import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "Batch",
    "Callback",
    "EarlyStopping",
    "GradientClipping",
    "History",
    "InputError",
    "LRFinderResult",
    "LRSchedule",
    "ModelCheckpoint",
    "NonFiniteCheckpointError",
    "NonFiniteError",
    "NonFiniteGuard",
    "ProgressBar",
    "SequenceModel",
    "Trainer",
    "export_safetensors",
    "fit",
    "import_safetensors",
    "load_checkpoint",
    "lr_find",
    "save_checkpoint",
    "seed_everything",
    "distributed",
    "tasks",
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "MinGRU",
    "MinLSTM",
    "MinRNNStack",
    "RNN",
    "RNNCell",
    "Recurrent",
    "RecurrentCell",
    "explain_fast_path",
    "lengths_to_mask",
    "linear_scan",
    "mask_to_lengths",
    "BucketBatchSampler",
    "DistributedBucketSampler",
    "PaddedBatch",
    "PaddingStats",
    "collate_padded",
    "last_valid",
    "masked_mean",
    "masked_sum",
    "pad",
    "padding_stats",
    "sequence_loss",
    "unpad",
    "StateTrace",
    "trace_states",
    "ActivationRegularization",
    "Chunk",
    "GradientFlow",
    "IndRNNCell",
    "LayerNormGRUCell",
    "LayerNormLSTMCell",
    "LockedDropout",
    "NonFiniteGradientError",
    "first_nonfinite_gradient",
    "RecurrentUnit",
    "WeightDrop",
    "Zoneout",
    "activation_regularization",
    "clip_gradients",
    "detach_state",
    "embedding_dropout",
    "gradient_flow",
    "init_recurrent",
    "recurrent_units",
    "saturation",
    "spectral_radius",
    "tbptt",
    "UncertaintyWeighting",
    "balanced_accuracy",
    "class_balanced_weights",
    "focal_loss",
    "recall_per_class",
    "BPTTBatches",
    "BahdanauAttention",
    "CharVocab",
    "LanguageModel",
    "LuongAttention",
    "ScheduledSampling",
    "Seq2Seq",
    "Stateful",
    "Vocab",
    "beam_search",
    "bptt_batches",
    "lm_streams",
    "sample",
    "Comparison",
    "compare_cells",
    "CSVLogger",
    "TensorBoardLogger",
]
