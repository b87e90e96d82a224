// Masked linear layer on the CPU, y = x (W * M)^T + b: forward, and the gradients of x, W
// and b (fastgen/ops/masked_linear.py has the math). Only the blocks of W that the mask
// keeps are multiplied.
//
// Tiles. The mask is cut into TILE x TILE tiles (rows: outputs, columns: inputs), each
// all-zero (skipped), all-one ("dense": W is used as it is) or mixed (W masked). MADE's
// masks are staircases once the units are sorted by degree: output row o sees a prefix of
// the inputs that grows with o, so along each band of TILE rows the tiles are dense up to
// the step, mixed (one to three) where the step crosses the band, and zero after it: about
// half of W is never read. A band's tiles form runs of one kind ("rects"); a dense rect is
// a view of W, a mixed one a masked copy of that block of W. Any mask is correct (a random
// one is one mixed rect per band: a masked copy of W, like the reference's); only block
// structure makes it faster.
//
// Products: every rect is one GEMM (MKL through at::mm_out / addmm_ on strided views):
//   forward  y[:, rows]  = b[rows] + sum over the row band's rects  x[:, cols] @ W_rect^T
//   grad_x   gx[:, cols] = sum over the column band's rects  gy[:, rows] @ W_rect
//   grad_W   gW[rows, span] = gy[:, rows]^T @ x[:, span]  per span of touching rects of a row
//            band, then zeroed where the mask is 0 in its mixed rects; 0 outside the spans.
// Each band writes its own slice of the result, so the bands run in parallel, each GEMM on
// one thread (see for_each_band).
//
// The tile kinds are found again on every call (the forward, and once for the backward):
// one pass over the mask, 1-2% of a MADE layer's forward and backward here (784 -> 2048 ->
// 2048 -> 784 units, batch 256), so they are not cached across calls (a cache would have to
// notice in-place edits of the mask).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <vector>

