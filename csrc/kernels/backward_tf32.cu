// Backward kernel instantiations: float with TF32 tensor-core math.
// One file per dtype so that the variants compile in parallel.
#include "backward_kernel.cuh"

FRNN_INSTANTIATE_BACKWARD(float, fused_rnn::CellKind::kLSTM, true)
FRNN_INSTANTIATE_BACKWARD(float, fused_rnn::CellKind::kGRU, true)
FRNN_INSTANTIATE_BACKWARD(float, fused_rnn::CellKind::kRNN, true)
