// Masked linear layer on the CPU, y = x (W * M)^T + b: forward, and the gradients of x, W
// and b (fastgen/ops/masked_linear.py has the math). Only the part of W that the mask
// keeps is multiplied, on the register-tiled micro-kernel of tap_gemm.h.
//
// Panels. The SIMD lanes of the micro-kernel (mr of them, 16 floats with AVX2) hold a
// panel of mr consecutive outputs (forward) or inputs (grad_x, grad_W). A panel's k loop
// runs only over the span of inputs (forward) or outputs (grad_x, grad_W) between its
// first and its last one in the mask. MADE's masks are staircases once the units are
// sorted by degree (output row o sees a prefix of the inputs that grows with o), so the
// spans skip about half of W, less a strip one panel wide along the step. Any mask is
// correct (a random one spans everything: the work of the dense reference); within a
// span, masked weights are selected to exactly 0 when the panel is packed, so whatever
// they hold, inf or NaN, never reaches a product.
//
// Products (B: the batch; the register tile's nr columns are rows of the batch, or of
// the span for grad_W):
//   forward  y[b, panel]      = b[panel] + x[b, span] . Wm[panel, span]^T
//   grad_x   gx[b, panel]     = gy[b, span] . Wm[span, panel]
//   grad_W   gW[span, panel]  = gy[:, span]^T . x[:, panel], k over the batch; then the
//            masked entries selected to 0, and 0 outside the span.
// Work items are (panel, rows of the batch or of the span): each packs the operands the
// kernel reads by vector (the masked weight's panel; x's panel for grad_W) into a thread's
// buffer and writes its own tiles of the result. Threads take the items largest first
// (the spans of a staircase grow along it). The k loops run in a fixed order, so results
// do not depend on the number of threads.
//
// The spans are found again on every call (each row of the mask scanned from both ends, a
// word at a time), so a mask may change between calls. The forward's autograd is
// registered here too (MaskedLinearFunction, at the end).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
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

#include "backward_call.h"
#include "masked_linear.h"
#include "tap_gemm.h"

namespace fastgen::cpu {
namespace {

// Rows of the batch (forward, grad_x) or of a span (grad_W) per work item, at most; an
// item's packing is amortized over them.
constexpr int64_t ITEM_ROWS = 256;
// Below this many multiply-adds a call runs on one thread: a parallel region costs more.
constexpr int64_t SERIAL_WORK = 1 << 18;
// grad_W reads gy in place up to this size (see grad_weight_impl): half a Zen 3 core's L2.
constexpr int64_t IN_PLACE_GRAD_BYTES = 256 << 10;
// The widest panel of any instruction set (AVX-512: 32 floats).
constexpr int64_t kMaxMR = 32;

const uint8_t* mask_bytes(const at::Tensor& mask) {
  return reinterpret_cast<const uint8_t*>(mask.const_data_ptr<bool>());
}

struct Span {
  int64_t lo, hi;  // [lo, hi), empty when hi <= lo
  int64_t size() const { return std::max<int64_t>(0, hi - lo); }
};

// The first non-zero byte of row[0, n), or n; a word at a time.
int64_t first_one(const uint8_t* row, int64_t n) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    uint64_t w;
    std::memcpy(&w, row + c, 8);
    if (w) return c + __builtin_ctzll(w) / 8;  // little-endian: byte i is bits [8i, 8i + 8)
  }
  for (; c < n; ++c)
    if (row[c]) return c;
  return n;
}

// One past the last non-zero byte of row[0, n), or 0.
int64_t end_of_ones(const uint8_t* row, int64_t n) {
  int64_t c = n;
  for (; c >= 8; c -= 8) {
    uint64_t w;
    std::memcpy(&w, row + c - 8, 8);
    if (w) return c - 8 + (63 - __builtin_clzll(w)) / 8 + 1;
  }
  for (; c > 0; --c)
    if (row[c - 1]) return c;
  return 0;
}