namespace fastgen::cpu {
namespace {

// Tile side: small enough that a staircase wastes little (a band computes at most about a
// tile-wide strip of masked zeros along the step), large enough that each GEMM runs near
// MKL's peak (measured: 64-column panels as fast as one whole GEMM; 32 about 10% slower).
constexpr int64_t TILE = 64;
// Bands per thread below which the bands run one after the other, MKL threading each GEMM.
constexpr int64_t BANDS_PER_THREAD = 4;

enum class Kind : uint8_t { zero, dense, mixed };

const uint8_t* mask_bytes(const at::Tensor& mask) {
  return reinterpret_cast<const uint8_t*>(mask.const_data_ptr<bool>());
}

struct Tiles {
  int64_t rows, cols;       // tile counts
  std::vector<Kind> kinds;  // rows x cols
  Kind at(int64_t r, int64_t c) const { return kinds[r * cols + c]; }
};

// The kind of every tile, from one pass over the (contiguous) mask: per band of TILE rows,
// the OR and the AND of its rows (long vectorized loops), then of each tile's columns.
// Bool bytes are 0 or 1; any other byte can only turn a dense tile into a mixed one.
Tiles tile_kinds(const at::Tensor& mask) {
  const int64_t out = mask.size(0), in = mask.size(1);
  Tiles tiles{(out + TILE - 1) / TILE, (in + TILE - 1) / TILE, {}};
  tiles.kinds.resize(tiles.rows * tiles.cols);
  const uint8_t* m = mask_bytes(mask);
  at::parallel_for(0, tiles.rows, 1, [&](int64_t t0, int64_t t1) {
    std::vector<uint8_t> any(in), all(in);
    for (int64_t rt = t0; rt < t1; ++rt) {
      std::fill(any.begin(), any.end(), 0);
      std::fill(all.begin(), all.end(), 1);
      uint8_t* a = any.data();
      uint8_t* b = all.data();
      for (int64_t r = rt * TILE; r < std::min(out, (rt + 1) * TILE); ++r) {
        const uint8_t* row = m + r * in;
#pragma omp simd
        for (int64_t c = 0; c < in; ++c) {
          a[c] |= row[c];
          b[c] &= row[c];
        }
      }
      for (int64_t ct = 0; ct < tiles.cols; ++ct) {
        uint8_t tile_any = 0, tile_all = 1;
        for (int64_t c = ct * TILE; c < std::min(in, (ct + 1) * TILE); ++c) {
          tile_any |= a[c];
          tile_all &= b[c];
        }
        tiles.kinds[rt * tiles.cols + ct] = !tile_any ? Kind::zero : tile_all == 1 ? Kind::dense : Kind::mixed;
      }
    }
  });
  return tiles;
}

// A block of W of one kind (dense or mixed): rows [r0, r1) x columns [c0, c1).
struct Rect {
  int64_t r0, r1, c0, c1;
  Kind kind;
};

// A band of TILE rows of W (outputs [lo, hi): forward, grad_W) or of TILE columns (inputs
// [lo, hi): grad_x), as the runs of same-kind non-zero tiles along it: the products of
// its rects all land in the band's slice of the result.
struct Band {
  int64_t lo, hi;
  std::vector<Rect> rects;
  int64_t work = 0;  // elements of W multiplied
};

std::vector<Band> make_bands(const Tiles& tiles, int64_t out, int64_t in, bool of_rows) {
  const int64_t n_bands = of_rows ? tiles.rows : tiles.cols, n_along = of_rows ? tiles.cols : tiles.rows;
  const int64_t extent = of_rows ? out : in, extent_along = of_rows ? in : out;
  std::vector<Band> bands;
  for (int64_t b = 0; b < n_bands; ++b) {
    Band band{b * TILE, std::min(extent, (b + 1) * TILE), {}};
    const auto kind = [&](int64_t t) { return of_rows ? tiles.at(b, t) : tiles.at(t, b); };
    for (int64_t t = 0; t < n_along;) {
      int64_t stop = t + 1;
      while (stop < n_along && kind(stop) == kind(t)) ++stop;
      if (kind(t) != Kind::zero) {
        const int64_t a0 = t * TILE, a1 = std::min(extent_along, stop * TILE);
        band.rects.push_back(of_rows ? Rect{band.lo, band.hi, a0, a1, kind(t)}
                                     : Rect{a0, a1, band.lo, band.hi, kind(t)});
        band.work += (band.hi - band.lo) * (a1 - a0);
      }
      t = stop;
    }
    bands.push_back(std::move(band));
  }
  return bands;
}

// dst = mask ? src : 0 over a (rows x width) block; src may be dst. Branch-free, by the
// bits: src's AND all ones or all zeros (+0.0), so that whatever a masked entry holds, inf
// or NaN, it is never read as a number, and a random mask costs no mispredicted branches
// (per entry of a random 256 x 256 mask, a branch took 4 ns, the batch-256 GEMM after it 6).
template <typename T>
void select(const T* src, int64_t src_ld, const uint8_t* mask, int64_t mask_ld, T* dst, int64_t dst_ld,
            int64_t rows, int64_t width) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  static_assert(sizeof(Bits) == sizeof(T));
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * src_ld;
    const uint8_t* m = mask + r * mask_ld;
    T* d = dst + r * dst_ld;
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) {
      Bits bits;
      std::memcpy(&bits, s + c, sizeof(T));
      bits &= Bits(0) - Bits(m[c] != 0);
      std::memcpy(d + c, &bits, sizeof(T));
    }
  }
}

// W on a rect, (rows x width): a view of W (dense) or a masked copy (mixed).
at::Tensor rect_weight(const Rect& rect, const at::Tensor& weight, const at::Tensor& mask) {
  const int64_t rows = rect.r1 - rect.r0, width = rect.c1 - rect.c0, in = weight.size(1);
  const at::Tensor w = weight.narrow(0, rect.r0, rows).narrow(1, rect.c0, width);
  if (rect.kind == Kind::dense) return w;
  at::Tensor masked = at::empty({rows, width}, weight.options());
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "masked_linear_pack", [&] {
    select(w.const_data_ptr<scalar_t>(), in, mask_bytes(mask) + rect.r0 * in + rect.c0, in,
           masked.data_ptr<scalar_t>(), width, rows, width);
  });
  return masked;
}

