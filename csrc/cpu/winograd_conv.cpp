// Winograd F(2 x 2, R x k) (see winograd_conv.h): the transforms, the channels-last copies, and
// the per-block pipeline around the tap-GEMM micro-kernel.
#include "winograd_conv.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <mutex>
#include <numeric>
#include <utility>
#include <vector>

#include "isa_dispatch.h"
#include "tap_gemm.h"

namespace fastgen::cpu {
namespace {

// Finite interpolation points, best conditioned first; F(2, r) uses the first r and infinity.
// With these, BT's entries are multiples of 1/4 (the input transform is exact) and the
// float32 error stays within ~1e-6 of the output scale. More taps per transform would need
// +-1/2 or 2, whose larger G and BT entries cost accuracy.
constexpr double kPoints[] = {0.0, 1.0, -1.0, 0.5};
constexpr int64_t kMaxTaps = 4;
// Tiles per block of tile rows: the block's transformed input and products (alpha x beta x
// tiles x channels) stay in the core's cache while the weights stream through.
constexpr int64_t kBlockTiles = 32;

// F(2, r): 2 outputs from r taps by alpha = r + 1 products.
struct Transform {
  int64_t r, alpha;
  std::vector<double> AT;  // (2, alpha): outputs from products
  std::vector<double> G;   // (alpha, r): product weights from taps
  std::vector<double> BT;  // (alpha, alpha): product inputs from the window of r + 1 inputs
};

// A and G as in Lavin & Gray's construction (fractions in G, applied to the weights in
// double); BT solved from the identity out[e] = sum_q w_q d_{e+q} for every w and d.
Transform make_transform(int64_t r) {
  const int64_t a = r + 1;
  Transform t{r, a, std::vector<double>(2 * a, 0.0), std::vector<double>(a * r, 0.0), std::vector<double>(a * a)};
  for (int64_t j = 0; j < r; ++j) {
    const double p = kPoints[j];
    double f = 1.0;
    for (int64_t l = 0; l < r; ++l)
      if (l != j) f *= p - kPoints[l];
    t.AT[j] = 1.0;
    t.AT[a + j] = p;
    for (int64_t q = 0; q < r; ++q) t.G[j * r + q] = std::pow(p, static_cast<double>(q)) / f;
  }
  t.AT[a + a - 1] = 1.0;  // the point at infinity
  t.G[(a - 1) * r + r - 1] = 1.0;
  // P[(e, q), j] = AT[e, j] G[j, q]; solve P BT[:, l] = [l == e + q] for every l.
  at::Tensor P = at::empty({2 * r, a}, at::kDouble), rhs = at::zeros({2 * r, a}, at::kDouble);
  for (int64_t e = 0; e < 2; ++e)
    for (int64_t q = 0; q < r; ++q) {
      for (int64_t j = 0; j < a; ++j) P[e * r + q][j] = t.AT[e * a + j] * t.G[j * r + q];
      rhs[e * r + q][e + q] = 1.0;
    }
  const at::Tensor BT = std::get<0>(at::linalg_lstsq(P, rhs)).contiguous();
  TORCH_INTERNAL_ASSERT(at::allclose(at::mm(P, BT), rhs, 0, 1e-9), "Winograd transform is inconsistent");
  // Snapped to the exact quarters they are, so that the input transform is exact.
  const double* bt = BT.data_ptr<double>();
  for (int64_t j = 0; j < a * a; ++j) {
    t.BT[j] = std::round(4 * bt[j]) / 4;
    TORCH_INTERNAL_ASSERT(std::abs(t.BT[j] - bt[j]) < 1e-9, "Winograd: BT is not in quarters");
  }
  return t;
}

// out[j] = sum of coef * in[index] over the terms of j: a transform's nonzero entries.
struct Term {
  int64_t index;
  double coef;
};
using Terms = std::vector<std::vector<Term>>;

// The nonzero entries of M (rows, cols), per row (out = row) or per column (transposed).
Terms sparse(const std::vector<double>& M, int64_t rows, int64_t cols, bool transposed) {
  Terms t(transposed ? cols : rows);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      if (M[i * cols + j] != 0.0) {
        if (transposed)
          t[j].push_back({i, M[i * cols + j]});
        else
          t[i].push_back({j, M[i * cols + j]});
      }
  return t;
}

// The 2-D algorithm for R x k: alpha row points (F(2, R)) by beta column points (the pieces'
// F(2, r) side by side). A tile's input window is R + 1 rows by k + 1 columns.
struct Plan {
  int64_t R, k, alpha, beta;
  std::vector<double> Gr, Gc;  // (alpha, R), (beta, k)
  Terms row_in, row_in_t;      // BT_r (alpha, R + 1): per row point / per window row
  Terms col_in, col_in_t;      // BT_c (beta, k + 1): per column point / per window column
  Terms row_out, row_out_t;    // AT_r (2, alpha): per output row / per row point
  Terms col_out, col_out_t;    // AT_c (2, beta): per output column / per column point
};

Plan make_plan(int64_t R, int64_t k) {
  std::vector<Transform> pieces;
  const int64_t n = (k + kMaxTaps - 1) / kMaxTaps;  // nearly equal pieces: the best conditioned
  for (int64_t p = 0; p < n; ++p) pieces.push_back(make_transform(k / n + (p < k % n ? 1 : 0)));
  int64_t beta = 0;
  for (const Transform& t : pieces) beta += t.alpha;
  const Transform rows = make_transform(R);
  std::vector<double> ATc(2 * beta, 0.0), Gc(beta * k, 0.0), BTc(beta * (k + 1), 0.0);
  int64_t q0 = 0, b0 = 0;  // first kernel column and first point of each piece
  for (const Transform& t : pieces) {
    for (int64_t b = 0; b < t.alpha; ++b) {
      for (int64_t e = 0; e < 2; ++e) ATc[e * beta + b0 + b] = t.AT[e * t.alpha + b];
      for (int64_t q = 0; q < t.r; ++q) Gc[(b0 + b) * k + q0 + q] = t.G[b * t.r + q];
      for (int64_t l = 0; l < t.alpha; ++l) BTc[(b0 + b) * (k + 1) + q0 + l] = t.BT[b * t.alpha + l];
    }
    q0 += t.r;
    b0 += t.alpha;
  }
  const int64_t a = rows.alpha;
  return Plan{R,
              k,
              a,
              beta,
              rows.G,
              Gc,
              sparse(rows.BT, a, R + 1, false),
              sparse(rows.BT, a, R + 1, true),
              sparse(BTc, beta, k + 1, false),
              sparse(BTc, beta, k + 1, true),
              sparse(rows.AT, 2, a, false),
              sparse(rows.AT, 2, a, true),
              sparse(ATc, 2, beta, false),
              sparse(ATc, 2, beta, true)};
}

// Built once per (R, k) (solving costs more than a small layer).
const Plan& plan(int64_t R, int64_t k) {
  static std::mutex lock;
  static std::map<std::pair<int64_t, int64_t>, Plan> built;
  std::lock_guard<std::mutex> guard(lock);
  auto it = built.find({R, k});
  if (it == built.end()) it = built.emplace(std::make_pair(R, k), make_plan(R, k)).first;
  return it->second;
}

// dst[n * dst_stride + i] (+)= sum_t coef[t] * src[t][n * src_stride + i] for n < rows, i < C.
template <typename T, int N, bool ACC>
FASTGEN_INLINE void combine_n(T* dst, int64_t dst_stride, const T* const* src, const T* coef, int64_t src_stride,
                              int64_t rows, int64_t C) {
  for (int64_t n = 0; n < rows; ++n) {
    T* __restrict d = dst + n * dst_stride;
    const T* s[N];
    T c[N];
    for (int t = 0; t < N; ++t) {
      s[t] = src[t] + n * src_stride;
      c[t] = coef[t];
    }
#pragma omp simd
    for (int64_t i = 0; i < C; ++i) {
      T acc = ACC ? d[i] : T(0);
      for (int t = 0; t < N; ++t) acc += c[t] * s[t][i];
      d[i] = acc;
    }
  }
}

template <typename T>
void combine(T* dst, int64_t dst_stride, const T* const* src, const T* coef, int64_t terms, int64_t src_stride,
             int64_t rows, int64_t C, bool accumulate) {
  with_isa([&]() FASTGEN_INLINE_LAMBDA {
    if (terms == 0 && !accumulate)
      for (int64_t n = 0; n < rows; ++n) std::fill(dst + n * dst_stride, dst + n * dst_stride + C, T(0));
    // Four sources per pass: more would run out of registers for the pointers.
    for (int64_t t0 = 0; t0 < terms; t0 += 4) {
      const int64_t n = std::min<int64_t>(4, terms - t0);
      const T* const* s = src + t0;
      const T* c = coef + t0;
      const bool acc = accumulate || t0 > 0;
      switch (2 * n + (acc ? 1 : 0)) {
        case 2: combine_n<T, 1, false>(dst, dst_stride, s, c, src_stride, rows, C); break;
        case 3: combine_n<T, 1, true>(dst, dst_stride, s, c, src_stride, rows, C); break;
        case 4: combine_n<T, 2, false>(dst, dst_stride, s, c, src_stride, rows, C); break;
        case 5: combine_n<T, 2, true>(dst, dst_stride, s, c, src_stride, rows, C); break;
        case 6: combine_n<T, 3, false>(dst, dst_stride, s, c, src_stride, rows, C); break;
        case 7: combine_n<T, 3, true>(dst, dst_stride, s, c, src_stride, rows, C); break;
        case 8: combine_n<T, 4, false>(dst, dst_stride, s, c, src_stride, rows, C); break;
        default: combine_n<T, 4, true>(dst, dst_stride, s, c, src_stride, rows, C); break;
      }
    }
  });
}

// One row of a transform over `rows` runs of C values: dst row n (+)= sum over the terms of
// coef * (src + index * index_stride) row n.
template <typename T>
void apply(const std::vector<Term>& terms, T* dst, int64_t dst_stride, const T* src, int64_t index_stride,
           int64_t src_stride, int64_t rows, int64_t C, bool accumulate) {
  constexpr size_t kMax = 16;
  TORCH_INTERNAL_ASSERT(terms.size() <= kMax);
  std::array<const T*, kMax> s;
  std::array<T, kMax> c;
  for (size_t t = 0; t < terms.size(); ++t) {
    s[t] = src + terms[t].index * index_stride;
    c[t] = static_cast<T>(terms[t].coef);
  }
  combine(dst, dst_stride, s.data(), c.data(), static_cast<int64_t>(terms.size()), src_stride, rows, C, accumulate);
}

// A thread's scratch: ATen's allocator aligns it to 64 bytes, so that the micro-kernel's
// vectors of lanes never straddle cache lines.
template <typename T>
struct Buffer {
  at::Tensor memory;
  Buffer(int64_t n, const at::TensorOptions& opt) : memory(at::empty({n}, opt)) {}
  T* data() { return memory.data_ptr<T>(); }
  void zero() { memory.zero_(); }
};

struct Shape {
  int64_t B, c_in, c_out, H, W;
  int64_t H2, W2;          // tile rows and columns
  int64_t Hp, Wp;          // rows and columns of the padded channels-last input
  int64_t ci_pad, co_pad;  // channels rounded up to the micro-kernel's lanes
  int64_t rows, n_blocks;  // tile rows per block, blocks per image
};

Shape shape_of(const at::Tensor& in, const at::Tensor& weight, int64_t mr) {
  Shape s{in.size(0), in.size(1), weight.size(0), in.size(2), in.size(3)};
  const int64_t R = weight.size(2), k = weight.size(3);
  s.H2 = (s.H + 1) / 2;
  s.W2 = (s.W + 1) / 2;
  s.Hp = 2 * s.H2 + R - 1;
  s.Wp = 2 * s.W2 + k - 1;
  s.ci_pad = (s.c_in + mr - 1) / mr * mr;
  s.co_pad = (s.c_out + mr - 1) / mr * mr;
  s.rows = std::clamp<int64_t>((kBlockTiles + s.W2 - 1) / s.W2, 1, s.H2);
  s.n_blocks = (s.H2 + s.rows - 1) / s.rows;
  return s;
}

// (B, C, H, W) with any strides -> (B, Hp, Wp, Cp) contiguous with [b, y, x, c] =
// in[b, c, y + dy, x + dx] inside the image and zero elsewhere (and for c >= C).
template <typename T>
at::Tensor to_channels_last(const at::Tensor& in, int64_t Hp, int64_t Wp, int64_t Cp, int64_t dy, int64_t dx) {
  const int64_t B = in.size(0), C = in.size(1), H = in.size(2), W = in.size(3);
  at::Tensor out = at::empty({B, Hp, Wp, Cp}, in.options());
  const T* src = in.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  const int64_t sb = in.stride(0), sc = in.stride(1), sh = in.stride(2), sw = in.stride(3);
  const int64_t x0 = std::clamp<int64_t>(-dx, 0, Wp), x1 = std::clamp<int64_t>(W - dx, x0, Wp);
  at::parallel_for(0, B * Hp, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / Hp, h = row % Hp + dy;
      T* d = dst + row * Wp * Cp;
      std::fill(d, d + Wp * Cp, T(0));
      if (h < 0 || h >= H) continue;
      for (int64_t c = 0; c < C; ++c) {
        const T* s = src + b * sb + c * sc + h * sh;
        for (int64_t x = x0; x < x1; ++x) d[x * Cp + c] = s[(x + dx) * sw];
      }
    }
  });
  return out;
}

