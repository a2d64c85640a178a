// Backward kernel instantiations: __nv_bfloat16 with bf16 tensor-core math.
// One file per dtype so that the variants compile in parallel.
#include "backward_kernel.cuh"

FRNN_INSTANTIATE_BACKWARD(__nv_bfloat16, fused_rnn::CellKind::kLSTM, false)
FRNN_INSTANTIATE_BACKWARD(__nv_bfloat16, fused_rnn::CellKind::kGRU, false)
FRNN_INSTANTIATE_BACKWARD(__nv_bfloat16, fused_rnn::CellKind::kRNN, false)
