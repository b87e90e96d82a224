// WaveNet gated residual block on the CPU: forward, backward, the one-step form, and that
// step through a whole stack of blocks.
//
// The forward works per (batch, time tile): the dilated causal conv z_tile = bias + cond +
// sum_k W_k @ h[:, tile - s_k] (for K = 2 by the two-tap Winograd kernel, two_tap_conv.h,
// on tiles of whole blocks of 2d times; else as GEMMs on time-shifted views of h, taps
// clipped at the sequence start), the gate in place while the tile is in cache, then the
// residual and skip 1x1 convs accumulating straight into h_out and skip. The gated tile,
// tanh(z[:G]) | sigmoid(z[G:]), is the op's third output, saved for the backward: the
// block is compute-bound here, and the conv costs far more to redo than its output costs
// to keep (the eager autograd keeps both activations and g). The backward recomputes
// only g = tanh * sigmoid per tile; each segment of a sequence (a few tiles, fixed by the
// shapes) is owned by one thread, so grad_h (which receives dz at t + s_k at time t, across
// tile boundaries; before the segment through a carry added at the end) and the
// per-segment weight-gradient partials are written without races and summed in a fixed
// order (deterministic whatever the thread count). The conv's input and weight gradients stay
// GEMMs per tap: a Winograd F(2, 2) form of each (three products per pair of times, as in
// the forward) measured no faster on the benchmark block, its smaller GEMMs and transforms
// eating the 25% fewer FLOPs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "two_tap_conv.h"

