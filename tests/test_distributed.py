"""A model holding fused_rnn modules trains under DistributedDataParallel (gloo, CPU)."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fused_rnn

WORLD = 2


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = fused_rnn.LSTM(3, 6, num_layers=2, batch_first=True, dropout=0.25)
        self.gru = fused_rnn.GRU(6, 5, bidirectional=True)
        self.head = nn.Linear(10, 1)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.gru(y.transpose(0, 1))
        return self.head(y).mean()


def _data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(WORLD * 3, 7, 3, generator=g, dtype=torch.float64)


def _model():
    torch.manual_seed(0)
    return Net().double()


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    model = nn.parallel.DistributedDataParallel(_model())
    model.eval()  # dropout masks depend on the batch layout; semantics are tested elsewhere
    x = _data().chunk(WORLD)[rank]
    model(x).backward()
    torch.save({n: p.grad for n, p in model.module.named_parameters()},
               os.path.join(out_dir, f"grads{rank}.pt"))
    # and one optimiser step keeps the replicas identical
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    torch.save(model.module.state_dict(), os.path.join(out_dir, f"state{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32",
                    reason="needs torch.distributed with gloo")
def test_ddp_two_processes_match_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    grads = [torch.load(tmp_path / f"grads{r}.pt") for r in range(WORLD)]
    states = [torch.load(tmp_path / f"state{r}.pt") for r in range(WORLD)]

    single = _model().eval()
    # DDP averages the per-rank means of equal chunks: the mean over the whole batch
    single(_data()).backward()
    for name, p in single.named_parameters():
        assert torch.equal(grads[0][name], grads[1][name]), name
        torch.testing.assert_close(grads[0][name], p.grad, rtol=0, atol=1e-12)
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k])