// V[a, b] = G_r W G_c^T per channel pair, in double, straight into the micro-kernel's packed
// A operand: output channels in the lanes, (AB, C_out / mr, C_in, mr) (the forward), or
// input channels, (AB, C_in / mr, C_out, mr) (the input gradient); zero beyond the channels.
// A run of mr lanes at a time, so that every store fills a whole run of the packed layout.
template <typename T>
at::Tensor packed_weight_transform(const at::Tensor& weight_any, const Plan& p, int64_t mr, bool output_lanes) {
  const at::Tensor weight = weight_any.contiguous();
  const int64_t c_out = weight.size(0), c_in = weight.size(1), R = p.R, k = p.k, AB = p.alpha * p.beta;
  const int64_t lanes = output_lanes ? c_out : c_in, other = output_lanes ? c_in : c_out;
  const int64_t blocks = (lanes + mr - 1) / mr;
  at::Tensor out = at::empty({AB, blocks, other, mr}, weight.options());
  const T* w = weight.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  const int64_t lane_stride = output_lanes ? c_in * R * k : R * k, other_stride = output_lanes ? R * k : c_in * R * k;
  at::parallel_for(0, blocks * other, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> taps(R * k * mr), rows(R * p.beta * mr);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t blk = item / other, col = item % other, n = std::min(mr, lanes - blk * mr);
      std::fill(taps.begin(), taps.end(), 0.0);
      for (int64_t m = 0; m < n; ++m) {
        const T* src = w + (blk * mr + m) * lane_stride + col * other_stride;
        for (int64_t rq = 0; rq < R * k; ++rq) taps[rq * mr + m] = static_cast<double>(src[rq]);
      }
      for (int64_t r = 0; r < R; ++r)
        for (int64_t b = 0; b < p.beta; ++b) {
          double* acc = rows.data() + (r * p.beta + b) * mr;
          std::fill(acc, acc + mr, 0.0);
          for (int64_t q = 0; q < k; ++q) {
            const double g = p.Gc[b * k + q];
            if (g == 0.0) continue;
            const double* t = taps.data() + (r * k + q) * mr;
            for (int64_t m = 0; m < mr; ++m) acc[m] += g * t[m];
          }
        }
      for (int64_t a = 0; a < p.alpha; ++a)
        for (int64_t b = 0; b < p.beta; ++b) {
          T* d = dst + ((a * p.beta + b) * blocks * other + item) * mr;
          for (int64_t m = 0; m < mr; ++m) {
            double acc = 0;
            for (int64_t r = 0; r < R; ++r) acc += p.Gr[a * R + r] * rows[(r * p.beta + b) * mr + m];
            d[m] = static_cast<T>(acc);
          }
        }
    }
  });
  return out;
}

