"""fused_rnn against the strongest baselines a user could run instead, on the same weights.

    python benchmarks/bench.py --quick        # the quick sweep (70 s time box; --time-budget 0: all)
    python benchmarks/bench.py                # the full sweep (hours)
    python benchmarks/bench.py --cell LSTM --layers 4 --hidden 512 --batch 32 --seq 512 \\
        --dtype bf16 --mode train --dropout 0   # one shape (each flag takes a comma list)
    python benchmarks/bench.py --quick --floors # also the barrier / cuDNN-step floors
    python benchmarks/bench.py --calibrate    # GPU: measure the crossover table `auto` reads

On a GPU, per case, in one process, on the same weights (the nn module's, copied into
every implementation) and the same inputs, each checked against the float64 reference
(its error <= 2 x eager cuDNN's + a floor) and timed with CUDA events:

    cudnn          torch.nn's module, eager (cuDNN)
    cudnn_graph    the same captured in a CUDA graph (training: forward + backward)
    cudnn_persist  fp16: single-layer modules stacked and captured, where PyTorch's rule
                   gives cuDNN's persistent kernel (PERSIST_STATIC)
    flashrnn       FlashRNN's fused CUDA LSTM, one call per layer (when installed)
    fused          fused_rnn's kernel forced (fused_rnn.backend("fused"))
    fused_graph    the same captured in a CUDA graph, as cudnn_graph
    auto           fused_rnn as users get it (its default policy: the path it chose)

The headline is speedup_vs_best: the best baseline's time over the faster of fused and
fused_graph; speedup_vs_cudnn (eager against eager) stays beside it. Results go to
benchmarks/results/<device>/ (or --out): results.json, results.csv, results.md, plots.

The forced kernel is also timed under the other FUSED_RNN_SYNC policy (grid / flags) where
--sync-compare says (infer with --quick). Without a GPU it checks fused_rnn against
torch.nn on CPU and measures the CPU speed target; it writes nothing unless --out is given.

--calibrate (GPU only) walks each (dtype, cell, layers, hidden) up the batch sizes,
inference and training, eagerly and inside CUDA graphs, and writes the crossover table
fused_rnn/crossover/<device>.json (--out: another folder) that `auto` reads.

The code lives in benchmarks/rnnbench/ (cases, baselines, timing, sweep, outputs,
calibrate, cpu, cli); benchmarks/README.md documents every field.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rnnbench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