namespace fastgen::cpu {
namespace {

// Times per tile. ATen's GEMMs over a tile (K = R, G or R + S) run faster the longer it
// is, more than the tile's buffers gain by staying in L2 (the GEMMs block for the cache
// themselves): 1024 instead of 256 made the benchmark block's forward+backward (residual
// 64, gate 2x64, skip 256, T = 8192) 3-5% faster at batch 4 and 5-12% at batch 1 (2-core
// Zen 3), while leaving T / 1024 tiles per sequence to spread over the threads.
constexpr int64_t TILE = 1024;

struct Dims {
  int64_t B, R, T, G, S, K;
};

void check_opt(const c10::optional<at::Tensor>& t, const char* name, at::IntArrayRef shape, const at::Tensor& h) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->sizes() == shape, "gated_residual_block: ", name, " must have shape ", shape, ", got ",
                    t->sizes());
  TORCH_CHECK_TYPE(t->scalar_type() == h.scalar_type(), "gated_residual_block: ", name, " must have dtype ",
                   h.scalar_type(), ", got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->device().is_cpu(), "gated_residual_block (cpu): ", name, " must be on the CPU");
}

void check_tensor(const at::Tensor& t, const char* name, at::IntArrayRef shape, const at::Tensor& h) {
  check_opt(t, name, shape, h);
}

// Everything that could make the kernels read out of bounds: these ops can be called
// directly through torch.ops, past fastgen.ops' friendlier checks.
Dims check_args(const char* op, int64_t h_dims, const at::Tensor& h, const at::Tensor& conv_weight,
                const c10::optional<at::Tensor>& conv_bias, const at::Tensor& res_weight,
                const at::Tensor& skip_weight, int64_t dilation) {
  TORCH_CHECK_VALUE(h.dim() == h_dims, op, ": h must have ", h_dims, " dimensions, got shape ", h.sizes());
  TORCH_CHECK_TYPE(h.scalar_type() == at::kFloat || h.scalar_type() == at::kDouble, op,
                   " (cpu): h must be float32 or float64, got ", h.scalar_type());
  TORCH_CHECK_VALUE(h.device().is_cpu(), op, " (cpu): h must be on the CPU");
  TORCH_CHECK_VALUE(conv_weight.dim() == 3 && conv_weight.size(0) % 2 == 0 && conv_weight.size(0) > 0 &&
                        conv_weight.size(1) == h.size(1) && conv_weight.size(2) >= 1,
                    op, ": conv_weight must be (2G, R, K) with R = h.size(1) = ", h.size(1), ", got shape ",
                    conv_weight.sizes());
  TORCH_CHECK_VALUE(dilation >= 1, op, ": dilation must be >= 1, got ", dilation);
  Dims d;
  d.B = h.size(0);
  d.R = h.size(1);
  d.T = h_dims == 3 ? h.size(2) : 1;
  d.G = conv_weight.size(0) / 2;
  d.K = conv_weight.size(2);
  TORCH_CHECK_VALUE(skip_weight.dim() == 2 && skip_weight.size(1) == d.G, op, ": skip_weight must be (S, ", d.G,
                    "), got shape ", skip_weight.sizes());
  d.S = skip_weight.size(0);
  check_tensor(conv_weight, "conv_weight", conv_weight.sizes(), h);
  check_tensor(res_weight, "res_weight", {d.R, d.G}, h);
  check_tensor(skip_weight, "skip_weight", skip_weight.sizes(), h);
  check_opt(conv_bias, "conv_bias", {2 * d.G}, h);
  return d;
}

void check_cond(const c10::optional<at::Tensor>& cond, const Dims& d, const at::Tensor& h) {
  if (!cond.has_value()) return;
  TORCH_CHECK_VALUE(cond->dim() == 3 && cond->size(0) == d.B && cond->size(1) == 2 * d.G &&
                        (cond->size(2) == 1 || cond->size(2) == d.T),
                    "gated_residual_block: cond must be (B, 2G, 1) or (B, 2G, T) = (", d.B, ", ", 2 * d.G, ", 1 or ",
                    d.T, "), got shape ", cond->sizes());
  check_opt(cond, "cond", cond->sizes(), h);
}

// The conv's per-batch additive column: conv_bias plus a time-broadcast cond, (B, 2G, 1);
// undefined when there is neither.
at::Tensor column_bias(const c10::optional<at::Tensor>& conv_bias, const c10::optional<at::Tensor>& cond,
                       const Dims& d, const at::Tensor& h) {
  at::Tensor col;
  if (conv_bias.has_value()) col = conv_bias->view({1, 2 * d.G, 1}).expand({d.B, 2 * d.G, 1});
  if (cond.has_value() && cond->size(2) == 1) col = col.defined() ? col + *cond : *cond;
  return col.defined() ? col.contiguous() : col;
}

// The block's dilated conv, per tile: the two-tap Winograd kernel (two_tap_conv.h) when
// K = 2 and the dilation fills its lanes, with tiles of whole blocks of 2d times so that
// every pair (t, t + d) lies in one tile; else one GEMM per tap on time-shifted views.
struct Conv {
  at::Tensor taps;  // (K, 2G, R)
  c10::optional<TwoTapWeights> two_tap;
  int64_t tile = TILE;
};

// The backward's work items: segments of a sequence, of at least SEGMENT_TILES tiles, and
// long enough that there are at most MAX_ITEMS in all where the batch allows (each item
// has its own weight-gradient partials).
constexpr int64_t SEGMENT_TILES = 2, MAX_ITEMS = 32;

// Pairs need tiles of whole blocks of 2d times: beyond this a tile would be several times TILE.
constexpr int64_t MAX_PAIR_TILE = 1024;

Conv plan_conv(const at::Tensor& conv_weight, int64_t dilation, int64_t T) {
  Conv c{conv_weight.permute({2, 0, 1}).contiguous()};
  if (conv_weight.size(2) == 2 && dilation < T && 2 * dilation <= MAX_PAIR_TILE &&
      two_tap_conv_applies(conv_weight.scalar_type(), dilation)) {
    c.two_tap = pack_two_tap(conv_weight.select(2, 0), conv_weight.select(2, 1));
    c.tile = (TILE + 2 * dilation - 1) / (2 * dilation) * (2 * dilation);
  }
  return c;
}

// z (2G, n) for times [t0, t0 + n) of batch b, gated in place: z[:G] = tanh(a), z[G:] =
// sigmoid(b); g = their product.
void gated_tile(const at::Tensor& hb, const Conv& conv, const at::Tensor& col_b, const at::Tensor& cond_b, int64_t t0,
                int64_t n, int64_t dilation, at::Tensor& z, at::Tensor& g) {
  const int64_t K = conv.taps.size(0), G = g.size(0);
  if (conv.two_tap.has_value() && !cond_b.defined()) {
    AT_DISPATCH_FLOATING_TYPES(hb.scalar_type(), "gated_tile", [&] {
      two_tap_conv_range<scalar_t>(hb.data_ptr<scalar_t>(), hb.stride(0), hb.size(1), *conv.two_tap,
                                   col_b.defined() ? col_b.data_ptr<scalar_t>() : nullptr, -dilation, dilation, t0,
                                   t0 + n, z.data_ptr<scalar_t>(), z.stride(0), false);
    });
  } else {
    if (cond_b.defined()) {
      if (col_b.defined())
        at::add_out(z, cond_b.narrow(1, t0, n), col_b);
      else
        z.copy_(cond_b.narrow(1, t0, n));
    } else if (col_b.defined()) {
      z.copy_(col_b.expand({2 * G, n}));
    } else {
      z.zero_();
    }
    if (conv.two_tap.has_value()) {
      AT_DISPATCH_FLOATING_TYPES(hb.scalar_type(), "gated_tile", [&] {
        two_tap_conv_range<scalar_t>(hb.data_ptr<scalar_t>(), hb.stride(0), hb.size(1), *conv.two_tap, nullptr,
                                     -dilation, dilation, t0, t0 + n, z.data_ptr<scalar_t>(), z.stride(0), true);
      });
    } else {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t s = (K - 1 - k) * dilation, lo = std::max(t0, s), t1 = t0 + n;
        if (lo >= t1) continue;
        z.narrow(1, lo - t0, t1 - lo).addmm_(conv.taps[k], hb.narrow(1, lo - s, t1 - lo));
      }
    }
  }
  // tanh(a) = 2 sigmoid(2a) - 1: ATen's vectorized sigmoid is several times faster than its
  // tanh, and one sigmoid pass covers both halves (the cancellation near a = 0 costs an
  // absolute error of one ulp of 1, far below the gate's use).
  at::Tensor a = z.narrow(0, 0, G), bgate = z.narrow(0, G, G);
  a.mul_(2);
  z.sigmoid_();
  a.mul_(2).sub_(1);
  at::mul_out(g, a, bgate);
}

