// The reversal's loop, out[i] = in[i] * nl with nl = -lambda, written with AVX2
// intrinsics for float, float16 and bfloat16 (16-bit values are widened to float in
// registers, multiplied once, rounded to nearest even: the float path's one rounding,
// and bitwise what ATen's own vectorised mul gives). Plain loops leave this to the
// compiler's alias check, which sends the in-place case (out == in, the stolen
// gradient) to its scalar fallback. kernels_cpu.cpp calls these only on CPUs with
// AVX2, FMA and F16C.
#if defined(__x86_64__) && defined(__GNUC__)
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

namespace grl_cuda {

namespace {

// float -> bfloat16, round to nearest even, NaN -> the quiet NaN 0x7fc0 (as c10's scalar cast).
inline __m256i bf16_round(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), _mm256_castps_si256(nan));
}

inline __m256 bf16_widen(const void* p) {
  const __m128i h = _mm_loadu_si128(static_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

}  // namespace

void neg_scale_span_avx2(const float* in, float* out, int64_t n, float nl) {
  const __m256 s = _mm256_set1_ps(nl);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256 a = _mm256_loadu_ps(in + i), b = _mm256_loadu_ps(in + i + 8);
    const __m256 c = _mm256_loadu_ps(in + i + 16), d = _mm256_loadu_ps(in + i + 24);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(a, s));
    _mm256_storeu_ps(out + i + 8, _mm256_mul_ps(b, s));
    _mm256_storeu_ps(out + i + 16, _mm256_mul_ps(c, s));
    _mm256_storeu_ps(out + i + 24, _mm256_mul_ps(d, s));
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(in + i), s));
  for (; i < n; ++i) out[i] = in[i] * nl;
}

void neg_scale_span_avx2(const c10::Half* in, c10::Half* out, int64_t n, float nl) {
  const __m256 s = _mm256_set1_ps(nl);
  const auto* src = reinterpret_cast<const uint16_t*>(in);
  auto* dst = reinterpret_cast<uint16_t*>(out);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 a = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    const __m256 b = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 8)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(_mm256_mul_ps(a, s), _MM_FROUND_TO_NEAREST_INT));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i + 8),
                     _mm256_cvtps_ph(_mm256_mul_ps(b, s), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) out[i] = static_cast<c10::Half>(static_cast<float>(in[i]) * nl);
}

void neg_scale_span_avx2(const c10::BFloat16* in, c10::BFloat16* out, int64_t n, float nl) {
  const __m256 s = _mm256_set1_ps(nl);
  const auto* src = reinterpret_cast<const uint16_t*>(in);
  auto* dst = reinterpret_cast<uint16_t*>(out);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i a = bf16_round(_mm256_mul_ps(bf16_widen(src + i), s));
    const __m256i b = bf16_round(_mm256_mul_ps(bf16_widen(src + i + 8), s));
    // packus works within 128-bit halves: [a0-3 b0-3 | a4-7 b4-7] -> reorder the quarters
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), packed);
  }
  for (; i < n; ++i) out[i] = static_cast<c10::BFloat16>(static_cast<float>(in[i]) * nl);
}

}  // namespace grl_cuda
#endif
