// Sparse-tap 2-D convolution driver: padding, offsets, packing, tiling and threading
// around the tap-GEMM micro-kernel (see tap_conv.h for the contract).
#include "tap_conv.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace fastgen::cpu {
namespace {

struct Span {
  int64_t begin, end;
};

// n split into blocks of exactly `width` (the last one partial): the SIMD lanes.
std::vector<Tile> lane_blocks(int64_t n, int64_t width) {
  std::vector<Tile> out;
  for (int64_t start = 0; start < n; start += width) out.push_back({start, std::min(width, n - start)});
  return out;
}

// Estimated cost, in vector FMAs, of `blocks` groups of lanes against a tiling of the
// other dimension over a k loop of length K: 2 FMAs per column and k, slower for narrow
// tiles (2 * nr accumulators under ~6 expose the FMA latency and the loads), plus
// `store` per block for writing the results out.
double cost(size_t blocks, const std::vector<Tile>& columns, int64_t K, double store) {
  double work = 0;
  for (const Tile& t : columns) work += 2.0 * K * t.size / std::min(1.0, t.size / 3.0);
  return static_cast<double>(blocks) * (work + store);
}

// Zero columns each side of every row so that a tap never leaves the buffer horizontally;
// rows above and below the image are never read (their taps are skipped, see row_taps).
Span column_padding(const TapSet& taps) {
  Span pad{0, 0};
  for (int64_t dw : taps.dw) {
    pad.begin = std::max(pad.begin, -dw);
    pad.end = std::max(pad.end, dw);
  }
  return pad;
}

// (B, C, H, W) with any strides -> flat buffer of (B, C, H, pad.begin + W + pad.end)
// followed by `slack` zeros (room for the last vector of a row to run over).
template <typename T>
at::Tensor pad_columns(const at::Tensor& x, Span pad, int64_t slack) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Wp = pad.begin + W + pad.end, n = B * C * H * Wp;
  at::Tensor out = at::empty({n + slack}, x.options());
  const T* src = x.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  std::fill(dst + n, dst + n + slack, T(0));
  const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const T* plane = src + (bc / C) * sb + (bc % C) * sc;
      for (int64_t h = 0; h < H; ++h) {
        const T* s = plane + h * sh;
        T* d = dst + (bc * H + h) * Wp;
        std::fill(d, d + pad.begin, T(0));
        for (int64_t w = 0; w < W; ++w) d[pad.begin + w] = s[w * sw];
        std::fill(d + pad.begin + W, d + Wp, T(0));
      }
    }
  });
  return out;
}

// (B, C, H, W) with any strides -> (B, ceil(C / mr), H * W, mr): channels in the lanes,
// zero beyond C. The packed A operand of the weight gradient.
template <typename T>
at::Tensor pack_channel_blocks(const at::Tensor& x, int64_t mr) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t blocks = (C + mr - 1) / mr, P = H * W;
  at::Tensor out = C % mr ? at::zeros({B, blocks, P, mr}, x.options()) : at::empty({B, blocks, P, mr}, x.options());
  const T* src = x.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / C, c = bc % C;
      const T* s = src + b * sb + c * sc;
      T* d = dst + ((b * blocks + c / mr) * P) * mr + c % mr;
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) d[(h * W + w) * mr] = s[h * sh + w * sw];
    }
  });
  return out;
}

// (T, C_out, C_in) contiguous -> (groups, T * C_in, width): group q's output channels in
// its first groups[q].size lanes, zero after and for invisible pairs. The packed weights
// of the forward.
template <typename T>
at::Tensor pack_weight(const at::Tensor& weight, const TapSet& taps, const std::vector<Tile>& groups, int64_t width) {
  const int64_t nt = weight.size(0), c_out = weight.size(1), c_in = weight.size(2), K = nt * c_in;
  at::Tensor out = at::zeros({static_cast<int64_t>(groups.size()), K, width}, weight.options());
  const T* src = weight.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  for (size_t q = 0; q < groups.size(); ++q)
    for (int64_t m = 0; m < groups[q].size; ++m) {
      const int64_t o = groups[q].start + m;
      for (int64_t t = 0; t < nt; ++t)
        for (int64_t i = 0; i < c_in; ++i)
          if (taps.visible(t, o, i)) dst[(q * K + t * c_in + i) * width + m] = src[(t * c_out + o) * c_in + i];
    }
  return out;
}

