// The emulator's runtime: fibers, the block scheduler, barriers, warp collectives,
// shared memory and launch checks. See cuda_emu.h for the model.
#include "cuda_emu.h"

#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "emu_control.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define GRL_EMU_ASAN 1
#else
#define GRL_EMU_ASAN 0
#endif

#if defined(__x86_64__)
// A context switch that saves only the callee-saved registers: glibc's swapcontext
// makes a system call (the signal mask) per switch, and ASan's interceptor of it
// clears the shadow of the whole target stack each time.
extern "C" void grl_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl grl_emu_switch
  .hidden grl_emu_switch
  .type grl_emu_switch, @function
grl_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size grl_emu_switch, .-grl_emu_switch
  .section .note.GNU-stack,"",@progbits
)");
#define GRL_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#define GRL_EMU_ASM_SWITCH 0
#endif

namespace grl_emu {

uint3 g_thread_idx{0, 0, 0};
uint3 g_block_idx{0, 0, 0};
dim3 g_block_dim;
dim3 g_grid_dim;

namespace {

constexpr std::size_t kStackSize = 256 * 1024;  // mapped lazily; ASan frames are large
constexpr std::size_t kGuard = 4096;
constexpr std::size_t kSharedLimit = 48 * 1024;  // static + dynamic, without opt-in

enum class State { Runnable, AtBarrier, AtWarp, Done, Failed };

struct Fiber {
  char* stack = nullptr;  // usable stack, above a guard page
  void* sp = nullptr;
#if !GRL_EMU_ASM_SWITCH
  ucontext_t ctx;
#endif
  bool dirty = false;  // abandoned mid-kernel: its stack's shadow may hold stale redzones
  State state = State::Done;
  uint3 idx{0, 0, 0};
  unsigned linear = 0;
  const char* file = nullptr;
  int line = 0;
  WarpOp op = WarpOp::Sync;
  unsigned mask = 0;
  std::uint64_t value = 0, result = 0;
  int arg = 0, width = 32;
};

struct SharedVar {
  const char* file;
  int line;
  std::size_t bytes;
  void* ptr;
};

enum class Schedule { Forward, Reverse, Shuffle };

std::mutex g_mutex;
Schedule g_schedule = Schedule::Forward;
std::uint64_t g_seed = 0;
std::int64_t g_grid_cap = 0;
std::vector<Fiber> g_fibers;
std::vector<SharedVar> g_shared;
std::size_t g_shared_bytes = 0;
std::size_t g_dynamic_smem = 0;
Fiber* g_current = nullptr;
void* g_sched_sp = nullptr;
#if !GRL_EMU_ASM_SWITCH
ucontext_t g_sched_ctx;
#endif
const void* g_main_bottom = nullptr;
std::size_t g_main_size = 0;
KernelCall g_call{nullptr, nullptr};
const char* g_kernel = "";
std::string g_error;
cudaError_t g_last_error = cudaSuccess;
std::string g_last_error_detail;
std::string g_unchecked;  // the launch whose error state nobody read yet
std::vector<LaunchRecord> g_log;
Stats g_stats;
std::uint64_t g_launch_counter = 0;

std::uint64_t splitmix(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The order in which `n` items (threads or blocks) run this time.
void schedule_order(std::vector<std::uint32_t>& order, std::size_t n, std::uint64_t salt) {
  order.resize(n);
  for (std::size_t i = 0; i < n; ++i) order[i] = static_cast<std::uint32_t>(i);
  if (g_schedule == Schedule::Reverse) {
    std::reverse(order.begin(), order.end());
  } else if (g_schedule == Schedule::Shuffle) {
    std::uint64_t s = g_seed * 0x2545F4914F6CDD1Dull ^ salt;
    for (std::size_t i = n; i > 1; --i) std::swap(order[i - 1], order[splitmix(s) % i]);
  }
}

std::string where(const uint3& b, const uint3& t) {
  std::ostringstream os;
  os << "block (" << b.x << "," << b.y << "," << b.z << ") thread (" << t.x << "," << t.y << "," << t.z << ")";
  return os.str();
}

std::string site(const char* file, int line) {
  std::string f = file ? file : "?";
  const auto slash = f.rfind('/');
  if (slash != std::string::npos) f = f.substr(slash + 1);
  return f + ":" + std::to_string(line);
}

// ---- context switching ------------------------------------------------------------------

void fiber_main();

void switch_into(Fiber& f) {  // scheduler -> fiber
  g_current = &f;
  g_thread_idx = f.idx;
#if GRL_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, kStackSize);
#endif
#if GRL_EMU_ASM_SWITCH
  grl_emu_switch(&g_sched_sp, f.sp);
#else
  swapcontext(&g_sched_ctx, &f.ctx);
#endif
#if GRL_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  g_current = nullptr;
}

void switch_out(bool finished) {  // fiber -> scheduler; a finished fiber is never resumed
  Fiber& f = *g_current;
#if GRL_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(finished ? nullptr : &fake, g_main_bottom, g_main_size);
#else
  (void)finished;
#endif
#if GRL_EMU_ASM_SWITCH
  grl_emu_switch(&f.sp, g_sched_sp);
#else
  swapcontext(&f.ctx, &g_sched_ctx);
#endif
#if GRL_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, &g_main_bottom, &g_main_size);
#endif
}

void fiber_main() {
#if GRL_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_main_bottom, &g_main_size);
#endif
  g_call.invoke(g_call.ctx);
  g_current->state = State::Done;
  switch_out(true);
  std::abort();  // a finished fiber is never resumed
}

void prepare_fiber(Fiber& f) {
  if (f.stack == nullptr) {
    void* mem = mmap(nullptr, kStackSize + kGuard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (mem == MAP_FAILED) throw std::runtime_error("grl_emu: cannot map a fiber stack");
    mprotect(mem, kGuard, PROT_NONE);  // overflow faults instead of corrupting a neighbour
    f.stack = static_cast<char*>(mem) + kGuard;
  }
#if GRL_EMU_ASAN
  // A fiber's last frames (the switch out of a finished fiber, or everything below
  // a failure) never return, so their redzones stay in the shadow; clear them.
  constexpr std::size_t kTop = 16 * 1024;
  if (f.dirty) {
    __asan_unpoison_memory_region(f.stack, kStackSize);
  } else {
    __asan_unpoison_memory_region(f.stack + kStackSize - kTop, kTop);
  }
#endif
  f.dirty = false;
#if GRL_EMU_ASM_SWITCH
  // Top of stack: [fake return address 0][fiber_main][6 saved registers] <- sp.
  auto* top = reinterpret_cast<std::uintptr_t*>(f.stack + kStackSize);
  top[-1] = 0;
  top[-2] = reinterpret_cast<std::uintptr_t>(&fiber_main);
  for (int i = 3; i <= 8; ++i) top[-i] = 0;
  f.sp = top - 8;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = kStackSize;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, &fiber_main, 0);
#endif
}

[[noreturn]] void fail_in_fiber(const std::string& message) {
  Fiber* f = g_current;
  if (f == nullptr) throw std::runtime_error(message);
  if (g_error.empty()) g_error = message;
  f->state = State::Failed;
  switch_out(true);
  std::abort();
}

void free_shared() {
  for (auto& v : g_shared) std::free(v.ptr);
  g_shared.clear();
  g_shared_bytes = 0;
}

std::string state_name(const Fiber& f) {
  switch (f.state) {
    case State::Runnable:
      return "running";
    case State::AtBarrier:
      return "waiting at __syncthreads() " + site(f.file, f.line);
    case State::AtWarp:
      return "waiting at a warp collective " + site(f.file, f.line);
    case State::Done:
      return "exited";
    case State::Failed:
      return "failed";
  }
  return "?";
}

// Releases the warp collectives that every lane of their mask has reached. Returns
// whether any was released; sets g_error on a collective a GPU could not complete.
bool release_warps(std::size_t nthreads, const uint3& block) {
  bool progress = false;
  for (std::size_t w0 = 0; w0 < nthreads; w0 += 32) {
    const std::size_t lanes = std::min<std::size_t>(32, nthreads - w0);
    Fiber* first = nullptr;
    for (std::size_t l = 0; l < lanes; ++l) {
      if (g_fibers[w0 + l].state == State::AtWarp) {
        first = &g_fibers[w0 + l];
        break;
      }
    }
    if (first == nullptr) continue;
    const unsigned mask = first->mask;
    const std::string at = where(block, first->idx) + " at " + site(first->file, first->line);
    const unsigned existing = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    if (mask & ~existing) {
      g_error = "warp collective mask 0x" + [&] { std::ostringstream o; o << std::hex << mask; return o.str(); }() +
                " names lanes that do not exist (the warp has " + std::to_string(lanes) + " threads): " + at;
      return false;
    }
    bool ready = true;
    for (std::size_t l = 0; l < lanes; ++l) {
      Fiber& f = g_fibers[w0 + l];
      const bool named = (mask >> l) & 1u;
      if (f.state == State::AtWarp) {
        if (!named) {
          g_error = "lane " + std::to_string(l) + " calls a warp collective whose mask excludes it: " + at;
          return false;
        }
        if (f.op != first->op || f.mask != mask || f.line != first->line || f.width != first->width) {
          g_error = "lanes of one warp wait at different warp collectives: " + at + " and " +
                    where(block, f.idx) + " at " + site(f.file, f.line);
          return false;
        }
      } else if (named) {
        if (f.state == State::Done) {
          g_error = "lane " + std::to_string(l) + " (" + where(block, f.idx) +
                    ") exited but the warp collective's mask names it: " + at;
          return false;
        }
        ready = false;  // still running elsewhere, or at a block barrier (a deadlock if it stays)
      }
    }
    if (!ready) continue;
    const int width = first->width;
    if (width <= 0 || width > 32 || (width & (width - 1))) {
      g_error = "warp shuffle width " + std::to_string(width) + " is not a power of two <= 32: " + at;
      return false;
    }
    unsigned votes = 0;
    for (std::size_t l = 0; l < lanes; ++l)
      if (((mask >> l) & 1u) && g_fibers[w0 + l].value) votes |= 1u << l;
    for (std::size_t l = 0; l < lanes; ++l) {
      if (!((mask >> l) & 1u)) continue;
      Fiber& f = g_fibers[w0 + l];
      const int lane = static_cast<int>(l);
      const int seg = lane & ~(width - 1);
      int src = lane;
      switch (f.op) {
        case WarpOp::Shfl:
          src = seg + (f.arg & (width - 1));
          break;
        case WarpOp::ShflUp:
          src = (lane - seg) >= f.arg ? lane - f.arg : lane;
          break;
        case WarpOp::ShflDown:
          src = (lane - seg) + f.arg < width ? lane + f.arg : lane;
          break;
        case WarpOp::ShflXor:
          src = lane ^ f.arg;
          if ((src & ~(width - 1)) > seg) src = lane;
          break;
        default:
          break;
      }
      switch (f.op) {
        case WarpOp::Ballot:
          f.result = votes;
          break;
        case WarpOp::Any:
          f.result = votes != 0;
          break;
        case WarpOp::All:
          f.result = votes == mask;
          break;
        case WarpOp::Sync:
          f.result = 0;
          break;
        default:
          if (src < 0 || src >= static_cast<int>(lanes) || !((mask >> src) & 1u)) {
            g_error = "warp shuffle by lane " + std::to_string(lane) + " reads lane " + std::to_string(src) +
                      ", which is not in its mask (undefined on a GPU): " + at;
            return false;
          }
          f.result = g_fibers[w0 + src].value;
      }
    }
    for (std::size_t l = 0; l < lanes; ++l)
      if ((mask >> l) & 1u) g_fibers[w0 + l].state = State::Runnable;
    ++g_stats.warp_collectives;
    progress = true;
  }
  return progress;
}

// Runs one block to completion; returns false with g_error set on a failure.
bool run_block(std::size_t nthreads, const dim3& block, std::vector<std::uint32_t>& order, std::uint64_t salt) {
  const uint3 b = g_block_idx;
  for (std::size_t t = 0; t < nthreads; ++t) {
    Fiber& f = g_fibers[t];
    prepare_fiber(f);
    f.state = State::Runnable;
    f.linear = static_cast<unsigned>(t);
    f.idx = uint3{static_cast<unsigned>(t % block.x), static_cast<unsigned>((t / block.x) % block.y),
                  static_cast<unsigned>(t / (static_cast<std::size_t>(block.x) * block.y))};
  }
  for (std::uint64_t round = 0;; ++round) {
    schedule_order(order, nthreads, salt ^ (round * 0x9E3779B97F4A7C15ull));
    for (std::uint32_t t : order) {
      if (g_fibers[t].state != State::Runnable) continue;
      switch_into(g_fibers[t]);
      if (!g_error.empty()) return false;
    }
    std::size_t live = 0, at_barrier = 0;
    const Fiber* barrier = nullptr;
    const Fiber* exited = nullptr;
    for (std::size_t t = 0; t < nthreads; ++t) {
      const Fiber& f = g_fibers[t];
      if (f.state == State::Done) {
        exited = exited ? exited : &f;
        continue;
      }
      ++live;
      if (f.state == State::AtBarrier) {
        ++at_barrier;
        if (barrier == nullptr) {
          barrier = &f;
        } else if (f.line != barrier->line || std::strcmp(f.file, barrier->file) != 0) {
          g_error = "divergent __syncthreads(): " + where(b, barrier->idx) + " waits at " +
                    site(barrier->file, barrier->line) + " but " + where(b, f.idx) + " waits at " +
                    site(f.file, f.line);
          return false;
        }
      }
    }
    if (live == 0) return true;
    if (release_warps(nthreads, b)) continue;
    if (!g_error.empty()) return false;
    if (at_barrier == live) {
      if (exited != nullptr) {
        g_error = "__syncthreads() not reached by every thread of the block: " + where(b, exited->idx) +
                  " exited while " + where(b, barrier->idx) + " waits at " + site(barrier->file, barrier->line) +
                  " (an early return or a divergent branch before a barrier)";
        return false;
      }
      for (std::size_t t = 0; t < nthreads; ++t) g_fibers[t].state = State::Runnable;
      ++g_stats.barriers;
      continue;
    }
    std::ostringstream os;
    os << "deadlock in " << where(b, uint3{0, 0, 0}).substr(0, where(b, uint3{0, 0, 0}).find(" thread"))
       << ": no barrier or warp collective can complete;";
    int shown = 0;
    for (std::size_t t = 0; t < nthreads && shown < 4; ++t) {
      if (g_fibers[t].state == State::Done) continue;
      os << " thread " << t << " " << state_name(g_fibers[t]) << ";";
      ++shown;
    }
    g_error = os.str();
    return false;
  }
}

}  // namespace

// ---- the kernel-side API ----------------------------------------------------------------

void kernel_entry(int max_threads, const char* kernel, const char* file, int line) {
  const long threads = static_cast<long>(g_block_dim.x) * g_block_dim.y * g_block_dim.z;
  if (max_threads > 0 && threads > max_threads) {
    fail_in_fiber(std::string("kernel ") + kernel + " (" + site(file, line) + ") launched with " +
                  std::to_string(threads) + " threads per block, over its __launch_bounds__(" +
                  std::to_string(max_threads) + "): a GPU refuses this launch");
  }
}

void syncthreads(const char* file, int line) {
  Fiber* f = g_current;
  if (f == nullptr) throw std::runtime_error("__syncthreads() called outside a kernel");
  f->state = State::AtBarrier;
  f->file = file;
  f->line = line;
  switch_out(false);
}

std::uint64_t warp_collective(WarpOp op, unsigned mask, std::uint64_t value, int arg, int width, const char* file,
                              int line) {
  Fiber* f = g_current;
  if (f == nullptr) throw std::runtime_error("a warp collective was called outside a kernel");
  f->state = State::AtWarp;
  f->op = op;
  f->mask = mask;
  f->value = value;
  f->arg = arg;
  f->width = width;
  f->file = file;
  f->line = line;
  switch_out(false);
  return f->result;
}

unsigned active_mask() {
  Fiber* f = g_current;
  if (f == nullptr) return 0;
  const std::size_t w0 = f->linear & ~31u;
  const std::size_t n = static_cast<std::size_t>(g_block_dim.x) * g_block_dim.y * g_block_dim.z;
  unsigned m = 0;
  for (std::size_t l = 0; l < 32 && w0 + l < n; ++l)
    if (g_fibers[w0 + l].state != State::Done) m |= 1u << l;
  return m;
}

void* block_shared(const char* file, int line, std::size_t bytes, std::size_t align) {
  for (auto& v : g_shared) {
    if (v.line == line && std::strcmp(v.file, file) == 0) {
      if (v.bytes != bytes) fail_in_fiber("__shared__ variable at " + site(file, line) + " changed size");
      return v.ptr;
    }
  }
  g_shared_bytes += bytes;
  if (g_shared_bytes + g_dynamic_smem > kSharedLimit) {
    fail_in_fiber("kernel " + std::string(g_kernel) + " uses " + std::to_string(g_shared_bytes + g_dynamic_smem) +
                  " bytes of shared memory, over the " + std::to_string(kSharedLimit) + "-byte limit");
  }
  void* p = nullptr;
  // Exact size, so ASan flags an access one past the end of the array.
  if (posix_memalign(&p, std::max<std::size_t>(align, 16), bytes == 0 ? 1 : bytes) != 0)
    fail_in_fiber("out of memory for __shared__");
  std::memset(p, 0xff, bytes);
  g_shared.push_back(SharedVar{file, line, bytes, p});
  return p;
}

void device_assert_fail(const char* cond, const char* file, int line, const char* func) {
  fail_in_fiber(std::string("device-side assert triggered (emulated): `") + cond + "` failed in " + func + " at " +
                site(file, line) + ", " + where(g_block_idx, g_thread_idx));
}

void device_error(const char* what) { fail_in_fiber(std::string(what) + " at " + where(g_block_idx, g_thread_idx)); }

// ---- launches ---------------------------------------------------------------------------

void run_launch(const char* name, dim3 grid, dim3 block, std::size_t dynamic_smem, KernelCall call) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_unchecked.empty()) {
    const std::string prev = g_unchecked;
    g_unchecked.clear();
    throw std::runtime_error("grl_emu: " + std::string(name) + " launched after " + prev +
                             " was launched without a launch check (C10_CUDA_KERNEL_LAUNCH_CHECK)");
  }
  g_unchecked = name;
  g_log.push_back(LaunchRecord{name, static_cast<std::int64_t>(grid.x) * grid.y * grid.z,
                               static_cast<std::int64_t>(block.x) * block.y * block.z,
                               static_cast<std::int64_t>(dynamic_smem)});
  ++g_stats.launches;
  const std::uint64_t threads = static_cast<std::uint64_t>(block.x) * block.y * block.z;
  std::string bad;
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    bad = "a grid or block dimension is 0";
  } else if (block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024) {
    bad = "block (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," + std::to_string(block.z) +
          ") is over 1024 threads or the per-dimension limits (1024, 1024, 64)";
  } else if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    bad = "grid dimensions over (2^31-1, 65535, 65535)";
  } else if (dynamic_smem > kSharedLimit) {
    bad = std::to_string(dynamic_smem) + " bytes of dynamic shared memory, over the limit";
  }
  if (!bad.empty()) {
    g_last_error = cudaErrorInvalidConfiguration;
    g_last_error_detail = std::string(name) + ": " + bad;
    return;  // as on a device: nothing runs, the launch check reports it
  }
  dim3 run_grid = grid;
  if (g_grid_cap > 0 && run_grid.x > g_grid_cap) run_grid.x = static_cast<unsigned>(g_grid_cap);

  if (g_fibers.size() < threads) g_fibers.resize(threads);
  g_call = call;
  g_kernel = name;
  g_error.clear();
  g_dynamic_smem = dynamic_smem;
  g_grid_dim = run_grid;
  g_block_dim = block;
  const std::uint64_t launch_salt = ++g_launch_counter * 0xD6E8FEB86659FD93ull;
  const std::size_t nblocks = static_cast<std::size_t>(run_grid.x) * run_grid.y * run_grid.z;
  std::vector<std::uint32_t> block_order, thread_order;
  schedule_order(block_order, nblocks, launch_salt);
  bool ok = true;
  for (std::uint32_t lb : block_order) {
    g_block_idx = uint3{lb % run_grid.x, (lb / run_grid.x) % run_grid.y,
                        static_cast<unsigned>(lb / (static_cast<std::size_t>(run_grid.x) * run_grid.y))};
    ok = run_block(threads, block, thread_order, launch_salt ^ (static_cast<std::uint64_t>(lb) << 20));
    free_shared();
    ++g_stats.blocks;
    g_stats.threads += threads;
    if (!ok) break;
  }
  if (!ok) {
    for (std::size_t t = 0; t < threads; ++t)
      if (g_fibers[t].state != State::Done) g_fibers[t].dirty = true;
    g_unchecked.clear();
    std::string message = "grl_emu: kernel " + std::string(name) + ": " + g_error;
    g_error.clear();
    throw std::runtime_error(message);
  }
}