// Runs f(band) for every band. Bands differ in work (a staircase's grow along it), so with
// enough of them each thread takes the next largest band left and runs its GEMMs itself
// (MKL is sequential inside a parallel region); with few, they run in turn and MKL threads
// each GEMM.
template <class F>
void for_each_band(const std::vector<Band>& bands, const F& f) {
  const int64_t n = bands.size(), threads = at::get_num_threads();
  if (threads == 1 || n < BANDS_PER_THREAD * threads) {
    for (const Band& band : bands) f(band);
    return;
  }
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return bands[a].work > bands[b].work; });
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    // Worker threads do not inherit the caller's autograd state; the inputs may require
    // grad, and the GEMMs write into out= tensors, which autograd refuses.
    at::NoGradGuard worker_no_grad;
    for (int64_t i = next++; i < n; i = next++) f(bands[order[i]]);
  });
}

// The op can be called directly through torch.ops, so it checks everything that could
// make it read out of bounds; fastgen.ops.masked_linear gives friendlier errors first.
void check_args(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be (B, in_features), got shape ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == x.size(1), op,
                    ": weight must be (out_features, in_features) with in_features = ", x.size(1), ", got shape ",
                    weight.sizes());
  TORCH_CHECK_VALUE(mask.sizes() == weight.sizes(), op, ": mask must have weight's shape ", weight.sizes(), ", got ",
                    mask.sizes());
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, op, ": mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK_TYPE(x.scalar_type() == weight.scalar_type() &&
                       (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
                   op, " (cpu): x and weight must both be float32 or float64, got ", x.scalar_type(), " and ",
                   weight.scalar_type());
  TORCH_CHECK_VALUE(x.device().is_cpu() && weight.device().is_cpu() && mask.device().is_cpu(), op,
                    " (cpu): tensors must be on the CPU");
}

