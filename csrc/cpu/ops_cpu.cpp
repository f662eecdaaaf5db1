// C++ CPU kernels of the achilles_fast:: ops (schema and reference of each: achilles_fast/ops/<op>.py).
//
// Loops are written so GCC/Clang auto-vectorise them; on x86-64 the hot loops are additionally compiled for
// AVX-512 / AVX2 and picked at load time (target_clones), so a portable build still runs wide vectors.
// Threading: at::parallel_for (OpenMP) over channel blocks / rows.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "../common/channel_geometry.h"
#include "../common/checks.h"
#include "../common/philox.h"
#include "../common/token_nll.h"

#if defined(_MSC_VER) && !defined(__restrict__)
#define __restrict__ __restrict
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(ACHILLES_FAST_NO_CLONES)
#define AF_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AF_CLONES
#endif

namespace achilles_fast {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// absdiff: buf[j] += sum_k |x[k * stride + j] - clean[j]|,  j < len.  One variant per storage type.
// ---------------------------------------------------------------------------------------------------------------
AF_CLONES void absdiff_rows_f32(const float* __restrict__ x, int64_t stride, int64_t K, const float* __restrict__ clean, float* __restrict__ buf,
                                int64_t len) {
  for (int64_t k = 0; k < K; ++k) {
    const float* xk = x + k * stride;
    for (int64_t j = 0; j < len; ++j) buf[j] += std::fabs(xk[j] - clean[j]);
  }
}

static inline float bf16_bits_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

AF_CLONES void absdiff_rows_bf16(const uint16_t* __restrict__ x, int64_t stride, int64_t K, const float* __restrict__ clean, float* __restrict__ buf,
                                 int64_t len) {
  for (int64_t k = 0; k < K; ++k) {
    const uint16_t* xk = x + k * stride;
    for (int64_t j = 0; j < len; ++j) buf[j] += std::fabs(bf16_bits_to_float(xk[j]) - clean[j]);
  }
}

template <typename T>
void absdiff_rows_generic(const T* x, int64_t stride, int64_t K, const float* clean, float* buf, int64_t len) {
  for (int64_t k = 0; k < K; ++k) {
    const T* xk = x + k * stride;
    for (int64_t j = 0; j < len; ++j) buf[j] += std::fabs(static_cast<float>(xk[j]) - clean[j]);
  }
}

template <typename T>
inline void absdiff_rows(const T* x, int64_t stride, int64_t K, const float* clean, float* buf, int64_t len) {
  if constexpr (std::is_same_v<T, float>) {
    absdiff_rows_f32(x, stride, K, clean, buf, len);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    absdiff_rows_bf16(reinterpret_cast<const uint16_t*>(x), stride, K, clean, buf, len);
  } else {
    absdiff_rows_generic(x, stride, K, clean, buf, len);
  }
}

void absdiff_accum_cpu(at::Tensor& acc, const at::Tensor& clean, const at::Tensor& noisy) {
  const bool per_pos = check_absdiff(acc, clean, noisy);
  const int64_t K = noisy.size(0), T = clean.size(0), C = clean.size(1), TC = T * C;
  if (K == 0 || T == 0 || C == 0) return;
  // per position: accumulate straight into acc; reduced: into a [T, C] buffer, then sum over positions
  // (sum over k, then over t: the reference's order).
  at::Tensor out = per_pos ? (acc.is_contiguous() ? acc : acc.contiguous())
                           : at::zeros({T, C}, acc.options());
  const at::Tensor x = noisy.contiguous();
  const at::Tensor cf = clean.to(at::kFloat).contiguous();
  float* a = out.data_ptr<float>();
  const float* cp = cf.data_ptr<float>();
  // Each task owns a contiguous slice of the T*C (position, channel) plane and streams through the K samples
  // slice by slice: long contiguous reads of `noisy`, the running sums stay in L1.
  constexpr int64_t kSlice = 4096;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "absdiff_accum_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, TC, kSlice, [&](int64_t b, int64_t e) {
      float buf[kSlice];
      for (int64_t s0 = b; s0 < e; s0 += kSlice) {
        const int64_t len = std::min(kSlice, e - s0);
        std::fill(buf, buf + len, 0.f);
        absdiff_rows(xp + s0, TC, K, cp + s0, buf, len);
        float* as = a + s0;
        for (int64_t j = 0; j < len; ++j) as[j] += buf[j];
      }
    });
  });
  if (!per_pos) {
    acc.add_(out.sum(0));
  } else if (!out.is_same(acc)) {
    acc.copy_(out);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// noisy_embeds: out[k, t, h] = embeds[t, h] + alpha * noise(idx = (k_start + k) * T * H + t * H + h)
// ---------------------------------------------------------------------------------------------------------------
// Integer part (Philox + uniform conversion) in a loop the compiler vectorises; log/cos in a second loop.
AF_CLONES void philox_uniforms(uint64_t idx0, int64_t n, uint32_t k0, uint32_t k1, float* u0, float* u1) {
  for (int64_t j = 0; j < n; ++j) {
    const uint64_t idx = idx0 + static_cast<uint64_t>(j);
    uint32_t r0, r1;
    philox_2x(static_cast<uint32_t>(idx), static_cast<uint32_t>(idx >> 32), k0, k1, r0, r1);
    const float a = uint_to_uniform(r0);
    u0[j] = a < kMinUniform ? kMinUniform : a;
    u1[j] = uint_to_uniform(r1);
  }
}

// The integer part (Philox words -> uniforms, the bulk of the work) runs in the vectorised loop above; the float
// part then applies the very ATen ops of reference.py, in the same order on tensors of the same shapes, so the
// noise and the noisy embeddings are bit-identical to the reference on CPU (not just within an ulp).
at::Tensor noisy_embeds_cpu(const at::Tensor& embeds, double alpha, int64_t seed, int64_t k_start, int64_t k_count) {
  check_noisy_embeds(embeds, k_start, k_count);
  const int64_t T = embeds.size(0), H = embeds.size(1), TH = T * H, n = k_count * TH;
  if (n == 0) return at::empty({k_count, T, H}, embeds.options());
  const uint64_t s = static_cast<uint64_t>(seed);
  const uint32_t key0 = static_cast<uint32_t>(s), key1 = static_cast<uint32_t>(s >> 32);
  const uint64_t base = static_cast<uint64_t>(k_start) * static_cast<uint64_t>(TH);
  auto f32 = embeds.options().dtype(at::kFloat);
  at::Tensor u0 = at::empty({n}, f32), u1 = at::empty({n}, f32);
  float* p0 = u0.data_ptr<float>();
  float* p1 = u1.data_ptr<float>();
  at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
    philox_uniforms(base + static_cast<uint64_t>(b), e - b, key0, key1, p0 + b, p1 + b);  // u0 clamped to 1e-7
  });
  // reference: torch.sqrt(-2.0 * torch.log(u0)) * torch.cos(TWO_PI * u1)
  const at::Tensor noise = at::mul(at::sqrt(at::mul(at::log(u0), -2.0)), at::cos(at::mul(u1, 6.283185307179586)));
  // reference: (embeds.float().unsqueeze(0) + alpha * noise).to(embeds.dtype)
  return at::add(embeds.to(at::kFloat).unsqueeze(0), at::mul(noise.view({k_count, T, H}), alpha))
      .to(embeds.scalar_type());
}