// Shifts beyond the sequence read nothing; clamping keeps (K-1)*dilation far from overflow.
int64_t clamp_dilation(int64_t dilation, int64_t T) { return std::min(dilation, std::max<int64_t>(T, 1)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> gated_residual_block_cpu(
    const at::Tensor& h_in, const at::Tensor& conv_weight, const c10::optional<at::Tensor>& conv_bias,
    const at::Tensor& res_weight, const c10::optional<at::Tensor>& res_bias, const at::Tensor& skip_weight,
    const c10::optional<at::Tensor>& skip_bias, const c10::optional<at::Tensor>& cond_in, int64_t dilation_in) {
  // The kernels compose ATen ops on the inputs, below autograd: keep it from recording them.
  at::NoGradGuard no_grad;
  const Dims d = check_args("gated_residual_block", 3, h_in, conv_weight, conv_bias, res_weight, skip_weight,
                            dilation_in);
  check_opt(res_bias, "res_bias", {d.R}, h_in);
  check_opt(skip_bias, "skip_bias", {d.S}, h_in);
  check_cond(cond_in, d, h_in);
  const int64_t dilation = clamp_dilation(dilation_in, d.T);
  const at::Tensor h = h_in.contiguous();
  const Conv conv = plan_conv(conv_weight, dilation, d.T);
  const at::Tensor col = column_bias(conv_bias, cond_in, d, h);
  const bool full_cond = cond_in.has_value() && cond_in->size(2) != 1;
  const at::Tensor cond = full_cond ? cond_in->contiguous() : at::Tensor();

  at::Tensor h_out = at::empty({d.B, d.R, d.T}, h.options());
  at::Tensor skip = at::empty({d.B, d.S, d.T}, h.options());
  at::Tensor gates = at::empty({d.B, 2 * d.G, d.T}, h.options());
  const int64_t tile = conv.tile, n_tiles = (d.T + tile - 1) / tile;
  at::parallel_for(0, d.B * n_tiles, 1, [&](int64_t begin, int64_t end) {
    at::NoGradGuard worker_no_grad;  // grad mode is thread-local: OpenMP workers start with it on
    at::Tensor g = at::empty({d.G, tile}, h.options());
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / n_tiles, t0 = (i % n_tiles) * tile, n = std::min(tile, d.T - t0);
      at::Tensor zt = gates[b].narrow(1, t0, n), gt = g.narrow(1, 0, n);
      gated_tile(h[b], conv, col.defined() ? col[b] : col, full_cond ? cond[b] : cond, t0, n, dilation, zt, gt);
      // The 1x1 convs accumulate in place into their outputs, initialized with the biases
      // (and h): no intermediate tile to copy out.
      at::Tensor skip_t = skip[b].narrow(1, t0, n), h_out_t = h_out[b].narrow(1, t0, n);
      if (skip_bias.has_value())
        at::addmm_out(skip_t, skip_bias->unsqueeze(1), skip_weight, gt);
      else
        at::mm_out(skip_t, skip_weight, gt);
      if (res_bias.has_value())
        at::add_out(h_out_t, h[b].narrow(1, t0, n), res_bias->unsqueeze(1));
      else
        h_out_t.copy_(h[b].narrow(1, t0, n));
      h_out_t.addmm_(res_weight, gt);
    }
  });
  return {h_out, skip, gates};
}

template <typename scalar_t>
void gate_backward(const scalar_t* __restrict__ dg, const scalar_t* __restrict__ ta, const scalar_t* __restrict__ sb,
                   scalar_t* __restrict__ da, scalar_t* __restrict__ db, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t t = ta[i], s = sb[i], gi = dg[i];
    da[i] = gi * s * (scalar_t(1) - t * t);
    db[i] = gi * t * s * (scalar_t(1) - s);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gated_residual_block_backward_cpu(const at::Tensor& grad_h_out_in, const at::Tensor& grad_skip_in,
                                  const at::Tensor& h_in, const at::Tensor& gates_in, const at::Tensor& conv_weight,
                                  const c10::optional<at::Tensor>& conv_bias, const at::Tensor& res_weight,
                                  const at::Tensor& skip_weight, const c10::optional<at::Tensor>& cond_in,
                                  int64_t dilation_in, std::array<bool, 8> mask) {
  // The kernels compose ATen ops on the inputs, below autograd: keep it from recording them.
  at::NoGradGuard no_grad;
  const Dims d = check_args("gated_residual_block_backward", 3, h_in, conv_weight, conv_bias, res_weight,
                            skip_weight, dilation_in);
  check_cond(cond_in, d, h_in);
  check_tensor(grad_h_out_in, "grad_h_out", {d.B, d.R, d.T}, h_in);
  check_tensor(grad_skip_in, "grad_skip", {d.B, d.S, d.T}, h_in);
  check_tensor(gates_in, "gates", {d.B, 2 * d.G, d.T}, h_in);
  const int64_t dilation = clamp_dilation(dilation_in, d.T);
  const at::Tensor h = h_in.contiguous(), dh_out = grad_h_out_in.contiguous(), dskip = grad_skip_in.contiguous();
  const at::Tensor gates = gates_in.contiguous();
  const at::Tensor taps_t = conv_weight.permute({2, 1, 0}).contiguous();  // (K, R, 2G)
  const at::Tensor wr_t = res_weight.t().contiguous(), ws_t = skip_weight.t().contiguous();  // (G, R), (G, S)
  const bool full_cond = cond_in.has_value() && cond_in->size(2) != 1;
  const auto opt = h.options();
  // Distinct empty tensors for the gradients not requested: outputs must not alias.
  const auto none = [&] { return at::empty({0}, opt); };

  const bool need_h = mask[0], need_conv_w = mask[1], need_conv_b = mask[2] && conv_bias.has_value();
  const bool need_res_w = mask[3], need_skip_w = mask[5], need_cond = mask[7] && cond_in.has_value();
  const bool need_dz = need_h || need_conv_w || need_conv_b || need_cond;
  const bool need_1x1 = need_res_w || need_skip_w;

  // Work items: (sequence, segment of whole tiles), each owned by one thread, which runs its
  // tiles in order. dz at t feeds grad_h at t - s (s up to reach): into an earlier tile of
  // the item's own segment, or, before the segment, into the item's carry, added to grad_h
  // once every item is done (segments are at least reach long, so a carry lands in the
  // segment before). Segments are fixed by the shapes, so that a short batch still spreads
  // over the threads and the sums are the same whatever the thread count.
  const int64_t n_tiles = (d.T + TILE - 1) / TILE, reach = (d.K - 1) * dilation;
  const int64_t segs_wanted = std::max<int64_t>(MAX_ITEMS / d.B, 1);
  const int64_t seg_tiles =
      std::max({SEGMENT_TILES, (reach + TILE - 1) / TILE, (n_tiles + segs_wanted - 1) / segs_wanted});
  const int64_t n_segs = (n_tiles + seg_tiles - 1) / seg_tiles, items = d.B * n_segs;
  // An item's sequence and the first time of its segment.
  const auto segment = [&](int64_t item) {
    return std::pair<int64_t, int64_t>(item / n_segs, item % n_segs * seg_tiles * TILE);
  };
  at::Tensor grad_h = need_h ? dh_out.clone() : none();
  at::Tensor carry = need_h && n_segs > 1 && reach > 0 ? at::zeros({items, d.R, reach}, opt) : at::Tensor();
  at::Tensor grad_cond_full = need_cond && full_cond ? at::empty({d.B, 2 * d.G, d.T}, opt) : at::Tensor();
  // Per-item partials, summed over the items in order at the end.
  at::Tensor conv_w_part = need_conv_w ? at::zeros({items, d.K, 2 * d.G, d.R}, opt) : none();
  at::Tensor res_w_part = need_res_w ? at::zeros({items, d.R, d.G}, opt) : none();
  at::Tensor skip_w_part = need_skip_w ? at::zeros({items, d.S, d.G}, opt) : none();
  at::Tensor dz_sum = (need_conv_b || (need_cond && !full_cond)) ? at::zeros({items, 2 * d.G}, opt) : at::Tensor();

  if (need_dz || need_1x1) {
    at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
      at::NoGradGuard worker_no_grad;
      at::Tensor g = at::empty({d.G, TILE}, opt), dg = at::empty({d.G, TILE}, opt);
      at::Tensor dz = at::empty({2 * d.G, TILE}, opt);
      for (int64_t item = begin; item < end; ++item) {
        const auto [b, seg_start] = segment(item);
        const at::Tensor hb = h[b], dhb = dh_out[b], dsb = dskip[b], gb = gates[b];
        const int64_t first_tile = seg_start / TILE;
        for (int64_t tile = first_tile; tile < std::min(n_tiles, first_tile + seg_tiles); ++tile) {
          const int64_t t0 = tile * TILE, n = std::min(TILE, d.T - t0);
          const at::Tensor dh_t = dhb.narrow(1, t0, n), ds_t = dsb.narrow(1, t0, n);
          if (need_1x1) {
            at::Tensor gt = g.narrow(1, 0, n);
            at::mul_out(gt, gb.narrow(0, 0, d.G).narrow(1, t0, n), gb.narrow(0, d.G, d.G).narrow(1, t0, n));
            if (need_res_w) res_w_part[item].addmm_(dh_t, gt.t());
            if (need_skip_w) skip_w_part[item].addmm_(ds_t, gt.t());
          }
          if (!need_dz) continue;
          at::Tensor dgt = dg.narrow(1, 0, n), dzt = dz.narrow(1, 0, n);
          at::mm_out(dgt, wr_t, dh_t);
          dgt.addmm_(ws_t, ds_t);
          AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "gated_residual_block_backward", [&] {
            // Raw row pointers: a tensor view per row costs more than the row.
            const scalar_t* dgp = dg.data_ptr<scalar_t>();
            const scalar_t* ap = gb.data_ptr<scalar_t>() + t0;  // rows of stride T
            scalar_t* dzp = dz.data_ptr<scalar_t>();
            for (int64_t c = 0; c < d.G; ++c)
              gate_backward<scalar_t>(dgp + c * TILE, ap + c * d.T, ap + (d.G + c) * d.T, dzp + c * TILE,
                                      dzp + (d.G + c) * TILE, n);
          });
          if (dz_sum.defined()) dz_sum[item].add_(dzt.sum(1));
          if (grad_cond_full.defined()) grad_cond_full[b].narrow(1, t0, n).copy_(dzt);
          for (int64_t k = 0; k < d.K; ++k) {
            // z at time t reads h at t - s: dz at times [lo, t1) feeds grad_h at [o0, o1).
            const int64_t s = (d.K - 1 - k) * dilation, lo = std::max(t0, s), t1 = t0 + n;
            if (lo >= t1) continue;
            const at::Tensor dz_k = dzt.narrow(1, lo - t0, t1 - lo);
            if (need_conv_w) conv_w_part[item][k].addmm_(dz_k, hb.narrow(1, lo - s, t1 - lo).t());
            if (!need_h) continue;
            const int64_t o0 = lo - s, o1 = t1 - s, mid = std::clamp(seg_start, o0, o1);
            if (mid < o1) grad_h[b].narrow(1, mid, o1 - mid).addmm_(taps_t[k], dz_k.narrow(1, mid - o0, o1 - mid));
            if (o0 < mid)  // before the segment: its carry holds times [seg_start - reach, seg_start)
              carry[item].narrow(1, o0 - (seg_start - reach), mid - o0).addmm_(taps_t[k], dz_k.narrow(1, 0, mid - o0));
          }
        }
      }
    });
  }
  if (carry.defined()) {
    at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
      at::NoGradGuard worker_no_grad;
      for (int64_t item = begin; item < end; ++item) {
        const auto [b, seg_start] = segment(item);
        if (seg_start > 0) grad_h[b].narrow(1, seg_start - reach, reach).add_(carry[item]);
      }
    });
  }
  if (dz_sum.defined()) dz_sum = dz_sum.view({d.B, n_segs, 2 * d.G}).sum(1);
  at::Tensor grad_conv_w = need_conv_w ? conv_w_part.sum(0).permute({1, 2, 0}).contiguous() : none();
  at::Tensor grad_conv_b = need_conv_b ? dz_sum.sum(0) : none();
  at::Tensor grad_res_w = need_res_w ? res_w_part.sum(0) : none();
  at::Tensor grad_res_b = mask[4] ? dh_out.sum({0, 2}) : none();
  at::Tensor grad_skip_w = need_skip_w ? skip_w_part.sum(0) : none();
  at::Tensor grad_skip_b = mask[6] ? dskip.sum({0, 2}) : none();
  at::Tensor grad_cond = none();
  if (need_cond) grad_cond = full_cond ? grad_cond_full : dz_sum.unsqueeze(2).clone();
  return {grad_h, grad_conv_w, grad_conv_b, grad_res_w, grad_res_b, grad_skip_w, grad_skip_b, grad_cond};
}

