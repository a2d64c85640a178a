// Forward kernel instantiations for __nv_bfloat16.
// One file per dtype so that the variants compile in parallel.
#include "forward_kernel.cuh"

FRNN_INSTANTIATE_FORWARD(__nv_bfloat16, fused_rnn::CellKind::kLSTM, false)
FRNN_INSTANTIATE_FORWARD(__nv_bfloat16, fused_rnn::CellKind::kGRU, false)
FRNN_INSTANTIATE_FORWARD(__nv_bfloat16, fused_rnn::CellKind::kRNN, false)