// The weight gradient from the threads' dV accumulators (threads, AB, C_out / mr, C_in, mr):
// dW = G_r^T (sum over threads of dV) G_c per channel pair, in double, a run of mr output
// channels at a time.
template <typename T>
at::Tensor weight_grad_transform(const at::Tensor& dV, const Plan& p, int64_t c_out, int64_t c_in, int64_t mr) {
  const int64_t threads = dV.size(0), AB = p.alpha * p.beta, blocks = dV.size(2), R = p.R, k = p.k;
  at::Tensor out = at::empty({c_out, c_in, R, k}, dV.options());
  const T* src = dV.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  const int64_t point = blocks * c_in * mr, thread = AB * point;
  at::parallel_for(0, blocks * c_in, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> sum(AB * mr), cols(p.alpha * k * mr), taps(R * k * mr);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t og = item / c_in, i = item % c_in, n = std::min(mr, c_out - og * mr);
      std::fill(sum.begin(), sum.end(), 0.0);
      for (int64_t t = 0; t < threads; ++t)
        for (int64_t ab = 0; ab < AB; ++ab) {
          const T* s = src + t * thread + ab * point + item * mr;
          for (int64_t m = 0; m < mr; ++m) sum[ab * mr + m] += static_cast<double>(s[m]);
        }
      for (int64_t a = 0; a < p.alpha; ++a)
        for (int64_t q = 0; q < k; ++q) {
          double* acc = cols.data() + (a * k + q) * mr;
          std::fill(acc, acc + mr, 0.0);
          for (int64_t b = 0; b < p.beta; ++b) {
            const double g = p.Gc[b * k + q];
            if (g == 0.0) continue;
            const double* v = sum.data() + (a * p.beta + b) * mr;
            for (int64_t m = 0; m < mr; ++m) acc[m] += g * v[m];
          }
        }
      for (int64_t r = 0; r < R; ++r)
        for (int64_t q = 0; q < k; ++q) {
          double* acc = taps.data() + (r * k + q) * mr;
          std::fill(acc, acc + mr, 0.0);
          for (int64_t a = 0; a < p.alpha; ++a) {
            const double g = p.Gr[a * R + r];
            const double* c = cols.data() + (a * k + q) * mr;
            for (int64_t m = 0; m < mr; ++m) acc[m] += g * c[m];
          }
        }
      for (int64_t m = 0; m < n; ++m) {
        T* d = dst + ((og * mr + m) * c_in + i) * R * k;
        for (int64_t rq = 0; rq < R * k; ++rq) d[rq] = static_cast<T>(taps[rq * mr + m]);
      }
    }
  });
  return out;
}