// ---------------------------------------------------------------------------------------------------------------
// mask / restore: weight viewed as [outer, size(dim), inner]; copies whole channel slices (dtype-agnostic bytes).
// ---------------------------------------------------------------------------------------------------------------
at::Tensor mask_channels_cpu(at::Tensor& weight, const at::Tensor& channels, int64_t dim) {
  check_weight(weight, "mask_channels_");
  dim = c10::maybe_wrap_dim(dim, weight.dim());
  const at::Tensor ch = checked_channels(channels, weight.device(), weight.size(dim), "mask_channels_");
  if (!weight.is_contiguous()) {  // rare: keep the semantics with ATen ops
    at::Tensor saved = weight.index_select(dim, ch).clone();
    weight.index_fill_(dim, ch, 0);
    return saved;
  }
  at::Tensor saved = at::empty(saved_shape(weight, dim, ch.numel()), weight.options());
  if (saved.numel() == 0) return saved;
  const ChannelGeometry v = channel_geometry(weight, dim);
  const int64_t m = ch.numel(), es = weight.element_size(), row = v.inner * es;
  char* w = static_cast<char*>(weight.data_ptr());
  char* sv = static_cast<char*>(saved.data_ptr());
  const int64_t* c = ch.data_ptr<int64_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row));
  // gather everything first, then zero (duplicate channels keep their original values, as index_select does)
  at::parallel_for(0, v.outer * m, grain, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const int64_t o = p / m, i = p % m;
      std::memcpy(sv + (o * m + i) * row, w + (o * v.n + c[i]) * row, row);
    }
  });
  at::parallel_for(0, v.outer * m, grain, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const int64_t o = p / m, i = p % m;
      std::memset(w + (o * v.n + c[i]) * row, 0, row);
    }
  });
  return saved;
}

