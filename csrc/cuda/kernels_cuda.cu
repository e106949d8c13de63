// CUDA loops. Elementwise kernels move 16 bytes per thread per iteration
// (128-bit loads and stores) when both pointers are 16-byte aligned, with a
// scalar loop for the tail and for misaligned tensors; grid-stride, 64-bit
// indices, the current stream, a device guard and a launch check each time.
// The math comes from grl_math.h, shared with the CPU loops.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

#include "../grl_math.h"
#include "../kernels.h"

namespace grl_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;
// block_sum's tree halves the block down to one slot and indexes shared arrays sized
// kThreads: every block-reducing kernel must run exactly kThreads threads, a power of two.
static_assert(kThreads >= 32 && kThreads <= 1024 && (kThreads & (kThreads - 1)) == 0,
              "block_sum needs a power-of-two block of at most 1024 threads");
// Fixed block count for reductions: a function of n only (never of the device),
// so the partition and therefore the sum are bitwise reproducible.
constexpr int kReduceBlocks = 512;

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T val[N];
};

// lambda = host factor times the device value when a pointer is given (read on
// the device: no host sync, and CUDA graphs replay the current value).
template <typename opmath_t>
__device__ __forceinline__ opmath_t load_lambda(const opmath_t* device_lambda, opmath_t host_lambda) {
  return device_lambda != nullptr ? *device_lambda * host_lambda : host_lambda;
}

// in and out carry no __restrict__ here or below: neg_scale_ runs in place (in == out).
template <typename scalar_t, typename Op>
__global__ void __launch_bounds__(kThreads)
    elementwise_vec_kernel(const scalar_t* in, scalar_t* out, int64_t n, Op op) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  using VecT = Vec<scalar_t, kVec>;
  const int64_t n_vec = n / kVec;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const auto scale = op.prepare();
  for (int64_t v = tid; v < n_vec; v += stride) {
    VecT chunk = reinterpret_cast<const VecT*>(in)[v];
#pragma unroll
    for (int k = 0; k < kVec; ++k) chunk.val[k] = op(chunk.val[k], scale);
    reinterpret_cast<VecT*>(out)[v] = chunk;
  }
  for (int64_t i = n_vec * kVec + tid; i < n; i += stride) out[i] = op(in[i], scale);
}

// Generic fallback for pointers that are not 16-byte aligned (e.g. a storage offset).
template <typename scalar_t, typename Op>
__global__ void __launch_bounds__(kThreads)
    elementwise_scalar_kernel(const scalar_t* in, scalar_t* out, int64_t n, Op op) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const auto scale = op.prepare();
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = op(in[i], scale);
  }
}

template <typename scalar_t>
struct NegScaleOp {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t* device_lambda;
  opmath_t host_lambda;
  __device__ __forceinline__ opmath_t prepare() const { return load_lambda(device_lambda, host_lambda); }
  __device__ __forceinline__ scalar_t operator()(scalar_t x, opmath_t lambda) const {
    return static_cast<scalar_t>(math::reverse<opmath_t>(static_cast<opmath_t>(x), lambda));
  }
};

