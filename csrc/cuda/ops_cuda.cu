// CUDA kernels of the achilles_fast:: ops (schema and reference of each: achilles_fast/ops/<op>.py), registered for
// the CUDA dispatch key. Built by setup.py when ACHILLES_FAST_BUILD_CUDA=1 (or auto with a CUDA torch + nvcc);
// csrc/check_cuda_compile.sh compiles this file for sm_90a and sm_80 in CI.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../common/channel_geometry.h"
#include "../common/checks.h"
#include "../common/philox.h"
#include "../common/token_nll.h"

namespace achilles_fast {
namespace {

constexpr int kThreads = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline unsigned grid_for(int64_t n, int threads = kThreads) {
  return static_cast<unsigned>(std::min<int64_t>(ceil_div(n, threads), int64_t(1) << 30));
}

// float <-> storage type (c10::Half / c10::BFloat16 convert through float on the device)
template <typename T>
__device__ __forceinline__ float to_f(T v) { return static_cast<float>(v); }
template <typename T>
__device__ __forceinline__ T from_f(float v) { return static_cast<T>(v); }

// ---------------------------------------------------------------------------------------------------------------
// noisy_embeds: out[k, i] = e[i] + alpha * philox_normal(base + k * TH + i); one thread per plane element i
// (grid-stride), looping over the k samples: e[i] is read once, no 64-bit modulo per element. Precise logf / cosf /
// sqrtf and explicitly rounded products (no FMA contraction): the same operations as the reference's CUDA kernels.
// ---------------------------------------------------------------------------------------------------------------
template <typename T>
__global__ void noisy_embeds_kernel(const T* __restrict__ e, T* __restrict__ out, float alpha, uint32_t k0,
                                    uint32_t k1, uint64_t base, int64_t TH, int64_t K) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < TH;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float x = to_f(e[i]);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t o = k * TH + i;
      const float z = philox_normal(base + static_cast<uint64_t>(o), k0, k1);
      out[o] = from_f<T>(__fadd_rn(x, __fmul_rn(alpha, z)));
    }
  }
}

at::Tensor noisy_embeds_cuda(const at::Tensor& embeds, double alpha, int64_t seed, int64_t k_start,
                             int64_t k_count) {
  check_noisy_embeds(embeds, k_start, k_count);
  const c10::cuda::CUDAGuard guard(embeds.device());
  const at::Tensor e = embeds.contiguous();
  const int64_t T = e.size(0), H = e.size(1), TH = T * H;
  at::Tensor out = at::empty({k_count, T, H}, e.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const uint64_t s = static_cast<uint64_t>(seed);
  const uint64_t base = static_cast<uint64_t>(k_start) * static_cast<uint64_t>(TH);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e.scalar_type(), "noisy_embeds_cuda", [&] {
    noisy_embeds_kernel<scalar_t><<<grid_for(TH), kThreads, 0, stream>>>(
        e.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), static_cast<float>(alpha), static_cast<uint32_t>(s),
        static_cast<uint32_t>(s >> 32), base, TH, k_count);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// absdiff: acc[j] += sum_k |noisy[k * TC + j] - clean[j]|  over the flat (t, c) plane.
// One thread owns VEC consecutive elements (one 16-byte load per sample when aligned); samples are unrolled by 4
// so several independent loads are in flight per thread.
// ---------------------------------------------------------------------------------------------------------------
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// read-only-cache 16-byte load when the pack is 16 bytes, plain load otherwise
template <typename P>
__device__ __forceinline__ P load_pack(const P* ptr) {
  if constexpr (sizeof(P) == 16) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(ptr));
    P out;
    memcpy(&out, &raw, sizeof(P));
    return out;
  } else {
    return *ptr;
  }
}