// At most this many examples per step: the direct loops below, one pass over the weights
// per example, instead of ATen's GEMMs, whose per-call costs (allocations, the concatenated
// 1x1 weights, dispatch) are most of a step at batch 1 (53 -> 12 us per block, residual
// 64, gate 2x64, skip 256, with the window filled from h_t in the same pass).
constexpr int64_t DIRECT_STEP_BATCH = 4;

// out[r] = W[r, :n] . x for r < rows (W row-major, leading dimension ld): four rows at a
// time, each over 8 lanes, so that the sums are 32 independent chains instead of one
// latency-bound reduction per row.
template <typename T>
void dot_rows(const T* W, int64_t ld, const T* x, int64_t n, int64_t rows, T* out) {
  constexpr int ROWS = 4, LANES = 8;
  const int64_t body = n - n % LANES;
  int64_t r = 0;
  const auto finish = [&](const T* lanes, const T* w) {
    T sum = 0;
    for (int v = 0; v < LANES; ++v) sum += lanes[v];
    for (int64_t i = body; i < n; ++i) sum += w[i] * x[i];
    return sum;
  };
  for (; r + ROWS <= rows; r += ROWS) {
    T acc[ROWS][LANES] = {};
    for (int64_t i = 0; i < body; i += LANES)
      for (int k = 0; k < ROWS; ++k)
#pragma omp simd
        for (int v = 0; v < LANES; ++v) acc[k][v] += W[(r + k) * ld + i + v] * x[i + v];
    for (int k = 0; k < ROWS; ++k) out[r + k] = finish(acc[k], W + (r + k) * ld);
  }
  for (; r < rows; ++r) {
    T acc[LANES] = {};
    for (int64_t i = 0; i < body; i += LANES)
#pragma omp simd
      for (int v = 0; v < LANES; ++v) acc[v] += W[r * ld + i + v] * x[i + v];
    out[r] = finish(acc, W + r * ld);
  }
}