// Per panel of `width` consecutive rows (of_rows) or columns of the (out x in) mask, a
// span of columns / rows that holds all its ones: from each row's first and last one
// (scans a word at a time, from either end). The span of a panel of columns is that of
// the rows whose [first, last] range crosses it: exact for a staircase, wider than needed
// only where a row's ones have gaps. Any non-zero byte counts as a one.
std::vector<Span> panel_spans(const uint8_t* m, int64_t out, int64_t in, int64_t width, bool of_rows) {
  std::vector<Span> rows(out);
  at::parallel_for(0, out, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, in)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t lo = first_one(m + r * in, in);
      rows[r] = {lo, lo + end_of_ones(m + r * in + lo, in - lo)};
    }
  });
  const int64_t panels = ((of_rows ? out : in) + width - 1) / width;
  std::vector<Span> spans(panels, Span{of_rows ? in : out, 0});
  for (int64_t r = 0; r < out; ++r) {
    if (rows[r].size() == 0) continue;
    if (of_rows) {
      Span& s = spans[r / width];
      s = {std::min(s.lo, rows[r].lo), std::max(s.hi, rows[r].hi)};
    } else {
      for (int64_t p = rows[r].lo / width; p <= (rows[r].hi - 1) / width; ++p)
        spans[p] = {std::min(spans[p].lo, r), r + 1};
    }
  }
  return spans;
}

// mask ? v : 0, branch-free, by the bits: v's AND all ones or all zeros (+0.0), so that
// whatever a masked entry holds, inf or NaN, it is never read as a number, and a random
// mask costs no mispredicted branches.
template <typename T>
inline T masked(T v, uint8_t mask) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  static_assert(sizeof(Bits) == sizeof(T));
  Bits bits;
  std::memcpy(&bits, &v, sizeof(T));
  bits &= Bits(0) - Bits(mask != 0);
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// dst = mask ? src : 0 over a (rows x width) block; src may be dst.
template <typename T>
void select(const T* src, int64_t src_ld, const uint8_t* mask, int64_t mask_ld, T* dst, int64_t dst_ld,
            int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * src_ld;
    const uint8_t* keep = mask + r * mask_ld;
    T* d = dst + r * dst_ld;
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) d[c] = masked(s[c], keep[c]);
  }
}

// An item of work: a panel and rows [r0, r1) of the batch or of the panel's span.
struct Item {
  int64_t panel, r0, r1, work;
};

// Items for each panel: its rows [lo, hi) in chunks of at most max_rows, fewer rows (down
// to min_rows) when there are too few items to keep every thread busy; `work` = rows x
// k-loop length.
std::vector<Item> make_items(int64_t panels, const std::vector<Span>& rows, const std::vector<int64_t>& k_len,
                             int64_t max_rows, int64_t min_rows) {
  const int64_t threads = at::get_num_threads();
  std::vector<Item> items;
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t n = rows[p].size();
    if (n == 0 || k_len[p] == 0) {
      items.push_back({p, rows[p].lo, rows[p].lo + n, 0});
      continue;
    }
    const int64_t wanted = std::max<int64_t>(1, (2 * threads + panels - 1) / panels);
    const int64_t chunks = std::max((n + max_rows - 1) / max_rows, std::min(wanted, (n + min_rows - 1) / min_rows));
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t r0 = rows[p].lo + n * c / chunks, r1 = rows[p].lo + n * (c + 1) / chunks;
      items.push_back({p, r0, r1, (r1 - r0) * k_len[p]});
    }
  }
  return items;
}

// Runs f(item, buffer) for every item, threads taking the largest left first; `buffer` is
// the thread's scratch space of `scratch` elements.
template <typename T, class F>
void run_items(const std::vector<Item>& items, int64_t scratch, const F& f) {
  int64_t total = 0;
  for (const Item& it : items) total += it.work;
  const int64_t n = items.size(), threads = at::get_num_threads();
  if (threads == 1 || n == 1 || total * tap_gemm<T>().mr < SERIAL_WORK) {
    std::vector<T> buffer(scratch);
    for (const Item& it : items) f(it, buffer.data());
    return;
  }
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return items[a].work > items[b].work; });
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    std::vector<T> buffer(scratch);
    for (int64_t i = next++; i < n; i = next++) f(items[order[i]], buffer.data());
  });
}

