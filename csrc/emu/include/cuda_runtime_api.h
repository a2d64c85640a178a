// emu shim (see ../emu_cuda.h)
#pragma once
#include "cuda_runtime.h"