at::Tensor masked_linear_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                             const c10::optional<at::Tensor>& bias, const at::Tensor& mask_in) {
  check_args("masked_linear", x_in, weight_in, mask_in);
  const int64_t out = weight_in.size(0);
  if (bias.has_value())
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out && bias->scalar_type() == x_in.scalar_type() &&
                          bias->device().is_cpu(),
                      "masked_linear: bias must be a (out_features,) = (", out,
                      ",) CPU tensor of x's dtype, got shape ", bias->sizes(), " and dtype ", bias->scalar_type());
  // Contiguous once here: every GEMM takes a column slice of x and a block of W.
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous(), mask = mask_in.contiguous();
  at::Tensor y = at::empty({x.size(0), out}, x.options());
  for_each_band(make_bands(tile_kinds(mask), out, x.size(1), true), [&](const Band& band) {
    at::Tensor yb = y.narrow(1, band.lo, band.hi - band.lo);  // (B, rows), row stride out: BLAS takes it as is
    const c10::optional<at::Tensor> bb =
        bias.has_value() ? c10::optional<at::Tensor>(bias->narrow(0, band.lo, band.hi - band.lo)) : c10::nullopt;
    bool first = true;
    for (const Rect& rect : band.rects) {
      const at::Tensor xs = x.narrow(1, rect.c0, rect.c1 - rect.c0);
      const at::Tensor wt = rect_weight(rect, weight, mask).t();
      if (!first)
        yb.addmm_(xs, wt);
      else if (bb.has_value())
        at::addmm_out(yb, bb->unsqueeze(0), xs, wt);
      else
        at::mm_out(yb, xs, wt);
      first = false;
    }
    if (first) {  // every tile of the band is zero
      if (bb.has_value())
        yb.copy_(bb->unsqueeze(0).expand_as(yb));
      else
        yb.zero_();
    }
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward_cpu(const at::Tensor& grad_out_in,
                                                                          const at::Tensor& x_in,
                                                                          const at::Tensor& weight_in,
                                                                          const at::Tensor& mask_in,
                                                                          std::array<bool, 3> output_mask) {
  check_args("masked_linear_backward", x_in, weight_in, mask_in);
  TORCH_CHECK_VALUE(grad_out_in.sizes() == at::IntArrayRef({x_in.size(0), weight_in.size(0)}) &&
                        grad_out_in.scalar_type() == x_in.scalar_type() && grad_out_in.device().is_cpu(),
                    "masked_linear_backward: grad_out must be (B, out_features) = (", x_in.size(0), ", ",
                    weight_in.size(0), ") of x's dtype, got shape ", grad_out_in.sizes());
  const at::Tensor grad_out = grad_out_in.contiguous(), mask = mask_in.contiguous();
  const int64_t out = weight_in.size(0), in = weight_in.size(1);
  at::Tensor grad_x = at::empty({0}, x_in.options()), grad_w = at::empty({0}, x_in.options());
  at::Tensor grad_b = at::empty({0}, x_in.options());
  const Tiles tiles = output_mask[0] || output_mask[1] ? tile_kinds(mask) : Tiles{0, 0, {}};
  if (output_mask[0]) {
    // By bands of inputs: each band's columns of grad_x are one GEMM per rect, in one thread.
    const at::Tensor weight = weight_in.contiguous();
    grad_x = at::empty(x_in.sizes(), x_in.options());
    for_each_band(make_bands(tiles, out, in, false), [&](const Band& band) {
      at::Tensor gxb = grad_x.narrow(1, band.lo, band.hi - band.lo);
      bool first = true;
      for (const Rect& rect : band.rects) {
        const at::Tensor gy = grad_out.narrow(1, rect.r0, rect.r1 - rect.r0);
        const at::Tensor w = rect_weight(rect, weight, mask);
        if (first)
          at::mm_out(gxb, gy, w);
        else
          gxb.addmm_(gy, w);
        first = false;
      }
      if (first) gxb.zero_();  // an input no output sees
    });
  }
  if (output_mask[1]) {
    const at::Tensor x = x_in.contiguous();
    grad_w = at::empty(weight_in.sizes(), x.options());
    const uint8_t* m = mask_bytes(mask);
    for_each_band(make_bands(tiles, out, in, true), [&](const Band& band) {
      const int64_t rows = band.hi - band.lo;
      at::Tensor gwb = grad_w.narrow(0, band.lo, rows);
      const at::Tensor gyt = grad_out.narrow(1, band.lo, rows).t();  // (rows, B)
      int64_t done = 0;  // columns [0, done) are written
      for (size_t i = 0; i < band.rects.size();) {
        size_t j = i + 1;  // rects [i, j) touch: one span of non-zero tiles, one GEMM
        while (j < band.rects.size() && band.rects[j].c0 == band.rects[j - 1].c1) ++j;
        const int64_t c0 = band.rects[i].c0, c1 = band.rects[j - 1].c1;
        if (c0 > done) gwb.narrow(1, done, c0 - done).zero_();
        at::Tensor span = gwb.narrow(1, c0, c1 - c0);
        at::mm_out(span, gyt, x.narrow(1, c0, c1 - c0));
        done = c1;
        i = j;
      }
      if (done < in) gwb.narrow(1, done, in - done).zero_();
      // Masked entries of the mixed rects get exactly zero.
      AT_DISPATCH_FLOATING_TYPES(grad_w.scalar_type(), "masked_linear_grad_weight", [&] {
        scalar_t* gw = grad_w.data_ptr<scalar_t>();
        for (const Rect& rect : band.rects)
          if (rect.kind == Kind::mixed) {
            scalar_t* block = gw + rect.r0 * in + rect.c0;
            select(block, in, m + rect.r0 * in + rect.c0, in, block, in, rect.r1 - rect.r0, rect.c1 - rect.c0);
          }
      });
    });
  }
  if (output_mask[2]) grad_b = grad_out.sum(0);
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("masked_linear", &masked_linear_cpu);
  m.impl("masked_linear_backward", &masked_linear_backward_cpu);
}

}  // namespace fastgen::cpu
