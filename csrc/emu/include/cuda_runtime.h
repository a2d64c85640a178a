// emu shim (see ../emu_cuda.h): replaces the CUDA runtime header for host emulation.
#pragma once
#include "../emu_cuda.h"

// Defined by the emulation driver (it knows the kernel's parameter type).
cudaError_t cudaLaunchCooperativeKernel(const void* fn, dim3 grid, dim3 block, void** args,
                                        size_t smem_bytes, cudaStream_t stream);