// For each output row h, the taps whose input row h + dh lies in the image: taps are
// sorted by dh, so they are one range.
std::vector<Span> row_taps(const TapSet& taps, int64_t H) {
  TORCH_INTERNAL_ASSERT(std::is_sorted(taps.dh.begin(), taps.dh.end()), "taps must be sorted by dh");
  std::vector<Span> rows(H);
  for (int64_t h = 0; h < H; ++h) {
    const auto first = std::partition_point(taps.dh.begin(), taps.dh.end(), [&](int64_t d) { return h + d < 0; });
    const auto last = std::partition_point(taps.dh.begin(), taps.dh.end(), [&](int64_t d) { return h + d < H; });
    rows[h] = {first - taps.dh.begin(), last - taps.dh.begin()};
  }
  return rows;
}

// Input channels that the restricted tap shows to some output channel of `outs`.
Span visible_inputs(const TapSet& taps, Tile outs) {
  Span s{INT64_MAX, 0};
  for (int64_t o = outs.start; o < outs.start + outs.size; ++o) {
    s.begin = std::min(s.begin, taps.lo[o]);
    s.end = std::max(s.end, taps.hi[o]);
  }
  s.end = std::max(s.begin, s.end);
  return s;
}

// Output channels that see some input channel of `ins` through the restricted tap.
Span visible_outputs(const TapSet& taps, Tile ins) {
  Span s{INT64_MAX, 0};
  for (int64_t o = 0; o < static_cast<int64_t>(taps.lo.size()); ++o)
    if (taps.lo[o] < ins.start + ins.size && taps.hi[o] > ins.start && taps.lo[o] < taps.hi[o]) {
      s.begin = std::min(s.begin, o);
      s.end = o + 1;
    }
  s.end = std::max(s.begin, s.end);
  return s;
}

// The k range (k = t * c_in + i) of a group of output channels: the restricted tap, first
// or last, stops at the group's visible input channels.
Span k_span(const TapSet& taps, Tile outs, int64_t c_in) {
  const int64_t nt = taps.size();
  Span s{0, nt * c_in};
  if (taps.restricted < 0) return s;
  TORCH_INTERNAL_ASSERT(taps.restricted == 0 || taps.restricted == nt - 1, "restricted tap must be first or last");
  const Span vis = visible_inputs(taps, outs);
  if (taps.restricted == 0) s.begin = vis.begin;
  if (taps.restricted == nt - 1) s.end = (nt - 1) * c_in + vis.end;
  s.end = std::max(s.begin, s.end);
  return s;
}

template <typename T>
void forward_impl(const at::Tensor& in, const at::Tensor& weight, const TapSet& taps, const T* bias, at::Tensor& out) {
  const TapGemm<T>& gemm = tap_gemm<T>();
  const int64_t B = in.size(0), c_in = in.size(1), H = in.size(2), W = in.size(3), c_out = out.size(1);
  const int64_t mr = gemm.mr, K = taps.size() * c_in;
  // Output channels in the lanes and pixels in the register tile, or the other way round.
  const std::vector<Tile> w_tiles = tiles(0, W, gemm.nr_max), o_tiles = tiles(0, c_out, gemm.nr_max);
  const std::vector<Tile> w_blocks = lane_blocks(W, mr), o_blocks = lane_blocks(c_out, mr);
  // Channel lanes are stored transposed (NCHW output), one scalar per output element.
  const bool pixel_lanes = cost(w_blocks.size(), o_tiles, K, 0) < cost(o_blocks.size(), w_tiles, K, mr * W);
  const std::vector<Tile>& groups = pixel_lanes ? o_tiles : o_blocks;
  const std::vector<Tile>& columns = pixel_lanes ? w_blocks : w_tiles;
  const int64_t width = pixel_lanes ? gemm.nr_max : mr;

  const Span pad = column_padding(taps);
  const at::Tensor padded = pad_columns<T>(in, pad, pixel_lanes ? mr : 0);
  const at::Tensor packed = pack_weight<T>(weight, taps, groups, width);
  const int64_t Wp = pad.begin + W + pad.end, plane = H * Wp;
  std::vector<int64_t> koff(K), woff(K);  // offsets of input tap/channel k, and of its weights
  for (int64_t t = 0; t < taps.size(); ++t)
    for (int64_t i = 0; i < c_in; ++i) {
      koff[t * c_in + i] = i * plane + taps.dh[t] * Wp + taps.dw[t] + pad.begin;
      woff[t * c_in + i] = (t * c_in + i) * width;
    }
  const std::vector<Span> rows = row_taps(taps, H);
  std::vector<Span> ks;
  for (const Tile& g : groups) ks.push_back(k_span(taps, g, c_in));
  const T* X = padded.data_ptr<T>();
  const T* P = packed.data_ptr<T>();
  T* Y = out.data_ptr<T>();
  const int64_t n_groups = groups.size();

  at::parallel_for(0, B * n_groups * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> tile(gemm.nr_max * mr);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item % H, q = (item / H) % n_groups, b = item / (H * n_groups);
      const Tile g = groups[q];
      const int64_t k0 = std::max(ks[q].begin, rows[h].begin * c_in);
      const int64_t k1 = std::min(ks[q].end, rows[h].end * c_in);
      const T* x_row = X + b * c_in * plane + h * Wp;
      const T* w = P + q * K * width;
      for (const Tile& col : columns) {
        // tile[j * mr + m]: column j, lane m
        if (k1 <= k0)
          std::fill(tile.begin(), tile.end(), T(0));
        else if (pixel_lanes)
          gemm.gather[g.size](k1 - k0, x_row + col.start, koff.data() + k0, w, woff.data() + k0, 1, tile.data(), mr,
                              false);
        else
          gemm.packed[col.size](k1 - k0, w + k0 * mr, nullptr, x_row + col.start, koff.data() + k0, 1, tile.data(),
                                mr, false);
        for (int64_t c = 0; c < g.size; ++c) {
          T* y = Y + ((b * c_out + g.start + c) * H + h) * W + col.start;
          const T bc = bias ? bias[g.start + c] : T(0);
          if (pixel_lanes)
            for (int64_t p = 0; p < col.size; ++p) y[p] = tile[c * mr + p] + bc;
          else
            for (int64_t p = 0; p < col.size; ++p) y[p] = tile[p * mr + c] + bc;
        }
      }
    }
  });
}