// U (alpha * beta, tiles, C) of the block of nr tile rows from j0 of one image's padded
// channels-last input X (Hp, Wp, C): rows first (into rowT, alpha x nr x Wp x C), then columns.
template <typename T>
void input_transform(const Plan& p, const Shape& s, int64_t C, const T* X, int64_t j0, int64_t nr, T* rowT, T* U) {
  const int64_t WpC = s.Wp * C, tiles = nr * s.W2;
  for (int64_t a = 0; a < p.alpha; ++a)
    apply(p.row_in[a], rowT + a * nr * WpC, WpC, X + 2 * j0 * WpC, WpC, 2 * WpC, nr, WpC, false);
  for (int64_t a = 0; a < p.alpha; ++a)
    for (int64_t b = 0; b < p.beta; ++b)
      for (int64_t jj = 0; jj < nr; ++jj)
        apply(p.col_in[b], U + ((a * p.beta + b) * tiles + jj * s.W2) * C, C, rowT + (a * nr + jj) * WpC, C, 2 * C,
              s.W2, C, false);
}

// The channel products at every transform point: out[ab, t, g * mr + m] = sum_{k < K}
// V[ab, g, k, m] in[ab, t, k] for the AB points, the groups of mr lanes of V's packing, and
// the nt tiles (register tiles of up to nr_max); in and out have row strides in_ld, out_ld
// per tile. The forward (V the weights, in the transformed input) and the input gradient
// (V the transposed weights, in the output gradient).
template <typename T>
void point_products(const TapGemm<T>& gemm, int64_t AB, int64_t groups, int64_t nt, int64_t K, const T* V,
                    const T* in, int64_t in_ld, const int64_t* iota, T* out, int64_t out_ld) {
  const int64_t mr = gemm.mr;
  const std::vector<Tile> tts = tiles(0, nt, gemm.nr_max);
  for (int64_t ab = 0; ab < AB; ++ab)
    for (int64_t g = 0; g < groups; ++g)
      for (const Tile& tt : tts)
        gemm.packed[tt.size](K, V + (ab * groups + g) * K * mr, nullptr, in + (ab * nt + tt.start) * in_ld, iota,
                             in_ld, out + (ab * nt + tt.start) * out_ld + g * mr, out_ld, false);
}

