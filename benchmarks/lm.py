"""Character language models on the Shakespeare corpus at equal wall clock (on demand).

    python -m benchmarks.lm [--seconds 180] [--threads 2] [--only lstm,torch,transformer]

Not part of ``python -m benchmarks`` (no ``run``): it takes ``3 x --seconds`` of training plus
evaluation, about ten minutes, and its numbers mean something only on a quiet machine.

Three models, each trained for the same wall-clock time on the first 90% of the text
(``rnnkit.tasks.shakespeare("train")``), then scored on the next 5% (``"val"``) in nats per
character (mean cross-entropy; bits = nats / ln 2):

* ``lstm``: ``rnnkit.LanguageModel`` (one LSTM layer) trained by ``rnnkit.Trainer(...,
  stateful=True)`` on ``rnnkit.bptt_batches`` windows, the state carried across windows;
* ``torch``: the same model (same initial weights) as plain ``torch.nn`` modules, trained by a
  hand-written stateful loop doing the same steps: the library's cost is the gap in tokens
  trained within the same time;
* ``transformer``: a small causal Transformer (``torch.nn.TransformerEncoder`` with a causal
  mask, learned positions, pre-norm) of about the same parameter count, trained on the same
  windows with no carried state (its context is the window).

All use Adam, gradient clipping at 1, a learning rate warmed up over the first 2% of the time
and then cosine-annealed to 5% of its peak by the time budget's end (the schedule follows
elapsed time, so every model ends annealed whatever its speed). The LSTMs are scored with the
state carried through the whole validation text (one stream); the Transformer on sliding
windows of its context length with half a window of stride, each character scored once with
at least half a window of context.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

import rnnkit

HERE = Path(__file__).resolve().parent


class CausalTransformer(nn.Module):
    """A GPT-style character model: token + learned position embeddings, pre-norm
    Transformer encoder layers under a causal mask, a linear head tied to the embedding."""

    def __init__(self, vocab: int, d_model: int, layers: int, heads: int, context: int) -> None:
        super().__init__()
        self.context = context
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.zeros(context, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            4 * d_model,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
            activation="gelu",
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(steps, device=x.device)
        h = self.embed(x) + self.position[:steps]
        return self.head(self.norm(self.blocks(h, mask=mask, is_causal=True)))


def lr_at(elapsed: float, budget: float, peak: float) -> float:
    """Warm-up over 2% of the budget, then cosine to 5% of the peak at its end."""
    fraction = min(elapsed / budget, 1.0)
    if fraction < 0.02:
        return peak * max(fraction / 0.02, 0.01)
    progress = (fraction - 0.02) / 0.98
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


class TimeBudget(rnnkit.Callback):
    """Sets the learning rate from the elapsed time and stops the run when the budget is used."""

    def __init__(self, seconds: float, peak: float) -> None:
        self.seconds, self.peak = seconds, peak
        self.start = 0.0

    def on_fit_begin(self, trainer) -> None:
        self.start = time.perf_counter()

    def on_batch_begin(self, trainer, batch_index: int) -> None:
        elapsed = time.perf_counter() - self.start
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr_at(elapsed, self.seconds, self.peak)
        if elapsed >= self.seconds:
            trainer.stop()


def train_rnnkit(model, batches, seconds: float, peak: float) -> int:
    trainer = rnnkit.Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=peak),
        "cross_entropy",
        grad_clip=1.0,
        stateful=True,
        callbacks=[TimeBudget(seconds, peak)],
    )
    trainer.fit(batches, epochs=1000)
    return trainer.step


def train_loop(model, batches, seconds: float, peak: float, stateful: bool) -> int:
    optimizer = torch.optim.Adam(model.parameters(), lr=peak)
    start, steps = time.perf_counter(), 0
    model.train()
    while True:
        state = None
        for x, y in batches:
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return steps
            for group in optimizer.param_groups:
                group["lr"] = lr_at(elapsed, seconds, peak)
            if stateful:
                logits, state = model(x, rnnkit.detach_state(state))
            else:
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            loss.item()
            steps += 1


@torch.no_grad()
def score_recurrent(model, ids: torch.Tensor) -> float:
    """Nats per character over ``ids``, the state carried through the whole text."""
    model.eval()
    logits, _ = model(ids[None, :-1])
    return float(nn.functional.cross_entropy(logits[0], ids[1:]))


@torch.no_grad()
def score_transformer(model: CausalTransformer, ids: torch.Tensor) -> float:
    """Nats per character: windows of ``context`` with stride ``context // 2``; each window
    scores the characters the previous one did not (all of the first window)."""
    model.eval()
    context, stride = model.context, model.context // 2
    total, count, scored_to = 0.0, 0, 0
    starts = list(range(0, len(ids) - 1 - context, stride)) + [len(ids) - 1 - context]
    for start in starts:
        x, y = ids[start : start + context], ids[start + 1 : start + 1 + context]
        losses = nn.functional.cross_entropy(model(x[None])[0], y, reduction="none")
        new = max(scored_to - start, 0)
        total += float(losses[new:].sum())
        count += context - new
        scored_to = start + context
    return total / count


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.lm", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=180.0, help="training time per model")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--only", default="lstm,torch,transformer", help="models to run")
    parser.add_argument("--hidden", type=int, default=512, help="LSTM hidden size")
    parser.add_argument("--streams", type=int, default=32, help="parallel streams (batch)")
    parser.add_argument("--seq-len", type=int, default=100, help="window length")
    parser.add_argument("--lr", type=float, default=4e-3, help="peak learning rate (LSTMs)")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "lm.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = args.only.split(",")
    unknown = set(chosen) - {"lstm", "torch", "transformer"}
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from lstm, torch, transformer")

    train, val = rnnkit.tasks.shakespeare("train"), rnnkit.tasks.shakespeare("val")
    vocab = rnnkit.CharVocab(rnnkit.tasks.shakespeare("all"))
    train_ids, val_ids = vocab.encode(train), vocab.encode(val)
    batches = rnnkit.bptt_batches(rnnkit.lm_streams(train_ids, args.streams), args.seq_len)
    counts = torch.bincount(train_ids, minlength=len(vocab)).double()
    unigram = float(-(counts / counts.sum())[val_ids].log().mean())
    print(f"validation text: {len(val_ids)} characters; unigram baseline {unigram:.3f} nats/char")

    torch.manual_seed(0)
    lstm = rnnkit.LanguageModel(vocab, 64, args.hidden)
    rows = []

    def report(name: str, model: nn.Module, steps: int, nats: float, started: float) -> None:
        tokens = steps * args.streams * args.seq_len
        row = {
            "model": name,
            "parameters": parameters(model),
            "steps": steps,
            "tokens": tokens,
            "tokens_per_s": round(tokens / args.seconds),
            "val_nats_per_char": round(nats, 4),
            "val_bits_per_char": round(nats / math.log(2), 4),
            "wall_s": round(time.perf_counter() - started, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    for name in chosen:
        started = time.perf_counter()
        if name == "lstm":
            model = rnnkit.LanguageModel(vocab, 64, args.hidden)
            model.load_state_dict(lstm.state_dict())
            steps = train_rnnkit(model, batches, args.seconds, args.lr)
            report(
                "rnnkit LSTM (Trainer, stateful)",
                model,
                steps,
                score_recurrent(model, val_ids),
                started,
            )
        elif name == "torch":
            model = rnnkit.Stateful(
                nn.LSTM(64, args.hidden, batch_first=True),
                nn.Embedding(len(vocab), 64),
                nn.Linear(args.hidden, len(vocab)),
            )
            model.embedding.load_state_dict(lstm.embedding.state_dict())
            model.layer.load_state_dict(lstm.rnn.state_dict())
            model.head.load_state_dict(lstm.decoder.state_dict())
            steps = train_loop(model, batches, args.seconds, args.lr, stateful=True)
            report(
                "torch.nn LSTM (hand loop, stateful)",
                model,
                steps,
                score_recurrent(model, val_ids),
                started,
            )
        else:
            torch.manual_seed(0)
            model = CausalTransformer(len(vocab), 160, 4, 5, args.seq_len)
            steps = train_loop(model, batches, args.seconds, 1e-3, stateful=False)
            report("causal Transformer", model, steps, score_transformer(model, val_ids), started)

    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": args.seconds,
        "unigram_nats_per_char": round(unigram, 4),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
