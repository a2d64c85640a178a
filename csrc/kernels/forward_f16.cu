// Forward kernel instantiations for __half.
// One file per dtype so that the variants compile in parallel.
#include "forward_kernel.cuh"

FRNN_INSTANTIATE_FORWARD(__half, fused_rnn::CellKind::kLSTM, false)
FRNN_INSTANTIATE_FORWARD(__half, fused_rnn::CellKind::kGRU, false)
FRNN_INSTANTIATE_FORWARD(__half, fused_rnn::CellKind::kRNN, false)