// The step's products for a few examples: z = W_conv . window (+ bias, cond), the gate, and
// the residual and skip 1x1 convs, as dot products of contiguous weight rows.
std::tuple<at::Tensor, at::Tensor> block_step_direct(
    const at::Tensor& window, const at::Tensor& h_t, const at::Tensor& conv_weight,
    const c10::optional<at::Tensor>& conv_bias, const at::Tensor& res_weight, const c10::optional<at::Tensor>& res_bias,
    const at::Tensor& skip_weight, const c10::optional<at::Tensor>& skip_bias, const c10::optional<at::Tensor>& cond_t,
    const Dims& d) {
  at::Tensor h_out = at::empty({d.B, d.R}, h_t.options()), skip = at::empty({d.B, d.S}, h_t.options());
  const at::Tensor cw = conv_weight.contiguous(), rw = res_weight.contiguous(), sw = skip_weight.contiguous();
  const at::Tensor x = h_t.contiguous();
  const at::Tensor cb = conv_bias.has_value() ? conv_bias->contiguous() : at::Tensor();
  const at::Tensor rb = res_bias.has_value() ? res_bias->contiguous() : at::Tensor();
  const at::Tensor sb = skip_bias.has_value() ? skip_bias->contiguous() : at::Tensor();
  const at::Tensor cond = cond_t.has_value() ? cond_t->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(h_t.scalar_type(), "gated_residual_block_step_direct", [&] {
    const auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr; };
    const scalar_t *W = ptr(cw), *Wr = ptr(rw), *Ws = ptr(sw), *bc = ptr(cb), *br = ptr(rb), *bs = ptr(sb);
    const scalar_t *c = ptr(cond), *xp = ptr(x), *win = window.const_data_ptr<scalar_t>();
    scalar_t* ho = h_out.data_ptr<scalar_t>();
    scalar_t* so = skip.data_ptr<scalar_t>();
    const int64_t RK = d.R * d.K, G = d.G;
    std::vector<scalar_t> z(2 * G), g(G);
    for (int64_t b = 0; b < d.B; ++b) {
      dot_rows(W, RK, win + b * RK, RK, 2 * G, z.data());
      for (int64_t o = 0; o < 2 * G; ++o) z[o] += (bc ? bc[o] : scalar_t(0)) + (c ? c[b * 2 * G + o] : scalar_t(0));
      for (int64_t j = 0; j < G; ++j) g[j] = std::tanh(z[j]) / (scalar_t(1) + std::exp(-z[G + j]));
      scalar_t* hb = ho + b * d.R;
      scalar_t* sk = so + b * d.S;
      dot_rows(Wr, G, g.data(), G, d.R, hb);
      for (int64_t r = 0; r < d.R; ++r) hb[r] = xp[b * d.R + r] + (hb[r] + (br ? br[r] : scalar_t(0)));
      dot_rows(Ws, G, g.data(), G, d.S, sk);
      if (bs)
        for (int64_t k = 0; k < d.S; ++k) sk[k] += bs[k];
    }
  });
  return {h_out, skip};
}

