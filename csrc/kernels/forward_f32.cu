// Forward kernel instantiations for float with exact FP32 FMA math.
// One file per dtype so that the variants compile in parallel.
#include "forward_kernel.cuh"

FRNN_INSTANTIATE_FORWARD(float, fused_rnn::CellKind::kLSTM, false)
FRNN_INSTANTIATE_FORWARD(float, fused_rnn::CellKind::kGRU, false)
FRNN_INSTANTIATE_FORWARD(float, fused_rnn::CellKind::kRNN, false)