// C[b, panel] = (bias[panel] +) sum_k A[b, span.lo + k] * Wm(panel, span.lo + k) for
// every panel of `width` outputs and row b < B: A (B, lda), C (B, ldc) row-major, the
// masked weight packed per panel by pack(panel, dst). Forward (A = x, C = y) and grad_x
// (A = gy, C = gx).
template <typename T, class Pack>
void panel_products(const T* A, int64_t lda, int64_t B, const std::vector<Span>& spans, int64_t width, const T* bias,
                    T* C, int64_t ldc, const Pack& pack) {
  const TapGemm<T>& gemm = tap_gemm<T>();
  const int64_t mr = gemm.mr, panels = spans.size(), nr = gemm.nr_max;
  TORCH_INTERNAL_ASSERT(mr <= kMaxMR, "masked_linear: micro-kernel wider than kMaxMR");
  int64_t k_max = 0;
  std::vector<int64_t> k_len(panels);
  for (int64_t p = 0; p < panels; ++p) k_max = std::max(k_max, k_len[p] = spans[p].size());
  std::vector<int64_t> koff(k_max);
  std::iota(koff.begin(), koff.end(), 0);
  const std::vector<Item> items = make_items(panels, std::vector<Span>(panels, Span{0, B}), k_len, ITEM_ROWS, 16);
  run_items<T>(items, k_max * mr + nr * mr, [&](const Item& item, T* buffer) {
    const int64_t p = item.panel, first = p * mr, lanes = std::min(mr, width - first), K = k_len[p];
    const Span s = spans[p];
    T* packed = buffer;
    T* scratch = buffer + k_max * mr;
    if (K > 0) pack(p, s, packed);
    T lane_bias[kMaxMR] = {};  // the panel's bias, 0 past its last lane
    for (int64_t lane = 0; lane < lanes && bias; ++lane) lane_bias[lane] = bias[first + lane];
    for (const Tile& tile : tiles(item.r0, item.r1 - item.r0, nr)) {
      T* c = C + tile.start * ldc + first;
      const bool direct = lanes == mr;  // a partial panel goes through the scratch tile
      T* dst = direct ? c : scratch;
      const int64_t ld = direct ? ldc : mr;
      if (bias || K == 0)
        for (int64_t j = 0; j < tile.size; ++j) std::memcpy(dst + j * ld, lane_bias, mr * sizeof(T));
      if (K > 0)
        gemm.packed[tile.size](K, packed, nullptr, A + tile.start * lda + s.lo, koff.data(), lda, dst, ld,
                               bias != nullptr);
      if (!direct)
        for (int64_t j = 0; j < tile.size; ++j) std::copy(dst + j * ld, dst + j * ld + lanes, c + j * ldc);
    }
  });
}

template <typename T>
void forward_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask, const T* bias, at::Tensor& y) {
  const int64_t mr = tap_gemm<T>().mr, out = weight.size(0), in = weight.size(1);
  const uint8_t* m = mask_bytes(mask);
  const T* W = weight.const_data_ptr<T>();
  // The panel's masked rows, transposed: packed[k * mr + lane] = Wm[first + lane, lo + k].
  const auto pack = [&](int64_t p, Span s, T* packed) {
    const int64_t first = p * mr, lanes = std::min(mr, out - first), K = s.size();
    if (lanes < mr) std::fill(packed, packed + K * mr, T(0));
    for (int64_t lane = 0; lane < lanes; ++lane) {
      const int64_t o = first + lane;
      const T* w = W + o * in + s.lo;
      const uint8_t* mo = m + o * in + s.lo;
      for (int64_t k = 0; k < K; ++k) packed[k * mr + lane] = masked(w[k], mo[k]);
    }
  };
  panel_products<T>(x.const_data_ptr<T>(), in, x.size(0), panel_spans(m, out, in, mr, true), out, bias,
                    y.data_ptr<T>(), out, pack);
}

template <typename T>
void grad_x_impl(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& mask,
                 const std::vector<Span>& spans, at::Tensor& grad_x) {
  const int64_t mr = tap_gemm<T>().mr, out = weight.size(0), in = weight.size(1);
  const uint8_t* m = mask_bytes(mask);
  const T* W = weight.const_data_ptr<T>();
  // The panel's masked columns: packed[k * mr + lane] = Wm[lo + k, first + lane].
  const auto pack = [&](int64_t p, Span s, T* packed) {
    const int64_t first = p * mr, lanes = std::min(mr, in - first);
    if (lanes < mr) std::fill(packed, packed + s.size() * mr, T(0));
    select(W + s.lo * in + first, in, m + s.lo * in + first, in, packed, mr, s.size(), lanes);
  };
  panel_products<T>(grad_out.const_data_ptr<T>(), out, grad_out.size(0), spans, in, nullptr,
                    grad_x.data_ptr<T>(), in, pack);
}

