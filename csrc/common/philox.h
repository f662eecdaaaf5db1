// Philox4x32-10 noise shared by the C++ CPU and CUDA kernels (see achilles_fast/ops/reference.py for the spec).
//
//   idx     = ((k_start + k) * T + t) * H + h          (64-bit global element index)
//   counter = (lo32(idx), hi32(idx), 0, 0), key = (lo32(seed), hi32(seed))
//   r0, r1  = philox4x32_10(counter, key)[0:2]
//   noise   = sqrt(-2 ln max(u(r0), 1e-7)) * cos(2 pi u(r1)),  u(x) = (int32(x) < 0 ? ~int32(x) : int32(x)) * 2^-31
//
// Same construction as triton.language.randn, extended to 64-bit indices. Integer outputs are bit-exact on every
// backend; the normal values agree to ~1 ulp of the libm/libdevice log and cos.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define AF_HD __host__ __device__ __forceinline__
#else
#define AF_HD inline
#endif

namespace achilles_fast {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr float kUniformScale = 4.6566127342e-10f;
constexpr float kTwoPi = 6.283185307179586f;
constexpr float kMinUniform = 1e-7f;

AF_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Philox4x32 with 10 rounds on counter (c0, c1, 0, 0); returns the first two output words.
AF_HD void philox_2x(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1, uint32_t& r0, uint32_t& r1) {
  uint32_t c2 = 0, c3 = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int i = 0; i < 10; ++i) {
    const uint32_t p0 = c0, p2 = c2;
    c0 = mulhi32(kPhiloxRoundB, p2) ^ c1 ^ k0;
    c2 = mulhi32(kPhiloxRoundA, p0) ^ c3 ^ k1;
    c1 = kPhiloxRoundB * p2;
    c3 = kPhiloxRoundA * p0;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  r0 = c0;
  r1 = c1;
}

AF_HD float uint_to_uniform(uint32_t x) {
  int32_t i = static_cast<int32_t>(x);
  i = i < 0 ? ~i : i;  // == -i - 1 without overflow at INT32_MIN
  return static_cast<float>(i) * kUniformScale;
}

// One standard normal for global element index idx.
AF_HD float philox_normal(uint64_t idx, uint32_t k0, uint32_t k1) {
  uint32_t r0, r1;
  philox_2x(static_cast<uint32_t>(idx), static_cast<uint32_t>(idx >> 32), k0, k1, r0, r1);
  float u0 = uint_to_uniform(r0);
  u0 = u0 < kMinUniform ? kMinUniform : u0;
  const float u1 = uint_to_uniform(r1);
#if defined(__CUDA_ARCH__)
  // precise (non-intrinsic) logf/cosf; products rounded separately, as in the reference
  return __fmul_rn(sqrtf(__fmul_rn(-2.0f, logf(u0))), cosf(__fmul_rn(kTwoPi, u1)));
#else
  return std::sqrt(-2.0f * std::log(u0)) * std::cos(kTwoPi * u1);
#endif
}

}  // namespace achilles_fast
