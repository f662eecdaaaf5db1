// Per-token NLL over an LM head, chunked over the vocabulary with an online log-sum-exp, so the full
// [N, V] logits never exist (forward only). Written with ATen ops, hence device-agnostic: registered for CPU by
// csrc/cpu and for CUDA by csrc/cuda. Semantics: achilles_fast/ops/reference.py::token_nll_ref
// (cross_entropy(hidden.float() @ w.float().T, targets, reduction="none"), ignore_index -100 -> 0).
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

namespace achilles_fast {

// chunk_bytes: fp32 logits per vocabulary chunk. CPU: 4 MiB, so each chunk's logits stay in cache between the GEMM
// that writes them and the log-sum-exp that reads them (Gemma-3-270M's head, N=128 x V=262144 x H=640, 2 cores:
// 0.158 s per call at 2-8 MiB against 0.235 s for GEMM then log-sum-exp over 128 MiB). CUDA: 64 MiB (fewer launches).
constexpr int64_t kCpuLogitChunkBytes = int64_t(4) << 20;
constexpr int64_t kCudaLogitChunkBytes = int64_t(64) << 20;

inline at::Tensor token_nll_chunked(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                    int64_t chunk_bytes) {
  TORCH_CHECK(hidden.dim() == 2, "token_nll: hidden must be [N, H], got ", hidden.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == hidden.size(1), "token_nll: lm_weight must be [V, H=",
              hidden.size(1), "], got ", weight.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0), "token_nll: targets must be [N]");
  TORCH_CHECK(hidden.device() == weight.device() && hidden.device() == targets.device(),
              "token_nll: all inputs must be on one device");
  const int64_t N = hidden.size(0), V = weight.size(0);
  auto f32 = hidden.options().dtype(at::kFloat);
  if (N == 0) return at::empty({0}, f32);
  const at::Tensor h = hidden.to(at::kFloat);
  const at::Tensor tgt = targets.to(at::kLong);
  // <= chunk_bytes of fp32 logits per chunk: bounded memory for any N, V; a single chunk (small N * V) takes the
  // reference's own fused log_softmax path, so it is never slower than the reference.
  int64_t vchunk = chunk_bytes / (4 * N);
  vchunk = std::max<int64_t>(256, std::min<int64_t>(V, (vchunk / 256) * 256));
  at::Tensor lse = at::full({N}, -std::numeric_limits<float>::infinity(), f32);
  at::Tensor tl = at::zeros({N}, f32);
  for (int64_t v0 = 0; v0 < V; v0 += vchunk) {
    const int64_t len = std::min(vchunk, V - v0);
    const at::Tensor logits = at::mm(h, weight.narrow(0, v0, len).to(at::kFloat).t());  // [N, len]
    if (len == V) {  // single chunk: -log_softmax at the target
      at::Tensor nll = at::log_softmax(logits, 1).gather(1, tgt.clamp(0, V - 1).unsqueeze(1)).squeeze(1).neg_();
      return at::where(tgt.eq(-100), at::zeros_like(nll), nll);
    }
    const at::Tensor in = tgt.ge(v0).logical_and_(tgt.lt(v0 + len));
    const at::Tensor local = (tgt - v0).clamp_(0, len - 1).unsqueeze(1);
    tl = at::where(in, logits.gather(1, local).squeeze(1), tl);
    lse = at::logaddexp(lse, at::logsumexp(logits, {1}));
  }
  at::Tensor nll = lse.sub_(tl);
  return at::where(tgt.eq(-100), at::zeros_like(nll), nll);
}

}  // namespace achilles_fast
