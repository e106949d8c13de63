// What the test driver controls in the emulator: the schedule, a grid cap for
// grid-stride kernels, the launch log, and the check that every launch was checked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace grl_emu {

// "forward", "reverse" or "shuffle" (seeded): the order of the threads of a block
// between two synchronisation points, and of the blocks of a grid.
void set_schedule(const std::string& kind, std::uint64_t seed);
std::string schedule();

// When > 0, launches run with gridDim.x = min(grid.x, cap): only correct for
// grid-stride kernels, which must give the same answer for any grid.
void set_grid_cap(std::int64_t cap);

struct LaunchRecord {
  std::string name;
  std::int64_t grid, block, smem;
};
std::vector<LaunchRecord> take_launch_log();

struct Stats {
  std::int64_t launches = 0, blocks = 0, threads = 0, barriers = 0, warp_collectives = 0;
};
Stats stats();

// Around each call from Python: a launch whose error state was never read by a
// launch check (C10_CUDA_KERNEL_LAUNCH_CHECK / cudaGetLastError) is an error.
void begin_host_call();
void end_host_call();

}  // namespace grl_emu