// The step's shared state convention (see fastgen/ops/gated_residual_block.py): state (B,
// R, L), L = (K-1) * dilation; without position a shift register (newest last), with
// position a ring buffer where time p - j*d sits at slot (p - j*d) mod L.
std::tuple<at::Tensor, at::Tensor> gated_residual_block_step_cpu(
    const at::Tensor& h_t, at::Tensor& state, const at::Tensor& conv_weight, const c10::optional<at::Tensor>& conv_bias,
    const at::Tensor& res_weight, const c10::optional<at::Tensor>& res_bias, const at::Tensor& skip_weight,
    const c10::optional<at::Tensor>& skip_bias, const c10::optional<at::Tensor>& cond_t, int64_t dilation,
    const c10::optional<at::Tensor>& position) {
  // The kernels compose ATen ops on the inputs, below autograd: keep it from recording them.
  at::NoGradGuard no_grad;
  const Dims d = check_args("gated_residual_block_step", 2, h_t, conv_weight, conv_bias, res_weight, skip_weight,
                            dilation);
  check_opt(res_bias, "res_bias", {d.R}, h_t);
  check_opt(skip_bias, "skip_bias", {d.S}, h_t);
  check_opt(cond_t, "cond_t", {d.B, 2 * d.G}, h_t);
  TORCH_CHECK_VALUE(d.K == 1 || dilation <= std::numeric_limits<int64_t>::max() / (d.K - 1),
                    "gated_residual_block_step: (K - 1) * dilation overflows int64");
  const int64_t L = (d.K - 1) * dilation;
  check_tensor(state, "state", {d.B, d.R, L}, h_t);
  TORCH_CHECK_VALUE(L == 0 || state.stride(2) == 1, "gated_residual_block_step: state must be contiguous in its last "
                    "dimension (stride(-1) == 1), got strides ", state.strides());
  if (position.has_value()) {
    TORCH_CHECK_VALUE(position->dim() == 1 && position->size(0) == d.B && position->scalar_type() == at::kLong &&
                          position->device().is_cpu(),
                      "gated_residual_block_step: position must be an int64 CPU tensor of shape (", d.B,
                      ",), got shape ", position->sizes(), " and dtype ", position->scalar_type());
  }
  // window[:, :, k] = h at time t - (K-1-k) * dilation; the last tap is h_t itself.
  at::Tensor window = at::empty({d.B, d.R, d.K}, h_t.options());
  const at::Tensor pos = position.has_value() ? position->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(h_t.scalar_type(), "gated_residual_block_step", [&] {
    const int64_t* p = pos.defined() ? pos.data_ptr<int64_t>() : nullptr;
    scalar_t* w = window.data_ptr<scalar_t>();
    const scalar_t* st = state.const_data_ptr<scalar_t>();
    const scalar_t* x = h_t.const_data_ptr<scalar_t>();
    for (int64_t b = 0; b < d.B; ++b) {
      const int64_t base = (p && L > 0) ? ((p[b] % L + L) % L) : 0;
      for (int64_t r = 0; r < d.R; ++r) {
        const scalar_t* row = st + b * state.stride(0) + r * state.stride(1);
        for (int64_t k = 0; k + 1 < d.K; ++k) {
          const int64_t back = (d.K - 1 - k) * dilation;
          const int64_t slot = p ? (base - back % L + L) % L : L - back;
          w[(b * d.R + r) * d.K + k] = row[slot];
        }
        w[(b * d.R + r) * d.K + d.K - 1] = x[b * h_t.stride(0) + r * h_t.stride(1)];
      }
    }
  });
  at::Tensor h_out, skip;
  if (d.B <= DIRECT_STEP_BATCH) {
    std::tie(h_out, skip) = block_step_direct(window, h_t, conv_weight, conv_bias, res_weight, res_bias, skip_weight,
                                              skip_bias, cond_t, d);
  } else {
    at::Tensor z = at::mm(window.view({d.B, d.R * d.K}), conv_weight.reshape({2 * d.G, d.R * d.K}).t());  // (B, 2G)
    if (conv_bias.has_value()) z.add_(*conv_bias);
    if (cond_t.has_value()) z.add_(*cond_t);
    at::Tensor g = z.narrow(1, 0, d.G).tanh() * z.narrow(1, d.G, d.G).sigmoid();  // (B, G)
    at::Tensor o = at::mm(g, at::cat({res_weight, skip_weight}, 0).t());  // (B, R + S)
    h_out = h_t + o.narrow(1, 0, d.R);
    skip = o.narrow(1, d.R, d.S).contiguous();
    if (res_bias.has_value()) h_out.add_(*res_bias);
    if (skip_bias.has_value()) skip.add_(*skip_bias);
  }
  if (L > 0) {
    AT_DISPATCH_FLOATING_TYPES(h_t.scalar_type(), "gated_residual_block_step_update", [&] {
      const int64_t* p = pos.defined() ? pos.data_ptr<int64_t>() : nullptr;
      const at::Tensor x = h_t.contiguous();
      const scalar_t* xp = x.data_ptr<scalar_t>();
      scalar_t* st = state.data_ptr<scalar_t>();
      for (int64_t b = 0; b < d.B; ++b) {
        const int64_t slot = p ? (p[b] % L + L) % L : L - 1;
        for (int64_t r = 0; r < d.R; ++r) {
          scalar_t* row = st + b * state.stride(0) + r * state.stride(1);
          if (!p) std::memmove(row, row + 1, (L - 1) * sizeof(scalar_t));
          row[slot] = xp[b * d.R + r];
        }
      }
    });
  }
  return {h_out, skip};
}

