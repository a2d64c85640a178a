// emu shim (see ../emu_cuda.h): grid.sync() is a barrier over every thread of the grid.
#pragma once
#include "../emu_cuda.h"

namespace cooperative_groups {
struct grid_group {
  void sync() const { emu::tl_grid->wait("grid.sync"); }
};
inline grid_group this_grid() { return grid_group{}; }
}  // namespace cooperative_groups