// gW[o, panel] = sum_b gy[b, o] x[b, panel] for o in each input panel's span (k over the
// batch), the masked entries then selected to 0; 0 outside the span. The register tiles
// are fixed groups of nr outputs. The kernel broadcasts gy[b, group] for every b: read in
// place when gy fits in L2 (its rows are then cached across groups), else from a copy
// packed per group (B, nr), one stream per call (gy's rows 8 KiB apart would miss L1 on
// every b: 2048 -> 2048, 13% slower in place; 256 -> 64, 1.5x faster in place, on 2 Zen 3
// threads). x's panel is packed (B, mr) per item.
template <typename T>
void grad_weight_impl(const at::Tensor& x, const at::Tensor& grad_out, const at::Tensor& mask,
                      const std::vector<Span>& spans, at::Tensor& grad_w) {
  const TapGemm<T>& gemm = tap_gemm<T>();
  const int64_t mr = gemm.mr, nr = gemm.nr_max, B = x.size(0), in = x.size(1), out = grad_out.size(1);
  const int64_t panels = spans.size(), groups = (out + nr - 1) / nr;
  const T* X = x.const_data_ptr<T>();
  const T* G = grad_out.const_data_ptr<T>();
  const uint8_t* m = mask_bytes(mask);
  T* GW = grad_w.data_ptr<T>();
  const bool in_place = B * out * static_cast<int64_t>(sizeof(T)) <= IN_PLACE_GRAD_BYTES;
  at::Tensor packed_g = at::empty({in_place ? 0 : groups * B * nr}, grad_out.options());
  T* GP = packed_g.data_ptr<T>();
  if (!in_place)
    at::parallel_for(0, groups, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(1, B * nr)), [&](int64_t g0, int64_t g1) {
      for (int64_t group = g0; group < g1; ++group) {
        const int64_t o = group * nr, size = std::min(nr, out - o);
        for (int64_t b = 0; b < B; ++b) {
          T* dst = GP + (group * B + b) * nr;
          const T* src = G + b * out + o;
          for (int64_t j = 0; j < nr; ++j) dst[j] = j < size ? src[j] : T(0);
        }
      }
    });
  std::vector<int64_t> boff(B);  // of gy's row b: in place, or in a packed group
  for (int64_t b = 0; b < B; ++b) boff[b] = b * (in_place ? out : nr);
  // Items in units of groups: each panel's span rounded out to whole groups.
  std::vector<Span> group_spans(panels);
  for (int64_t p = 0; p < panels; ++p)
    group_spans[p] = spans[p].size() ? Span{spans[p].lo / nr, (spans[p].hi + nr - 1) / nr} : Span{0, 0};
  const std::vector<Item> items =
      make_items(panels, group_spans, std::vector<int64_t>(panels, B * nr), ITEM_ROWS / nr, 16 / nr + 1);
  run_items<T>(items, B * mr + nr * mr, [&](const Item& item, T* buffer) {
    const int64_t p = item.panel, first = p * mr, lanes = std::min(mr, in - first);
    const int64_t o0 = std::min(out, group_spans[p].lo * nr), o1 = std::min(out, group_spans[p].hi * nr);
    if (item.r0 == group_spans[p].lo)  // the panel's first item zeroes its columns outside the groups
      for (int64_t o = 0; o < out; ++o)
        if (o < o0 || o >= o1) std::fill(GW + o * in + first, GW + o * in + first + lanes, T(0));
    if (item.r1 <= item.r0) return;
    T* xp = buffer;  // x's panel, packed (B, mr), zero past the last column
    T* scratch = buffer + B * mr;
    for (int64_t b = 0; b < B; ++b) {
      const T* src = X + b * in + first;
      T* dst = xp + b * mr;
      for (int64_t lane = 0; lane < mr; ++lane) dst[lane] = lane < lanes ? src[lane] : T(0);
    }
    const bool direct = lanes == mr;
    for (int64_t group = item.r0; group < item.r1; ++group) {
      const int64_t o = group * nr, size = std::min(nr, out - o);
      T* c = GW + o * in + first;
      T* dst = direct ? c : scratch;
      const int64_t ld = direct ? in : mr;
      if (B > 0)
        gemm.packed[size](B, xp, nullptr, in_place ? G + o : GP + group * B * nr, boff.data(), 1, dst, ld, false);
      else
        for (int64_t j = 0; j < size; ++j) std::fill(dst + j * ld, dst + j * ld + mr, T(0));
      select(dst, ld, m + o * in + first, in, c, in, size, lanes);
    }
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

}  // namespace

at::Tensor masked_linear_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                             const c10::optional<at::Tensor>& bias_in, const at::Tensor& mask_in) {
  check_args("masked_linear", x_in, weight_in, mask_in);
  const int64_t out = weight_in.size(0);
  if (bias_in.has_value())
    TORCH_CHECK_VALUE(bias_in->dim() == 1 && bias_in->size(0) == out &&
                          bias_in->scalar_type() == x_in.scalar_type() && bias_in->device().is_cpu(),
                      "masked_linear: bias must be a (out_features,) = (", out,
                      ",) CPU tensor of x's dtype, got shape ", bias_in->sizes(), " and dtype ",
                      bias_in->scalar_type());
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous(), mask = mask_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  at::Tensor y = at::empty({x.size(0), out}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_linear", [&] {
    forward_impl<scalar_t>(x, weight, mask, bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, y);
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
  AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "masked_linear_backward", [&] {
    if (!output_mask[0] && !output_mask[1]) return;
    // Both gradients take panels of inputs, with the same spans of outputs.
    const std::vector<Span> spans = panel_spans(mask_bytes(mask), out, in, tap_gemm<scalar_t>().mr, false);
    if (output_mask[0]) {
      grad_x = at::empty(x_in.sizes(), x_in.options());
      grad_x_impl<scalar_t>(grad_out, weight_in.contiguous(), mask, spans, grad_x);
    }
    if (output_mask[1]) {
      grad_w = at::empty(weight_in.sizes(), x_in.options());
      grad_weight_impl<scalar_t>(x_in.contiguous(), grad_out, mask, spans, grad_w);
    }
  });
  if (output_mask[2]) grad_b = grad_out.sum(0);
  return {grad_x, grad_w, grad_b};
}