cudaError_t get_last_error(bool clear) {
  const cudaError_t err = g_last_error;
  if (clear) {
    g_last_error = cudaSuccess;
    g_unchecked.clear();
  }
  return err;
}

const char* error_string(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    default:
      return "unspecified launch failure";
  }
}

void launch_check(const char* file, int line) {
  g_unchecked.clear();
  if (g_last_error != cudaSuccess) {
    const cudaError_t err = g_last_error;
    g_last_error = cudaSuccess;
    TORCH_CHECK(false, "CUDA error (emulated): ", error_string(err), " (", g_last_error_detail, "), checked at ",
                site(file, line));
  }
}

// ---- control ----------------------------------------------------------------------------

void set_schedule(const std::string& kind, std::uint64_t seed) {
  if (kind == "forward") {
    g_schedule = Schedule::Forward;
  } else if (kind == "reverse") {
    g_schedule = Schedule::Reverse;
  } else if (kind == "shuffle") {
    g_schedule = Schedule::Shuffle;
  } else {
    throw std::invalid_argument("schedule must be forward, reverse or shuffle, got " + kind);
  }
  g_seed = seed;
}

std::string schedule() {
  switch (g_schedule) {
    case Schedule::Forward:
      return "forward";
    case Schedule::Reverse:
      return "reverse";
    case Schedule::Shuffle:
      return "shuffle:" + std::to_string(g_seed);
  }
  return "?";
}

void set_grid_cap(std::int64_t cap) { g_grid_cap = cap; }

std::vector<LaunchRecord> take_launch_log() {
  std::vector<LaunchRecord> out;
  out.swap(g_log);
  return out;
}

Stats stats() { return g_stats; }

void begin_host_call() {
  g_unchecked.clear();
  g_last_error = cudaSuccess;
}

void end_host_call() {
  if (!g_unchecked.empty()) {
    const std::string prev = g_unchecked;
    g_unchecked.clear();
    throw std::runtime_error("grl_emu: " + prev + " was launched without a launch check (C10_CUDA_KERNEL_LAUNCH_CHECK)");
  }
  if (g_last_error != cudaSuccess) {
    g_last_error = cudaSuccess;
    throw std::runtime_error("grl_emu: a launch failed and nothing checked it: " + g_last_error_detail);
  }
}

}  // namespace grl_emu
