#!/usr/bin/env python
"""Character-level language model on fused_rnn.LSTM / fused_rnn.GRU.

embedding -> stacked LSTM or GRU (dropout between layers) -> linear, trained
with truncated backpropagation through time (TBPTT): the corpus is cut into
`--batch` contiguous streams that are read `--seq-len` characters at a time,
and the hidden state is carried from one chunk to the next, detached, so the
gradient stops at the chunk boundary but the memory does not.

The default corpus needs no download: the Python documentation text that
ships with CPython (`pydoc_data.topics`). Use `--text FILE` for your own.

    python examples/char_lm.py --save ck.pt          # small, CPU-friendly; keep a checkpoint
    python examples/char_lm.py --resume ck.pt --steps 0 --generate "def "
    python examples/char_lm.py --hidden 512 --layers 3 --embed 128 --batch 128 \\
        --seq-len 128 --compare-nn                    # on a GPU, vs torch.nn (cuDNN)

fused_rnn.LSTM/GRU are drop-in subclasses of torch.nn.LSTM/GRU, so the only
fused_rnn-specific line below is the choice of class (`rnn_lib`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    import fused_rnn
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fused_rnn

try:
    from tqdm import tqdm
except ImportError:
    tqdm = None


# --------------------------------------------------------------------- data


def load_corpus(path: str | None) -> str:
    if path is None:
        from pydoc_data.topics import topics  # ships with CPython

        return "".join(topics.values())
    return Path(path).read_text(encoding="utf-8")


def encode(text: str, vocab: str) -> torch.Tensor:
    stoi = {c: i for i, c in enumerate(vocab)}
    unknown = set(text) - stoi.keys()
    if unknown:
        raise SystemExit(
            f"the text has {len(unknown)} characters that are not in the vocabulary "
            f"(e.g. {sorted(unknown)[:5]}); resume with the same --text as the checkpoint"
        )
    return torch.tensor([stoi[c] for c in text], dtype=torch.long)


def batchify(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """(N,) -> (N // batch, batch): column b is one contiguous stream of text."""
    rows = ids.numel() // batch
    return ids[: rows * batch].view(batch, rows).t().contiguous()


# -------------------------------------------------------------------- model


class CharLM(nn.Module):
    def __init__(self, vocab_size, cell="lstm", embed=64, hidden=256, layers=2, dropout=0.0,
                 rnn_lib=fused_rnn):
        super().__init__()
        rnn_cls = {"lstm": rnn_lib.LSTM, "gru": rnn_lib.GRU}[cell]  # fused_rnn or torch.nn
        self.embed = nn.Embedding(vocab_size, embed)
        self.rnn = rnn_cls(embed, hidden, num_layers=layers, dropout=dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x, state=None):
        # x: (T, B) character ids. The RNN is time-major (batch_first=False).
        out, state = self.rnn(self.embed(x), state)
        return self.head(out), state


def detach(state):
    """Cut the graph at a chunk boundary; LSTM state is an (h, c) tuple, GRU's a tensor."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def autocast(amp: bool):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------- progress


class Progress:
    """tqdm when installed, else a one-line printer (redrawn in place on a terminal)."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n = total, desc, 0
        self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True) if tqdm else None
        self.tty = sys.stdout.isatty()
        self.every = max(1, total // 10)

    def update(self, n: int, text: str):
        self.n += n
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(n)
        elif self.tty:
            print(f"\r{self.desc} {self.n}/{self.total}  {text}   ", end="", flush=True)
        elif self.n // self.every != (self.n - n) // self.every or self.n == self.total:
            print(f"{self.desc} {self.n}/{self.total}  {text}", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.tty:
            print()


# ---------------------------------------------------------------- training


def train(model, opt, data, args, start_step, device, amp, desc):
    """`args.steps` TBPTT steps from `start_step`. Returns per-step losses and tokens/s."""
    T, chunks = args.seq_len, (data.size(0) - 1) // args.seq_len
    if chunks < 1:
        raise SystemExit(f"the training text is too short for --batch {args.batch} --seq-len {T}")
    warmup = min(5, args.steps // 5)  # steps left out of the tokens/s figure
    # the losses go into one preallocated buffer: a new small tensor kept per step would
    # sit between the large transient buffers of each step and pin glibc's heap, so that
    # the memory freed after every step could not go back to the system (RSS grew by
    # ~1.5 MB per step on a CPU, though nothing leaked: examples/README.md)
    losses, state, t0 = torch.zeros(args.steps, device=device), None, time.perf_counter()
    progress = Progress(args.steps, desc)
    model.train()
    for k in range(args.steps):
        i = (start_step + k) % chunks
        if i == 0:
            state = None  # back at the start of every stream: start from a zero state
        x, y = data[i * T:(i + 1) * T], data[i * T + 1:(i + 1) * T + 1]
        with autocast(amp):
            logits, state = model(x, detach(state))
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        losses[k] = loss.detach()
        if k + 1 == warmup:
            sync(device)
            t0 = time.perf_counter()
        if (k + 1) % args.log_every == 0 or k + 1 == args.steps:
            # .item() waits for the GPU, so it is done only every --log-every steps
            recent = losses[max(0, k + 1 - args.log_every):k + 1].mean().item()
            progress.update((k + 1) - progress.n, f"loss {recent:.3f}  ppl {math.exp(recent):.2f}")
    sync(device)
    progress.close()
    elapsed = time.perf_counter() - t0
    timed = args.steps - warmup
    tokens_per_s = timed * args.batch * T / elapsed if timed > 0 else float("nan")
    return losses.tolist(), tokens_per_s


@torch.no_grad()
def evaluate(model, data, seq_len, amp):
    """Perplexity over the held-out streams, carrying the state across chunks."""
    model.eval()
    state, total, count = None, 0.0, 0
    for i in range(0, data.size(0) - 1, seq_len):
        y = data[i + 1:i + 1 + seq_len]
        x = data[i:i + y.size(0)]
        with autocast(amp):
            logits, state = model(x, state)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train()
    return math.exp(total / count)


@torch.no_grad()
def generate(model, vocab, prompt, length, temperature, generator):
    """Sample `length` characters after `prompt`, one timestep at a time."""
    model.eval()
    device = next(model.parameters()).device
    stoi = {c: i for i, c in enumerate(vocab)}
    ids = [stoi[c] for c in prompt if c in stoi] or [stoi.get("\n", 0)]
    logits, state = model(torch.tensor(ids, device=device).unsqueeze(1))  # (T, B=1)
    out = []
    for _ in range(length):
        last = logits[-1, 0].float()
        if temperature > 0:
            nxt = torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=generator)
        else:
            nxt = last.argmax().view(1)
        out.append(vocab[nxt.item()])
        logits, state = model(nxt.view(1, 1), state)
    model.train()
    return "".join(out)


# --------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--text", metavar="FILE", help="training text (default: CPython's pydoc_data.topics)")
    add("--cell", choices=["lstm", "gru"], default="lstm", help="default: %(default)s")
    add("--embed", type=int, default=64, help="embedding size (%(default)s)")
    add("--hidden", type=int, default=256, help="hidden size of every layer (%(default)s)")
    add("--layers", type=int, default=2, help="stacked RNN layers (%(default)s)")
    add("--dropout", type=float, default=0.1, help="dropout between RNN layers (%(default)s)")
    add("--seq-len", type=int, default=64, help="TBPTT chunk length (%(default)s)")
    add("--batch", type=int, default=32, help="parallel text streams (%(default)s)")
    add("--steps", type=int, default=1000, help="training steps, 0: none (%(default)s)")
    add("--lr", type=float, default=3e-3, help="AdamW learning rate (%(default)s)")
    add("--weight-decay", type=float, default=0.01, help="AdamW weight decay (%(default)s)")
    add("--clip", type=float, default=1.0, help="gradient-norm clipping (%(default)s)")
    add("--val-frac", type=float, default=0.05, help="fraction held out (%(default)s)")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu",
        help="default: %(default)s")
    add("--amp", action=argparse.BooleanOptionalAction, default=None,
        help="bfloat16 autocast (default: on with CUDA)")
    add("--seed", type=int, default=0, help="default: %(default)s")
    add("--log-every", type=int, default=10, help="steps between progress updates (%(default)s)")
    add("--save", metavar="PATH", help="write a checkpoint here after training")
    add("--resume", metavar="PATH", help="start from this checkpoint (its model config wins)")
    add("--generate", metavar="PROMPT", help="sample text after this prompt")
    add("--length", type=int, default=200, help="characters to generate (%(default)s)")
    add("--temperature", type=float, default=0.8,
        help="sampling temperature, 0: greedy (%(default)s)")
    add("--compare-nn", action="store_true",
        help="also train the same config with torch.nn and compare tokens/s")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    amp = device.type == "cuda" if args.amp is None else args.amp
    if amp and device.type != "cuda":
        print("--amp needs CUDA; running in float32")
        amp = False
    torch.manual_seed(args.seed)

    ckpt = torch.load(args.resume, map_location=device) if args.resume else None
    text = load_corpus(args.text) if (ckpt is None or args.steps > 0) else None
    vocab = ckpt["vocab"] if ckpt else "".join(sorted(set(text)))
    config = ckpt["config"] if ckpt else dict(cell=args.cell, embed=args.embed, hidden=args.hidden,
                                             layers=args.layers, dropout=args.dropout)
    step = ckpt["step"] if ckpt else 0

    def build(rnn_lib):
        torch.manual_seed(args.seed)  # same initial weights for fused_rnn and torch.nn
        model = CharLM(len(vocab), **config, rnn_lib=rnn_lib).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        return model, opt

    model, opt = build(fused_rnn)
    if ckpt:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        print(f"resumed {args.resume} at step {step}: {config}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {config['layers']}-layer {config['cell'].upper()}, hidden {config['hidden']}, "
          f"{n_params / 1e6:.2f}M parameters; device {device}, amp {'bf16' if amp else 'off'}")

    result = dict(model=model, step=step, losses=[], val_ppl=None, tokens_per_s=None,
                  nn_tokens_per_s=None, generated=None, vocab=vocab, config=config, backend=None)
    if args.steps > 0:
        ids = encode(text, vocab)
        n_val = int(len(ids) * args.val_frac)
        train_data = batchify(ids[:len(ids) - n_val], args.batch).to(device)
        val_data = batchify(ids[len(ids) - n_val:], args.batch).to(device)
        print(f"corpus: {len(text):,} characters, vocabulary {len(vocab)}, "
              f"{args.batch} streams of {train_data.size(0):,}, {n_val:,} held out")

        losses, tps = train(model, opt, train_data, args, step, device, amp, "fused_rnn")
        result["backend"] = model.rnn.last_backend  # what the training steps ran on
        step += args.steps
        print(f"step {step}: train loss {losses[0]:.3f} -> {losses[-1]:.3f}, {tps:,.0f} tokens/s")
        result.update(step=step, losses=losses, tokens_per_s=tps)
        if val_data.size(0) > 1:
            result["val_ppl"] = evaluate(model, val_data, args.seq_len, amp)
            print(f"validation perplexity {result['val_ppl']:.2f}")

        if args.compare_nn:  # the same run again, on torch.nn (cuDNN on a GPU)
            ref, ref_opt = build(torch.nn)
            if ckpt:
                ref.load_state_dict(ckpt["model"])
                ref_opt.load_state_dict(ckpt["optimizer"])
            start = step - args.steps
            ref_losses, ref_tps = train(ref, ref_opt, train_data, args, start, device, amp,
                                        "torch.nn ")
            result["nn_tokens_per_s"] = ref_tps
            print(f"tokens/s: fused_rnn {tps:,.0f}, torch.nn {ref_tps:,.0f} "
                  f"(fused_rnn speed-up {tps / ref_tps:.2f}x); "
                  f"final loss fused_rnn {losses[-1]:.3f}, torch.nn {ref_losses[-1]:.3f}")

    if args.save:
        torch.save(dict(model=model.state_dict(), optimizer=opt.state_dict(), step=step,
                        vocab=vocab, config=config), args.save)
        print(f"saved checkpoint {args.save} (step {step})")

    if args.generate is not None:
        gen = torch.Generator(device=device).manual_seed(args.seed)
        result["generated"] = generate(model, vocab, args.generate, args.length,
                                       args.temperature, gen)
        result["generate_backend"] = model.rnn.last_backend
        print("-" * 60)
        print(args.generate + result["generated"])
        print("-" * 60)

    if result["backend"]:
        print(f"fused_rnn backend (training): {result['backend']}")
    if args.generate is not None:
        print(f"fused_rnn backend (generation): {result['generate_backend']}")
    return result


if __name__ == "__main__":
    main()