template <typename T>
at::Tensor weight_grad_impl(const at::Tensor& in, const at::Tensor& grad_out, const TapSet& taps) {
  const TapGemm<T>& gemm = tap_gemm<T>();
  const int64_t B = in.size(0), c_in = in.size(1), H = in.size(2), W = in.size(3), c_out = grad_out.size(1);
  const int64_t mr = gemm.mr, nt = taps.size(), P = H * W;
  // The lanes hold output channels (grad_out packed, input read by broadcast) or input
  // channels (the padded input packed, grad_out read by broadcast), whichever fills them.
  const std::vector<Tile> i_tiles = tiles(0, c_in, gemm.nr_max), o_tiles = tiles(0, c_out, gemm.nr_max);
  const std::vector<Tile> i_blocks = lane_blocks(c_in, mr), o_blocks = lane_blocks(c_out, mr);
  const bool input_lanes = cost(i_blocks.size(), o_tiles, P, 0) < cost(o_blocks.size(), i_tiles, P, 0);
  const std::vector<Tile>& blocks = input_lanes ? i_blocks : o_blocks;
  const std::vector<Tile>& all_columns = input_lanes ? o_tiles : i_tiles;
  const int64_t n_blocks = blocks.size(), lanes = n_blocks * mr, c_columns = input_lanes ? c_out : c_in;

  const Span pad = column_padding(taps);
  const int64_t Wp = pad.begin + W + pad.end, plane = H * Wp;
  const at::Tensor padded = pad_columns<T>(in, pad, 0);
  const at::Tensor a_src = input_lanes ? pack_channel_blocks<T>(padded.view({B, c_in, H, Wp}), mr)
                                       : pack_channel_blocks<T>(grad_out, mr);
  const at::Tensor b_src = input_lanes ? grad_out.contiguous() : padded;
  const int64_t positions = input_lanes ? plane : P;  // rows of a_src per (b, block)
  const int64_t ns = input_lanes ? P : plane;         // between broadcast columns
  std::vector<int64_t> aoff(P), boff(P);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t w = 0; w < W; ++w) {
      const int64_t p = h * W + w, padded_p = h * Wp + w + pad.begin;
      aoff[p] = padded_p * mr;
      boff[p] = input_lanes ? p : padded_p;
    }
  // Columns of each (tap, block): all of them, or what the restricted tap makes visible.
  std::vector<std::vector<Tile>> restricted(n_blocks);
  if (taps.restricted >= 0)
    for (int64_t q = 0; q < n_blocks; ++q) {
      const Span vis = input_lanes ? visible_outputs(taps, blocks[q]) : visible_inputs(taps, blocks[q]);
      restricted[q] = tiles(vis.begin, vis.end - vis.begin, gemm.nr_max);
    }

  // One accumulator per thread, summed at the end: no atomics, and a fixed order of
  // summation for a given thread count.
  const int64_t threads = at::get_num_threads();
  at::Tensor acc = at::zeros({threads, nt, c_columns, lanes}, in.options());
  const T* A = a_src.data_ptr<T>();
  const T* Bsrc = b_src.data_ptr<T>();
  T* ACC = acc.data_ptr<T>();
  at::parallel_for(0, B * n_blocks * nt, 1, [&](int64_t begin, int64_t end) {
    T* mine = ACC + at::get_thread_num() * nt * c_columns * lanes;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item % nt, q = (item / nt) % n_blocks, b = item / (nt * n_blocks);
      const int64_t h0 = std::max<int64_t>(0, -taps.dh[t]), h1 = std::min(H, H - taps.dh[t]);
      if (h1 <= h0) continue;
      const int64_t p0 = h0 * W, shift = taps.dh[t] * Wp + taps.dw[t];
      const T* a = A + (b * n_blocks + q) * positions * mr;
      const T* x = input_lanes ? Bsrc + b * c_out * P : Bsrc + b * c_in * plane + shift;
      a += (input_lanes ? shift : p0) * mr;
      for (const Tile& col : t == taps.restricted ? restricted[q] : all_columns) {
        T* c = mine + (t * c_columns + col.start) * lanes + q * mr;
        if (input_lanes)
          gemm.gather[col.size]((h1 - h0) * W, a, aoff.data() + p0, x + col.start * ns, boff.data() + p0, ns, c,
                                lanes, true);
        else
          gemm.packed[col.size]((h1 - h0) * W, a, nullptr, x + col.start * ns, boff.data() + p0, ns, c, lanes, true);
      }
    }
  });
  const at::Tensor sum = acc.sum(0);  // (T, columns, lanes)
  at::Tensor grad = (input_lanes ? sum.narrow(2, 0, c_in).transpose(1, 2) : sum.narrow(2, 0, c_out)).contiguous();
  if (taps.restricted >= 0) {  // tiles straddle invisible pairs: their sums are not gradients
    T* g = grad.data_ptr<T>() + taps.restricted * c_in * c_out;
    for (int64_t i = 0; i < c_in; ++i)
      for (int64_t o = 0; o < c_out; ++o)
        if (!taps.visible(taps.restricted, o, i)) g[i * c_out + o] = T(0);
  }
  return grad;
}

}  // namespace