template <typename scalar_t>
struct CopyOp {
  __device__ __forceinline__ int prepare() const { return 0; }
  __device__ __forceinline__ scalar_t operator()(scalar_t x, int) const { return x; }
};

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename scalar_t, typename Op>
void launch_elementwise(const at::Tensor& src, const at::Tensor& dst, Op op) {
  const int64_t n = src.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(src.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const scalar_t* in = src.const_data_ptr<scalar_t>();
  scalar_t* out = dst.mutable_data_ptr<scalar_t>();
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool vectorised = aligned16(in) && aligned16(out);
  const int64_t work = vectorised ? (n + kVec - 1) / kVec : n;
  const int64_t blocks = std::min(kMaxBlocks, (work + kThreads - 1) / kThreads);
  if (vectorised) {
    elementwise_vec_kernel<scalar_t, Op><<<blocks, kThreads, 0, stream>>>(in, out, n, op);
  } else {
    elementwise_scalar_kernel<scalar_t, Op><<<blocks, kThreads, 0, stream>>>(in, out, n, op);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Sums each thread's (loss, hits) over the block with a fixed-shape tree in shared
// memory (deterministic, no atomics); the totals are valid in thread 0. Every
// block-reducing kernel is launched with kThreads threads.
__device__ __forceinline__ void block_sum(double& loss_sum, unsigned long long& hits) {
  __shared__ double loss_shared[kThreads];
  __shared__ unsigned long long hit_shared[kThreads];
  loss_shared[threadIdx.x] = loss_sum;
  hit_shared[threadIdx.x] = hits;
  __syncthreads();
  for (int offset = kThreads / 2; offset > 0; offset /= 2) {
    if (threadIdx.x < offset) {
      loss_shared[threadIdx.x] += loss_shared[threadIdx.x + offset];
      hit_shared[threadIdx.x] += hit_shared[threadIdx.x + offset];
    }
    __syncthreads();
  }
  loss_sum = loss_shared[0];
  hits = hit_shared[0];
}

// Stage 1's ending: the block's (loss, hits) partials, one slot per block.
__device__ __forceinline__ void store_block_partials(double loss_sum, unsigned long long hits,
                                                     double* __restrict__ loss_partial,
                                                     unsigned long long* __restrict__ hit_partial) {
  block_sum(loss_sum, hits);
  if (threadIdx.x == 0) {
    loss_partial[blockIdx.x] = loss_sum;
    hit_partial[blockIdx.x] = hits;
  }
}

// ---- domain BCE: stage 1, per-block partials -------------------------------------------------

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) domain_bce_partials_kernel(
    const scalar_t* __restrict__ logits, scalar_t* __restrict__ grad, scalar_t* __restrict__ loss_elems,
    int64_t n, int64_t first_target, at::opmath_type<scalar_t> w_src, at::opmath_type<scalar_t> w_tgt,
    double* __restrict__ loss_partial, unsigned long long* __restrict__ hit_partial) {
  using opmath_t = at::opmath_type<scalar_t>;
  double loss_sum = 0.0;
  unsigned long long hits = 0;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const bool is_target = i >= first_target;
    const opmath_t z = static_cast<opmath_t>(logits[i]);
    const opmath_t y = is_target ? opmath_t(1) : opmath_t(0);
    const opmath_t w = is_target ? w_tgt : w_src;
    opmath_t l, g;
    math::bce_with_logits(z, y, l, g);
    const opmath_t loss = w * l;
    grad[i] = static_cast<scalar_t>(w * g);
    if (loss_elems != nullptr) loss_elems[i] = static_cast<scalar_t>(loss);
    loss_sum += static_cast<double>(loss);
    hits += math::bce_hit(z, is_target) ? 1ull : 0ull;
  }
  store_block_partials(loss_sum, hits, loss_partial, hit_partial);
}

// ---- K-way loss, stage 1: one thread per row, per-block partials ------------------------------

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) domain_cross_entropy_partials_kernel(
    const scalar_t* __restrict__ logits, const int64_t* __restrict__ ids, scalar_t* __restrict__ grad,
    scalar_t* __restrict__ loss_elems, int64_t rows, int64_t k, double* __restrict__ loss_partial,
    unsigned long long* __restrict__ hit_partial) {
  using opmath_t = at::opmath_type<scalar_t>;
  double loss_sum = 0.0;
  unsigned long long hits = 0;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  bool id_in_range = true;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += stride) {
    id_in_range &= ids[r] >= 0 && ids[r] < k;
    opmath_t row_loss;
    hits += math::softmax_cross_entropy_row<scalar_t, opmath_t>(logits + r * k, k, 1, ids[r], grad + r * k, row_loss) ? 1ull : 0ull;
    if (loss_elems != nullptr) loss_elems[r] = static_cast<scalar_t>(row_loss);
    loss_sum += static_cast<double>(row_loss);
  }
  // The op layer checks the ids on the host when it can; a bad id that reaches the
  // device stops the kernel instead of yielding a NaN loss. (Asserted once, after the
  // loop: a call inside it costs the double kernel spills and a stack frame.)
  CUDA_KERNEL_ASSERT(id_in_range && "a domain id outside [0, K)");
  store_block_partials(loss_sum, hits, loss_partial, hit_partial);
}

// ---- stage 2: one block adds the partials in a fixed order -------------------------------------

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) reduce_final_kernel(
    const double* __restrict__ loss_partial, const unsigned long long* __restrict__ hit_partial, int num_partials,
    double loss_scale, double inv_n, scalar_t* __restrict__ loss_out, float* __restrict__ accuracy_out) {
  double loss_sum = 0.0;
  unsigned long long hits = 0;
  for (int i = threadIdx.x; i < num_partials; i += blockDim.x) {
    loss_sum += loss_partial[i];
    hits += hit_partial[i];
  }
  block_sum(loss_sum, hits);
  if (threadIdx.x == 0) {
    if (loss_out != nullptr) loss_out[0] = static_cast<scalar_t>(loss_sum * loss_scale);
    if (accuracy_out != nullptr) accuracy_out[0] = static_cast<float>(static_cast<double>(hits) * inv_n);
  }
}

}  // namespace

