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
// achilles_fast/ops/nll.py::CPU_LOGIT_CHUNK_BYTES mirrors the CPU value (its packed head must chunk as this does).
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
  // One logits buffer for every chunk, and the log-sum-exp in place on it: a fresh [N, vchunk] tensor per chunk
  // (GEMM output, then amax/sub/exp temporaries) costs page faults and passes over memory that the GEMM pays for
  // again (Gemma-3-270M's head, 2 cores: 0.219 s per call with at::logsumexp on fresh chunks, 0.156 s so).
  const at::Tensor buf = at::empty({N * vchunk}, f32);
  at::Tensor m_run = at::full({N}, -std::numeric_limits<float>::infinity(), f32);  // running max
  at::Tensor s_run = at::zeros({N}, f32);  // running sum of exp(logit - m_run)
  at::Tensor tl = at::zeros({N}, f32);
  for (int64_t v0 = 0; v0 < V; v0 += vchunk) {
    const int64_t len = std::min(vchunk, V - v0);
    at::Tensor logits = buf.narrow(0, 0, N * len).view({N, len});  // [N, len], contiguous
    at::mm_out(logits, h, weight.narrow(0, v0, len).to(at::kFloat).t());
    if (len == V) {  // single chunk: -log_softmax at the target (the reference's own path)
      at::Tensor nll = at::log_softmax(logits, 1).gather(1, tgt.clamp(0, V - 1).unsqueeze(1)).squeeze(1).neg_();
      return at::where(tgt.eq(-100), at::zeros_like(nll), nll);
    }
    const at::Tensor in = tgt.ge(v0).logical_and_(tgt.lt(v0 + len));
    const at::Tensor local = (tgt - v0).clamp_(0, len - 1).unsqueeze(1);
    tl = at::where(in, logits.gather(1, local).squeeze(1), tl);
    const at::Tensor m_new = at::maximum(m_run, logits.amax(1));
    s_run = s_run.mul_((m_run - m_new).exp_()).add_(logits.sub_(m_new.unsqueeze(1)).exp_().sum(1));
    m_run = m_new;
  }
  at::Tensor nll = s_run.log_().add_(m_run).sub_(tl);
  return at::where(tgt.eq(-100), at::zeros_like(nll), nll);
}

}  // namespace achilles_fast