template <typename T, int VEC>
__global__ void absdiff_kernel(float* __restrict__ acc, const float* __restrict__ clean,
                               const T* __restrict__ noisy, int64_t K, int64_t TC, int64_t k_per, bool partial) {
  // blockIdx.y = slice of the K samples (k_per each); partial: write slice sums to acc[y * TC + i], else acc[i] +=
  const int64_t g = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * VEC;
  if (g >= TC) return;
  const int64_t k0 = blockIdx.y * k_per, k1 = min(K, k0 + k_per);
  const int64_t Kc = k1 > k0 ? k1 - k0 : 0;
  float* out = partial ? acc + blockIdx.y * TC : acc;
  const T* p = noisy + k0 * TC + g;
  if (g + VEC <= TC) {
    float c[VEC], s[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      c[j] = clean[g + j];
      s[j] = 0.f;
    }
    int64_t k = 0;
    for (; k + 4 <= Kc; k += 4) {
      Pack<T, VEC> x[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) x[u] = load_pack(reinterpret_cast<const Pack<T, VEC>*>(p + (k + u) * TC));
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int j = 0; j < VEC; ++j) s[j] += fabsf(to_f(x[u].v[j]) - c[j]);
    }
    for (; k < Kc; ++k) {
      const Pack<T, VEC> x = load_pack(reinterpret_cast<const Pack<T, VEC>*>(p + k * TC));
#pragma unroll
      for (int j = 0; j < VEC; ++j) s[j] += fabsf(to_f(x.v[j]) - c[j]);
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[g + j] = partial ? s[j] : out[g + j] + s[j];
  } else {  // tail (VEC > 1 only when TC % VEC != 0, which the launcher avoids)
    for (int64_t i = g; i < TC; ++i) {
      const float c = clean[i];
      float s = 0.f;
      for (int64_t k = 0; k < Kc; ++k) s += fabsf(to_f(noisy[(k0 + k) * TC + i]) - c);
      out[i] = partial ? s : out[i] + s;
    }
  }
}

int num_sms(int device) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();
    sms = 100;
  }
  return sms;
}

// Small (position, channel) planes leave most SMs idle: split the K samples over blockIdx.y into a [splits, TC]
// buffer of partial sums, then add them up (fixed order: deterministic).
template <typename T, int VEC>
void launch_absdiff(at::Tensor& out, const float* clean, const T* noisy, int64_t K, int64_t TC, int device,
                    cudaStream_t stream) {
  const int64_t blocks = ceil_div(ceil_div(TC, VEC), kThreads);
  const int64_t want = 4 * static_cast<int64_t>(num_sms(device));
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>({ceil_div(want, blocks), K / 8, 65535}));
  if (splits == 1) {
    absdiff_kernel<T, VEC><<<dim3(static_cast<unsigned>(blocks), 1), kThreads, 0, stream>>>(
        out.data_ptr<float>(), clean, noisy, K, TC, K, false);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const int64_t k_per = ceil_div(K, splits);
  at::Tensor part = at::empty({splits, TC}, out.options());
  absdiff_kernel<T, VEC><<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(splits)), kThreads, 0, stream>>>(
      part.data_ptr<float>(), clean, noisy, K, TC, k_per, true);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  out.add_(part.sum(0).view_as(out));
}

void absdiff_accum_cuda(at::Tensor& acc, const at::Tensor& clean, const at::Tensor& noisy) {
  const bool per_pos = check_absdiff(acc, clean, noisy);
  const int64_t K = noisy.size(0), T = clean.size(0), C = clean.size(1), TC = T * C;
  if (K == 0 || TC == 0) return;
  const c10::cuda::CUDAGuard guard(acc.device());
  at::Tensor out = per_pos ? (acc.is_contiguous() ? acc : acc.contiguous()) : at::zeros({T, C}, acc.options());
  const at::Tensor x = noisy.contiguous();
  const at::Tensor cl = clean.to(at::kFloat).contiguous();  // read once per thread: keep it in fp32
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int device = acc.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "absdiff_accum_cuda", [&] {
    constexpr int V = sizeof(scalar_t) >= 8 ? 2 : 16 / sizeof(scalar_t);
    const bool vec_ok = TC % V == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
    if (vec_ok) {
      launch_absdiff<scalar_t, V>(out, cl.data_ptr<float>(), x.data_ptr<scalar_t>(), K, TC, device, stream);
    } else {
      launch_absdiff<scalar_t, 1>(out, cl.data_ptr<float>(), x.data_ptr<scalar_t>(), K, TC, device, stream);
    }
  });
  if (!per_pos) {
    acc.add_(out.sum(0));  // sum over k, then positions (reference order), deterministic
  } else if (!out.is_same(acc)) {
    acc.copy_(out);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// mask / restore: weight as [outer, n, inner], saved as [outer, m, inner]; one thread per saved element
// ---------------------------------------------------------------------------------------------------------------
template <typename T, int MODE>  // 0 gather, 1 zero, 2 restore
__global__ void channels_kernel(T* __restrict__ w, T* __restrict__ saved, const int64_t* __restrict__ ch,
                                int64_t total, int64_t m, int64_t n, int64_t inner) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = e % inner, r = e / inner, i = r % m, o = r / m;
    const int64_t src = (o * n + ch[i]) * inner + j;
    if (MODE == 0) saved[e] = w[src];
    else if (MODE == 1) w[src] = T(0);
    else w[src] = saved[e];
  }
}

