"""Stateful language-model training: rnnkit against a hand-written torch loop.

rnnkit side: ``rnnkit.Trainer(LanguageModel, stateful=True, grad_clip=...)`` over
``rnnkit.bptt_batches`` windows of the Shakespeare text (history, token-weighted epoch loss,
non-finite guard included). Baseline: the same model as plain ``torch.nn`` modules
(``nn.Embedding``, ``nn.LSTM``, ``nn.Linear``, same weights) and the loop everyone writes —
windows sliced from the streams, the state carried and detached, cross-entropy, backward,
``clip_grad_norm_``, Adam step, ``loss.item()``. One epoch each, alternated, median; target
<= 1.05x the loop's time.
"""

from __future__ import annotations

import torch
from torch import nn

import rnnkit
from benchmarks.common import markdown_table, row, time_pair, write_json


def _torch_model(model: rnnkit.LanguageModel) -> nn.Module:
    rnn = model.rnn
    twin = rnnkit.Stateful(
        nn.LSTM(rnn.input_size, rnn.hidden_size, rnn.num_layers, batch_first=True),
        nn.Embedding(model.vocab_size, rnn.input_size),
        nn.Linear(rnn.hidden_size, model.vocab_size),
    )
    twin.embedding.load_state_dict(model.embedding.state_dict())
    twin.layer.load_state_dict(rnn.state_dict())
    twin.head.load_state_dict(model.decoder.state_dict())
    return twin


def _loop_epoch(model, optimizer, streams: torch.Tensor, seq_len: int) -> float:
    state, total = None, 0.0
    for i in range(0, streams.shape[1] - 1, seq_len):
        x = streams[:, i : i + seq_len]
        y = streams[:, i + 1 : i + 1 + seq_len]
        if x.shape[1] > y.shape[1]:
            x = x[:, : y.shape[1]]
        if state is not None:
            state = tuple(s.detach() for s in state)
        logits, state = model(x, state)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        total += loss.item()
    return total


def case(streams_n: int, seq_len: int, hidden: int, windows: int, repeat: int) -> dict:
    text = rnnkit.tasks.shakespeare("train")[: streams_n * (seq_len * windows + 1)]
    vocab = rnnkit.CharVocab(rnnkit.tasks.shakespeare("all"))
    streams = rnnkit.lm_streams(vocab.encode(text), streams_n)
    torch.manual_seed(0)
    model = rnnkit.LanguageModel(vocab, 64, hidden)
    twin = _torch_model(model)
    trainer = rnnkit.Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=2e-3),
        "cross_entropy",
        grad_clip=1.0,
        stateful=True,
    )
    batches = rnnkit.bptt_batches(streams, seq_len)
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=2e-3)
    ours, loop = time_pair(
        lambda: trainer.fit(batches, epochs=1),
        lambda: _loop_epoch(twin, twin_optimizer, streams, seq_len),
        repeat=repeat,
        warmup=1,
    )
    return row(
        "stateful LM training",
        f"{len(batches)} windows of {streams_n} x {seq_len}, LSTM {hidden}",
        ours,
        "hand-written torch.nn loop",
        loop,
        "<= 1.05x",
    )


def run(quick: bool = False) -> list[dict]:
    if quick:
        return [case(8, 16, 32, 4, 2)]
    return [case(32, 64, 256, 20, 5), case(32, 100, 512, 10, 5)]


if __name__ == "__main__":
    rows = run()
    print(markdown_table(rows))
    write_json(rows, "benchmarks/results/lm_training.json")