template <typename T>
void forward_impl(const at::Tensor& in, const at::Tensor& weight, const WinogradConv& conv, const T* bias,
                  at::Tensor& out) {
  const TapGemm<T>& gemm = tap_gemm<T>();
  const Plan& p = plan(weight.size(2), weight.size(3));
  const Shape s = shape_of(in, weight, gemm.mr);
  const int64_t AB = p.alpha * p.beta, mr = gemm.mr, n_og = s.co_pad / mr, WpC = s.Wp * s.c_in;
  const int64_t max_tiles = s.rows * s.W2;
  const at::Tensor X = to_channels_last<T>(in, s.Hp, s.Wp, s.c_in, conv.dh0, conv.dw0);
  const at::Tensor Vf = packed_weight_transform<T>(weight, p, mr, true);  // (AB, n_og, C_in, mr)
  std::vector<int64_t> iota(s.c_in);
  std::iota(iota.begin(), iota.end(), 0);
  const T* Xd = X.data_ptr<T>();
  const T* Vd = Vf.data_ptr<T>();
  T* Y = out.data_ptr<T>();

  at::parallel_for(0, s.B * s.n_blocks, 1, [&](int64_t begin, int64_t end) {
    const auto opt = in.options();
    Buffer<T> rowT(p.alpha * s.rows * WpC, opt), U(AB * max_tiles * s.c_in, opt), M(AB * max_tiles * s.co_pad, opt);
    Buffer<T> cols(p.alpha * 2 * max_tiles * s.co_pad, opt), tile(4 * max_tiles * s.co_pad, opt);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / s.n_blocks, j0 = (item % s.n_blocks) * s.rows;
      const int64_t nr = std::min(s.rows, s.H2 - j0), nt = nr * s.W2, TC = nt * s.co_pad;
      input_transform(p, s, s.c_in, Xd + b * s.Hp * WpC, j0, nr, rowT.data(), U.data());
      point_products(gemm, AB, n_og, nt, s.c_in, Vd, U.data(), s.c_in, iota.data(), M.data(), s.co_pad);
      // cols[a, ec] = sum_b AT_c[ec, b] M[a, b]; tile[er, ec] = sum_a AT_r[er, a] cols[a, ec].
      for (int64_t a = 0; a < p.alpha; ++a)
        for (int64_t ec = 0; ec < 2; ++ec)
          apply(p.col_out[ec], cols.data() + (a * 2 + ec) * TC, 0, M.data() + a * p.beta * TC, TC, 0, 1, TC, false);
      for (int64_t er = 0; er < 2; ++er)
        for (int64_t ec = 0; ec < 2; ++ec)
          apply(p.row_out[er], tile.data() + (er * 2 + ec) * TC, 0, cols.data() + ec * TC, 2 * TC, 0, 1, TC, false);
      for (int64_t o = 0; o < s.c_out; ++o) {
        const T bo = bias ? bias[o] : T(0);
        for (int64_t h = 2 * j0; h < std::min(s.H, 2 * (j0 + nr)); ++h) {
          T* y = Y + ((b * s.c_out + o) * s.H + h) * s.W;
          const int64_t jj = h / 2 - j0, er = h % 2;
          const T* t0 = tile.data() + ((er * 2) * nt + jj * s.W2) * s.co_pad + o;
          const T* t1 = t0 + TC;
          for (int64_t c = 0; c < s.W / 2; ++c) {
            y[2 * c] = t0[c * s.co_pad] + bo;
            y[2 * c + 1] = t1[c * s.co_pad] + bo;
          }
          if (s.W % 2) y[s.W - 1] = t0[(s.W / 2) * s.co_pad] + bo;
        }
      }
    }
  });
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> backward_impl(const at::Tensor& in, const at::Tensor& grad_out,
                                                 const at::Tensor& weight, const WinogradConv& conv, bool need_in,
                                                 bool need_weight) {
  const TapGemm<T>& gemm = tap_gemm<T>();
  const Plan& p = plan(weight.size(2), weight.size(3));
  const Shape s = shape_of(in, weight, gemm.mr);
  const int64_t AB = p.alpha * p.beta, mr = gemm.mr, n_og = s.co_pad / mr, n_ig = s.ci_pad / mr;
  const int64_t WpC = s.Wp * s.c_in, Wg = 2 * s.W2, max_tiles = s.rows * s.W2;
  const at::Tensor G = to_channels_last<T>(grad_out, 2 * s.H2, Wg, s.co_pad, 0, 0);
  const at::Tensor X = need_weight ? to_channels_last<T>(in, s.Hp, s.Wp, s.c_in, conv.dh0, conv.dw0) : at::Tensor();
  const at::Tensor Vb = need_in ? packed_weight_transform<T>(weight, p, mr, false) : at::Tensor();
  at::Tensor grad_in = need_in ? at::empty({s.B, s.c_in, s.H, s.W}, in.options()) : at::Tensor();
  // One accumulator per thread, summed at the end: no atomics, and a fixed order of
  // summation for a given thread count.
  const int64_t threads = at::get_num_threads();
  // Each accumulator (AB, C_out / mr, C_in, mr): a register tile's rows are contiguous and
  // the calls walk through it in order, which the hardware prefetcher follows (strided rows
  // of C left each call waiting on cache misses at its end).
  at::Tensor dV = need_weight ? at::zeros({threads, AB, n_og, s.c_in, mr}, in.options()) : at::Tensor();
  std::vector<int64_t> iota(s.c_out), a_off(max_tiles), b_off(max_tiles);
  std::iota(iota.begin(), iota.end(), 0);
  for (int64_t t = 0; t < max_tiles; ++t) {
    a_off[t] = t * s.co_pad;
    b_off[t] = t * s.c_in;
  }
  const T* Gd = G.data_ptr<T>();
  const T* Xd = need_weight ? X.data_ptr<T>() : nullptr;
  const T* Vd = need_in ? Vb.data_ptr<T>() : nullptr;

  // Images, not blocks, per thread: the input gradient of a block overlaps its neighbours'.
  at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
    const auto opt = in.options();
    Buffer<T> cols(p.alpha * 2 * max_tiles * s.co_pad, opt), dM(AB * max_tiles * s.co_pad, opt);
    Buffer<T> rowT(p.alpha * s.rows * WpC, opt), U(need_weight ? AB * max_tiles * s.c_in : 0, opt);
    Buffer<T> dU(need_in ? AB * max_tiles * s.ci_pad : 0, opt), GX(need_in ? s.Hp * WpC : 0, opt);
    T* dv = need_weight ? dV.data_ptr<T>() + at::get_thread_num() * AB * s.co_pad * s.c_in : nullptr;
    for (int64_t b = begin; b < end; ++b) {
      if (need_in) GX.zero();
      const T* Gb = Gd + b * 2 * s.H2 * Wg * s.co_pad;
      for (int64_t j0 = 0; j0 < s.H2; j0 += s.rows) {
        const int64_t nr = std::min(s.rows, s.H2 - j0), nt = nr * s.W2, TC = nt * s.co_pad;
        // dM = AT_r^T dout AT_c: cols[a, ec] = sum_er AT_r[er, a] dout[er, ec], then
        // dM[a, b] = sum_ec AT_c[ec, b] cols[a, ec].
        for (int64_t a = 0; a < p.alpha; ++a)
          for (int64_t ec = 0; ec < 2; ++ec)
            for (int64_t jj = 0; jj < nr; ++jj)
              apply(p.row_out_t[a], cols.data() + ((a * 2 + ec) * nt + jj * s.W2) * s.co_pad, s.co_pad,
                    Gb + (2 * (j0 + jj) * Wg + ec) * s.co_pad, Wg * s.co_pad, 2 * s.co_pad, s.W2, s.co_pad, false);
        for (int64_t a = 0; a < p.alpha; ++a)
          for (int64_t bb = 0; bb < p.beta; ++bb)
            apply(p.col_out_t[bb], dM.data() + (a * p.beta + bb) * TC, 0, cols.data() + a * 2 * TC, TC, 0, 1, TC,
                  false);
        if (need_weight) {  // dV[a, b] += dM[a, b] U[a, b]^T over the block's tiles
          input_transform(p, s, s.c_in, Xd + b * s.Hp * WpC, j0, nr, rowT.data(), U.data());
          const std::vector<Tile> its = tiles(0, s.c_in, gemm.nr_max);
          for (int64_t ab = 0; ab < AB; ++ab)
            for (int64_t og = 0; og < n_og; ++og)
              for (const Tile& it : its)
                gemm.gather[it.size](nt, dM.data() + ab * TC + og * mr, a_off.data(),
                                     U.data() + ab * nt * s.c_in + it.start, b_off.data(), 1,
                                     dv + ((ab * n_og + og) * s.c_in + it.start) * mr, mr, true);
        }
        if (need_in) {  // dU[a, b] = V[a, b]^T dM[a, b], then back through BT_c and BT_r
          point_products(gemm, AB, n_ig, nt, s.c_out, Vd, dM.data(), s.co_pad, iota.data(), dU.data(), s.ci_pad);
          std::fill(rowT.data(), rowT.data() + p.alpha * nr * WpC, T(0));
          for (int64_t a = 0; a < p.alpha; ++a)
            for (int64_t jj = 0; jj < nr; ++jj)
              for (int64_t l = 0; l <= p.k; ++l)
                apply(p.col_in_t[l], rowT.data() + (a * nr + jj) * WpC + l * s.c_in, 2 * s.c_in,
                      dU.data() + (a * p.beta * nt + jj * s.W2) * s.ci_pad, nt * s.ci_pad, s.ci_pad, s.W2, s.c_in,
                      true);
          for (int64_t l = 0; l <= p.R; ++l)
            apply(p.row_in_t[l], GX.data() + (2 * j0 + l) * WpC, 2 * WpC, rowT.data(), nr * WpC, WpC, nr, WpC, true);
        }
      }
      if (need_in) {
        T* g = grad_in.data_ptr<T>() + b * s.c_in * s.H * s.W;
        for (int64_t i = 0; i < s.c_in; ++i)
          for (int64_t h = 0; h < s.H; ++h) {
            T* row = g + (i * s.H + h) * s.W;
            const int64_t y = h - conv.dh0;
            // The first layer's last image row reaches no output: beyond the padded rows.
            if (y >= s.Hp) {
              std::fill(row, row + s.W, T(0));
              continue;
            }
            const T* x = GX.data() + (y * s.Wp - conv.dw0) * s.c_in + i;
            for (int64_t w = 0; w < s.W; ++w) row[w] = x[w * s.c_in];
          }
      }
    }
  });

  at::Tensor grad_weight;
  if (need_weight) grad_weight = weight_grad_transform<T>(dV, p, s.c_out, s.c_in, mr);
  return {grad_in, grad_weight};
}

}  // namespace

bool winograd_conv_applies(int64_t R, int64_t k) { return R >= 2 && R <= kMaxTaps && k >= 1; }

void winograd_conv_forward(const at::Tensor& in, const at::Tensor& weight, const WinogradConv& conv,
                           const c10::optional<at::Tensor>& bias, at::Tensor& out) {
  TORCH_INTERNAL_ASSERT(out.is_contiguous() && winograd_conv_applies(weight.size(2), weight.size(3)));
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "winograd_conv_forward", [&] {
    forward_impl<scalar_t>(in, weight, conv, b.defined() ? b.data_ptr<scalar_t>() : nullptr, out);
  });
}

std::tuple<at::Tensor, at::Tensor> winograd_conv_backward(const at::Tensor& in, const at::Tensor& grad_out,
                                                          const at::Tensor& weight, const WinogradConv& conv,
                                                          bool need_in, bool need_weight) {
  TORCH_INTERNAL_ASSERT(winograd_conv_applies(weight.size(2), weight.size(3)));
  return AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "winograd_conv_backward", [&] {
    return backward_impl<scalar_t>(in, grad_out, weight, conv, need_in, need_weight);
  });
}

}  // namespace fastgen::cpu