template <int MODE>
void launch_channels(const at::Tensor& w, const at::Tensor& saved, const at::Tensor& ch, const ChannelGeometry& g) {
  const int64_t total = saved.numel();
  if (total == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  // dtype-agnostic: move elements as unsigned integers of the element size
  switch (w.element_size()) {
#define AF_CASE(BYTES, TYPE)                                                                                        \
  case BYTES:                                                                                                       \
    channels_kernel<TYPE, MODE><<<grid_for(total), kThreads, 0, stream>>>(                                          \
        static_cast<TYPE*>(w.data_ptr()), static_cast<TYPE*>(saved.data_ptr()), ch.data_ptr<int64_t>(), total,   \
        ch.numel(), g.n, g.inner);                                                                                  \
    break;
    AF_CASE(1, uint8_t)
    AF_CASE(2, uint16_t)
    AF_CASE(4, uint32_t)
    AF_CASE(8, uint64_t)
#undef AF_CASE
    default:
      TORCH_CHECK(false, "mask_channels_: unsupported element size ", w.element_size());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor mask_channels_cuda(at::Tensor& weight, const at::Tensor& channels, int64_t dim) {
  check_weight(weight, "mask_channels_");
  dim = c10::maybe_wrap_dim(dim, weight.dim());
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor ch = checked_channels(channels, weight.device(), weight.size(dim), "mask_channels_");
  if (!weight.is_contiguous()) {
    at::Tensor saved = weight.index_select(dim, ch).clone();
    weight.index_fill_(dim, ch, 0);
    return saved;
  }
  at::Tensor saved = at::empty(saved_shape(weight, dim, ch.numel()), weight.options());
  const ChannelGeometry g = channel_geometry(weight, dim);
  launch_channels<0>(weight, saved, ch, g);  // gather all, then zero (duplicates keep their originals)
  launch_channels<1>(weight, saved, ch, g);
  return saved;
}

void restore_channels_cuda(at::Tensor& weight, const at::Tensor& channels, const at::Tensor& saved, int64_t dim) {
  check_weight(weight, "restore_channels_");
  dim = c10::maybe_wrap_dim(dim, weight.dim());
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor ch = checked_channels(channels, weight.device(), weight.size(dim), "restore_channels_");
  check_saved(weight, saved, ch, dim);
  if (!weight.is_contiguous()) {
    weight.index_copy_(dim, ch, saved);
    return;
  }
  const at::Tensor sc = saved.to(weight.device()).contiguous();
  launch_channels<2>(weight, sc, ch, channel_geometry(weight, dim));
}

// ---------------------------------------------------------------------------------------------------------------
// batched_channel_mask: out[b, t, c] = y[b, t, c] * keep[b, c]
// ---------------------------------------------------------------------------------------------------------------
template <typename T>
__global__ void batched_mask_kernel(const T* __restrict__ y, const T* __restrict__ keep, T* __restrict__ out,
                                    int64_t n, int64_t TC, int64_t C) {
  using opm = at::opmath_type<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / TC, c = i % C;
    out[i] = static_cast<T>(static_cast<opm>(y[i]) * static_cast<opm>(keep[b * C + c]));
  }
}

at::Tensor batched_channel_mask_cuda(const at::Tensor& y, const at::Tensor& keep) {
  check_batched_mask(y, keep);
  const c10::cuda::CUDAGuard guard(y.device());
  const at::Tensor yc = y.contiguous();
  const at::Tensor kc = keep.to(y.device(), y.scalar_type()).contiguous();
  at::Tensor out = at::empty_like(yc);
  const int64_t n = out.numel();
  if (n == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "batched_channel_mask_cuda", [&] {
    batched_mask_kernel<scalar_t><<<grid_for(n), kThreads, 0, stream>>>(
        yc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, y.size(1) * y.size(2),
        y.size(2));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor token_nll_cuda(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  return token_nll_chunked(hidden, weight, targets, kCudaLogitChunkBytes);
}

}  // namespace

TORCH_LIBRARY_IMPL(achilles_fast, CUDA, m) {
  m.impl("noisy_embeds", &noisy_embeds_cuda);
  m.impl("absdiff_accum_", &absdiff_accum_cuda);
  m.impl("mask_channels_", &mask_channels_cuda);
  m.impl("restore_channels_", &restore_channels_cuda);
  m.impl("batched_channel_mask", &batched_channel_mask_cuda);
  m.impl("token_nll", &token_nll_cuda);
}

}  // namespace achilles_fast