void KernelTaps::add(int64_t position, int64_t dh, int64_t dw) {
  index.push_back(position);
  forward.dh.push_back(dh);
  forward.dw.push_back(dw);
}

void KernelTaps::transpose(int64_t count) {
  for (int64_t t = (count < 0 ? forward.size() : count) - 1; t >= 0; --t) {
    transposed.dh.push_back(-forward.dh[t]);
    transposed.dw.push_back(-forward.dw[t]);
  }
}

at::Tensor KernelTaps::forward_weight(const at::Tensor& weight) const {
  return weight.flatten(2).index_select(2, at::tensor(index, at::kLong)).permute({2, 0, 1}).contiguous();
}

at::Tensor KernelTaps::transposed_weight(const at::Tensor& weight) const {
  const std::vector<int64_t> reversed(index.rend() - transposed.size(), index.rend());
  return weight.flatten(2).index_select(2, at::tensor(reversed, at::kLong)).permute({2, 1, 0}).contiguous();
}

at::Tensor KernelTaps::unpack_weight_grad(const at::Tensor& grad, const at::Tensor& weight) const {
  at::Tensor out = at::zeros({weight.size(0), weight.size(1), weight.size(2) * weight.size(3)}, weight.options());
  out.index_copy_(2, at::tensor(index, at::kLong), grad.permute({2, 1, 0}));
  return out.view(weight.sizes());
}

void tap_conv_forward(const at::Tensor& in, const at::Tensor& weight, const TapSet& taps,
                      const c10::optional<at::Tensor>& bias, at::Tensor& out) {
  TORCH_INTERNAL_ASSERT(out.is_contiguous() && weight.is_contiguous() && out.scalar_type() == in.scalar_type());
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "tap_conv_forward", [&] {
    forward_impl<scalar_t>(in, weight, taps, b.defined() ? b.data_ptr<scalar_t>() : nullptr, out);
  });
}

at::Tensor tap_conv_weight_grad(const at::Tensor& in, const at::Tensor& grad_out, const TapSet& taps) {
  return AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "tap_conv_weight_grad",
                                    [&] { return weight_grad_impl<scalar_t>(in, grad_out, taps); });
}

}  // namespace fastgen::cpu
