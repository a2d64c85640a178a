"""The benchmark behind `benchmarks/bench.py`, one concern per module.

    cases       the shapes (Case), the per-case record (Result), the sweeps, FLOPs, the
                accuracy rule's floors, PyTorch's rule for cuDNN's persistent kernel
    baselines   one class per implementation timed against the fused kernel, one interface
                (skip_reason, prepare, step, outputs): cudnn, cudnn_graph, cudnn_persist,
                flashrnn, fused, fused_graph, auto, reference; the parity check against the
                float64 reference (the error-ratio rule)
    timing      CUDA-event timing, host-sync counting, input rotation, CUDA-graph capture
    sweep       the GPU sweep: one case = every baseline on the same weights and inputs
    outputs     results.json / .csv / .md, plots, summaries
    calibrate   --calibrate: the crossover table `auto` reads, eager and inside a CUDA graph
    cpu         the command without a GPU: parity with torch.nn and the CPU speed target
    cli         the command line

Everything imports torch except `report` (one level up, standard library only).
"""
