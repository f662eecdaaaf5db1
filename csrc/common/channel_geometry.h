// Channel geometry of mask_channels_ / restore_channels_, shared by the CPU and CUDA kernels (the Triton launcher's
// twin is achilles_fast/ops/channel_mask.py::channel_geometry).
//
// A contiguous weight is viewed as [outer, n, inner] around `dim` (n = weight.size(dim)); the saved originals of m
// channels ch[0..m) as [outer, m, inner]. Channel slice (o, ch[i]) of the weight is `inner` contiguous elements at
// element offset (o * n + ch[i]) * inner; its copy in saved is at (o * m + i) * inner.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace achilles_fast {

struct ChannelGeometry {
  int64_t outer, n, inner;
};

// `dim` already wrapped to [0, w.dim())
inline ChannelGeometry channel_geometry(const at::Tensor& w, int64_t dim) {
  ChannelGeometry g{1, w.size(dim), 1};
  for (int64_t d = 0; d < dim; ++d) g.outer *= w.size(d);
  for (int64_t d = dim + 1; d < w.dim(); ++d) g.inner *= w.size(d);
  return g;
}

// Shape of the saved originals of m channels: weight's shape with m along dim.
inline std::vector<int64_t> saved_shape(const at::Tensor& w, int64_t dim, int64_t m) {
  std::vector<int64_t> sz(w.sizes().begin(), w.sizes().end());
  sz[dim] = m;
  return sz;
}

}  // namespace achilles_fast