void restore_channels_cpu(at::Tensor& weight, const at::Tensor& channels, const at::Tensor& saved, int64_t dim) {
  check_weight(weight, "restore_channels_");
  dim = c10::maybe_wrap_dim(dim, weight.dim());
  const at::Tensor ch = checked_channels(channels, weight.device(), weight.size(dim), "restore_channels_");
  check_saved(weight, saved, ch, dim);
  if (!weight.is_contiguous()) {
    weight.index_copy_(dim, ch, saved);
    return;
  }
  const at::Tensor sc = saved.contiguous();
  const ChannelGeometry v = channel_geometry(weight, dim);
  const int64_t m = ch.numel(), es = weight.element_size(), row = v.inner * es;
  if (m == 0 || v.outer == 0 || row == 0) return;
  char* w = static_cast<char*>(weight.data_ptr());
  const char* sv = static_cast<const char*>(sc.data_ptr());
  const int64_t* c = ch.data_ptr<int64_t>();
  // sequential over duplicates within one o (last one wins, like index_copy_ on CPU); parallel over o
  at::parallel_for(0, v.outer, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row * m)), [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o)
      for (int64_t i = 0; i < m; ++i) std::memcpy(w + (o * v.n + c[i]) * row, sv + (o * m + i) * row, row);
  });
}

// ---------------------------------------------------------------------------------------------------------------
// batched_channel_mask: out[b, t, c] = y[b, t, c] * keep[b, c]   (keep rounded to y's dtype, product in fp32)
// ---------------------------------------------------------------------------------------------------------------
AF_CLONES void mask_row_f32(const float* __restrict__ y, const float* __restrict__ k, float* __restrict__ o,
                            int64_t n) {
  for (int64_t c = 0; c < n; ++c) o[c] = y[c] * k[c];
}

static inline uint16_t float_to_bf16_bits(float f) {  // c10::BFloat16's rounding: nearest even, NaN -> 0x7FC0
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7FC0u;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

AF_CLONES void mask_row_bf16(const uint16_t* __restrict__ y, const float* __restrict__ k, uint16_t* __restrict__ o,
                             int64_t n) {
  for (int64_t c = 0; c < n; ++c) o[c] = float_to_bf16_bits(bf16_bits_to_float(y[c]) * k[c]);
}

template <typename T>
inline void mask_row(const T* y, const float* k, T* o, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    mask_row_f32(y, k, o, n);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    mask_row_bf16(reinterpret_cast<const uint16_t*>(y), k, reinterpret_cast<uint16_t*>(o), n);
  } else {
    using opm = at::opmath_type<T>;
    for (int64_t c = 0; c < n; ++c) o[c] = static_cast<T>(static_cast<opm>(y[c]) * static_cast<opm>(k[c]));
  }
}

at::Tensor batched_channel_mask_cpu(const at::Tensor& y, const at::Tensor& keep) {
  check_batched_mask(y, keep);
  const at::Tensor yc = y.contiguous();
  const at::Tensor kc = keep.to(y.scalar_type()).to(at::kFloat).contiguous();
  at::Tensor out = at::empty_like(yc);
  const int64_t B = y.size(0), T = y.size(1), C = y.size(2);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "batched_channel_mask_cpu", [&] {
    const scalar_t* yp = yc.data_ptr<scalar_t>();
    const float* kp = kc.data_ptr<float>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * T, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, C)), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const float* kr = kp + (r / T) * C;
        const scalar_t* yr = yp + r * C;
        scalar_t* orow = op + r * C;
        mask_row(yr, kr, orow, C);
      }
    });
  });
  return out;
}

at::Tensor token_nll_cpu(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets) {
  return token_nll_chunked(hidden, weight, targets, kCpuLogitChunkBytes);
}

}  // namespace

TORCH_LIBRARY_IMPL(achilles_fast, CPU, m) {
  m.impl("noisy_embeds", &noisy_embeds_cpu);
  m.impl("absdiff_accum_", &absdiff_accum_cpu);
  m.impl("mask_channels_", &mask_channels_cpu);
  m.impl("restore_channels_", &restore_channels_cpu);
  m.impl("batched_channel_mask", &batched_channel_mask_cpu);
  m.impl("token_nll", &token_nll_cpu);
}

}  // namespace achilles_fast
