// Argument checks shared by the CPU and CUDA kernels of the achilles_fast:: ops: one place for the shapes and
// messages (the Python references raise on the same inputs). ATen-only, hence device-agnostic.
#pragma once
#include <ATen/ATen.h>

namespace achilles_fast {

// embeds [T, H]; k_start, k_count >= 0
inline void check_noisy_embeds(const at::Tensor& embeds, int64_t k_start, int64_t k_count) {
  TORCH_CHECK(embeds.dim() == 2, "noisy_embeds: embeds must be [T, H], got ", embeds.sizes());
  TORCH_CHECK(k_start >= 0 && k_count >= 0, "noisy_embeds: k_start and k_count must be >= 0");
}

// acc [T, C] or [C] fp32, clean [T, C], noisy [k, T, C]. Returns true when acc is per position ([T, C]).
inline bool check_absdiff(const at::Tensor& acc, const at::Tensor& clean, const at::Tensor& noisy) {
  TORCH_CHECK(clean.dim() == 2, "absdiff_accum_: clean must be [T, C], got ", clean.sizes());
  TORCH_CHECK(noisy.dim() == 3 && noisy.size(1) == clean.size(0) && noisy.size(2) == clean.size(1),
              "absdiff_accum_: noisy must be [k, T, C] with clean [T, C]; got ", noisy.sizes(), " and ",
              clean.sizes());
  TORCH_CHECK(acc.scalar_type() == at::kFloat, "absdiff_accum_: acc must be float32");
  const int64_t T = clean.size(0), C = clean.size(1);
  const bool per_pos = acc.dim() == 2;
  TORCH_CHECK((per_pos && acc.size(0) == T && acc.size(1) == C) || (acc.dim() == 1 && acc.size(0) == C),
              "absdiff_accum_: acc must be [T, C] or [C]; got ", acc.sizes());
  return per_pos;
}

// channels [m] (any integer dtype) -> int64 [m] on `device`, every index in [0, n)
inline at::Tensor checked_channels(const at::Tensor& channels, at::Device device, int64_t n, const char* op) {
  TORCH_CHECK(channels.dim() == 1, op, ": channels must be 1-D");
  at::Tensor ch = channels.to(device, at::kLong).contiguous();
  if (ch.numel()) {
    const int64_t lo = ch.min().item<int64_t>(), hi = ch.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < n, op, ": channel index out of range [0, ", n, "): ", lo, "..", hi);
  }
  return ch;
}

inline void check_weight(const at::Tensor& weight, const char* op) {
  TORCH_CHECK(weight.dim() >= 1, op, ": weight must have at least 1 dim");
}

// saved: weight's shape with ch.numel() channels along dim, weight's dtype
inline void check_saved(const at::Tensor& weight, const at::Tensor& saved, const at::Tensor& ch, int64_t dim) {
  TORCH_CHECK(saved.dim() == weight.dim() && saved.size(dim) == ch.numel(), "restore_channels_: saved has shape ",
              saved.sizes(), ", expected weight's shape with ", ch.numel(), " channels along dim ", dim);
  TORCH_CHECK(saved.scalar_type() == weight.scalar_type(), "restore_channels_: dtype mismatch");
}

// y [B, T, C], keep [B, C]
inline void check_batched_mask(const at::Tensor& y, const at::Tensor& keep) {
  TORCH_CHECK(y.dim() == 3, "batched_channel_mask: out must be [B, T, C], got ", y.sizes());
  TORCH_CHECK(keep.dim() == 2 && keep.size(0) == y.size(0) && keep.size(1) == y.size(2),
              "batched_channel_mask: keep must be [B, C]; got ", keep.sizes(), " for ", y.sizes());
}

}  // namespace achilles_fast