// The blocks of a WaveNet stack stepped in one call: the same step per block, without a
// trip through Python and the dispatcher for each (about 8 us of a 12 us block at batch 1).
std::tuple<at::Tensor, at::Tensor> gated_residual_stack_step_cpu(
    const at::Tensor& h_t, at::TensorList states, at::TensorList conv_weights, at::TensorList gate_biases,
    at::TensorList res_weights, at::TensorList res_biases, at::TensorList skip_weights, at::TensorList skip_biases,
    at::IntArrayRef dilations, const c10::optional<at::Tensor>& position) {
  const size_t n = states.size();
  TORCH_CHECK_VALUE(n > 0, "gated_residual_stack_step: needs at least one block");
  for (const size_t size : {conv_weights.size(), gate_biases.size(), res_weights.size(), res_biases.size(),
                            skip_weights.size(), skip_biases.size(), dilations.size()})
    TORCH_CHECK_VALUE(size == n, "gated_residual_stack_step: every list must have one entry per block (", n,
                      " states), got one of ", size);
  at::Tensor h = h_t, skip_sum;
  for (size_t l = 0; l < n; ++l) {
    at::Tensor state = states[l], skip;
    std::tie(h, skip) = gated_residual_block_step_cpu(h, state, conv_weights[l], c10::nullopt, res_weights[l],
                                                      res_biases[l], skip_weights[l], skip_biases[l], gate_biases[l],
                                                      dilations[l], position);
    TORCH_CHECK_VALUE(l == 0 || skip.sizes() == skip_sum.sizes(),
                      "gated_residual_stack_step: every block must have the same skip channels");
    skip_sum = l == 0 ? skip : skip_sum.add_(skip);
  }
  return {h, skip_sum};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("gated_residual_block", &gated_residual_block_cpu);
  m.impl("gated_residual_block_backward", &gated_residual_block_backward_cpu);
  m.impl("gated_residual_block_step", &gated_residual_block_step_cpu);
  m.impl("gated_residual_stack_step", &gated_residual_stack_step_cpu);
}

}  // namespace fastgen::cpu