void neg_scale_kernel_cuda(const at::Tensor& src, const Lambda& lambda, const at::Tensor& dst) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "neg_scale_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const opmath_t* device_lambda = nullptr;
    at::Tensor lambda_snapshot;
    if (lambda.device.defined()) {
      TORCH_INTERNAL_ASSERT(lambda.device.scalar_type() == c10::CppTypeToScalarType<opmath_t>::value,
                            "the op layer converts lambda to the op math type");
      // Every thread reads lambda at its start; a lambda inside the output (e.g.
      // x.neg_scale_(x[k])) would be overwritten by one thread while others still read
      // it. Read a copy made on the stream before the launch (no host sync).
      lambda_snapshot = lambda.device.is_alias_of(dst) ? lambda.device.clone() : lambda.device;
      device_lambda = lambda_snapshot.const_data_ptr<opmath_t>();
    }
    launch_elementwise<scalar_t>(src, dst, NegScaleOp<scalar_t>{device_lambda, static_cast<opmath_t>(lambda.host)});
  });
}

void copy_kernel_cuda(const at::Tensor& src, const at::Tensor& dst) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "copy_cuda", [&] {
    launch_elementwise<scalar_t>(src, dst, CopyOp<scalar_t>{});
  });
}

void domain_bce_kernel_cuda(const at::Tensor& logits, const DomainBceArgs& args, const at::Tensor& grad,
                            const at::Tensor& loss_elems, const at::Tensor& loss, const at::Tensor& accuracy) {
  const c10::cuda::CUDAGuard guard(logits.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = logits.numel();
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kReduceBlocks, (n + kThreads - 1) / kThreads)));
  // One scratch buffer: [loss partials (double) | hit partials (uint64)].
  at::Tensor scratch = at::empty({2 * blocks}, logits.options().dtype(at::kDouble));
  double* loss_partial = scratch.mutable_data_ptr<double>();
  auto* hit_partial = reinterpret_cast<unsigned long long*>(loss_partial + blocks);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "domain_bce_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    domain_bce_partials_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>(),
        loss_elems.defined() ? loss_elems.mutable_data_ptr<scalar_t>() : nullptr, n,
        args.num_source * args.inner, static_cast<opmath_t>(args.weight_source),
        static_cast<opmath_t>(args.weight_target), loss_partial, hit_partial);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    reduce_final_kernel<scalar_t><<<1, kThreads, 0, stream>>>(
        loss_partial, hit_partial, blocks, args.loss_scale, 1.0 / static_cast<double>(n),
        loss.defined() ? loss.mutable_data_ptr<scalar_t>() : nullptr,
        accuracy.defined() ? accuracy.mutable_data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void domain_cross_entropy_kernel_cuda(const at::Tensor& logits, const at::Tensor& domains, double loss_scale,
                             const at::Tensor& grad, const at::Tensor& loss_elems, const at::Tensor& loss,
                             const at::Tensor& accuracy) {
  const c10::cuda::CUDAGuard guard(logits.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t rows = logits.size(0);
  const int64_t k = logits.size(1);
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kReduceBlocks, (rows + kThreads - 1) / kThreads)));
  at::Tensor scratch = at::empty({2 * blocks}, logits.options().dtype(at::kDouble));
  double* loss_partial = scratch.mutable_data_ptr<double>();
  auto* hit_partial = reinterpret_cast<unsigned long long*>(loss_partial + blocks);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "domain_cross_entropy_cuda", [&] {
    domain_cross_entropy_partials_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), domains.const_data_ptr<int64_t>(), grad.mutable_data_ptr<scalar_t>(),
        loss_elems.defined() ? loss_elems.mutable_data_ptr<scalar_t>() : nullptr, rows, k, loss_partial, hit_partial);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    reduce_final_kernel<scalar_t><<<1, kThreads, 0, stream>>>(
        loss_partial, hit_partial, blocks, loss_scale, 1.0 / static_cast<double>(rows),
        loss.defined() ? loss.mutable_data_ptr<scalar_t>() : nullptr,
        accuracy.defined() ? accuracy.mutable_data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace grl_cuda