namespace {

// Autograd of the forward op, in C++: a MADE layer is small (a 256 x 256 layer's forward
// and backward take about 0.5 ms here) and a Python autograd function around it costs
// about 0.15 ms more per call. The backward op goes through the dispatcher, so its own
// autograd (double backward, registered from Python) still applies.
class MaskedLinearFunction : public torch::autograd::Function<MaskedLinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, const at::Tensor& mask) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastgen::masked_linear", "")
                               .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                 const c10::optional<at::Tensor>&, const at::Tensor&)>();
    ctx->save_for_backward({x, weight, mask});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return op.call(x, weight, bias, mask);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastgen::masked_linear_backward", "")
                               .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                   const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   std::array<bool, 3>)>();
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // Edges: x, weight, then bias when given (the mask is never differentiated).
    const std::array<bool, 3> need{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   has_bias && ctx->needs_input_grad(2)};
    const at::Tensor none;
    if (!need[0] && !need[1] && !need[2]) return {none, none, none, none};
    auto [grad_x, grad_w, grad_b] =
        call_backward_op([&] { return op.call(grads[0], saved[0], saved[1], saved[2], need); });
    return {need[0] ? grad_x : none, need[1] ? grad_w : none, need[2] ? grad_b : none, none};
  }
};

at::Tensor masked_linear_autograd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                  const at::Tensor& mask) {
  return MaskedLinearFunction::apply(x, weight, bias, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("masked_linear", &masked_linear_cpu);
  m.impl("masked_linear_backward", &masked_linear_backward_cpu);
}

TORCH_LIBRARY_IMPL(fastgen, Autograd, m) { m.impl("masked_linear", &masked_linear_autograd); }

}  // namespace fastgen::cpu
