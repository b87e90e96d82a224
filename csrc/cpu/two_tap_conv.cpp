// Two-tap Winograd convolution driver: packing, pairing and threading around the pair
// kernel of tap_gemm.h (see two_tap_conv.h for the math).
#include "two_tap_conv.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "tap_gemm.h"

namespace fastgen::cpu {
namespace {

// Input times [t, t + MR) of every channel into out (C_in, MR), zeros outside [0, T).
template <typename T>
void pack_times(const T* x, int64_t x_stride, int64_t T_len, int64_t c_in, int64_t t, int64_t MR, T* out,
                int64_t out_stride) {
  const int64_t lo = std::clamp<int64_t>(-t, 0, MR), hi = std::clamp<int64_t>(T_len - t, lo, MR);
  for (int64_t i = 0; i < c_in; ++i) {
    T* o = out + i * out_stride;
    std::fill(o, o + lo, T(0));
    std::memcpy(o + lo, x + i * x_stride + t + lo, (hi - lo) * sizeof(T));
    std::fill(o + hi, o + MR, T(0));
  }
}

// Copies rows [0, rows) and lanes [0, n) from src (row stride ld_src) to dst (row stride ld_dst).
template <typename T>
void copy_tile(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t rows, int64_t n) {
  for (int64_t j = 0; j < rows; ++j) std::memcpy(dst + j * ld_dst, src + j * ld_src, n * sizeof(T));
}

// The pairs (p, p + d) for first-half times p in [p0, p1): y[p] always, y[p + d] where
// p + d < t_end. y + (t - y_t0) is time t of output row 0.
template <typename T>
void pairs(const T* x, int64_t x_stride, int64_t T_len, const TwoTapWeights& w, const T* bias, int64_t off,
           int64_t d, int64_t p0, int64_t p1, int64_t t_end, T* y, int64_t y_t0, int64_t y_stride, bool accumulate) {
  const TapGemm<T>& gemm = tap_gemm<T>();
  const int64_t MR = gemm.mr, NR = gemm.pair_nr, c_in = w.c_in, c_out = w.c_out;
  const int64_t groups = (c_out + NR - 1) / NR;
  std::vector<T> block(c_in * 3 * MR), tile(NR * 2 * MR, T(0)), padded_bias;
  if (bias) {  // the last group reads NR values
    padded_bias.assign(groups * NR, T(0));
    std::copy(bias, bias + c_out, padded_bias.begin());
  }
  const T* W = w.packed.data_ptr<T>();
  for (int64_t p = p0; p < p1; p += MR) {
    const int64_t n0 = std::min(MR, p1 - p), n1 = std::clamp<int64_t>(t_end - (p + d), 0, n0);
    for (int64_t r = 0; r < 3; ++r)
      pack_times(x, x_stride, T_len, c_in, p + off + r * d, MR, block.data() + r * MR, 3 * MR);
    for (int64_t i = 0; i < c_in; ++i) {  // a | b | c -> a - b | b | c - b
      T* abc = block.data() + i * 3 * MR;
      for (int64_t m = 0; m < MR; ++m) {
        abc[m] -= abc[MR + m];
        abc[2 * MR + m] -= abc[MR + m];
      }
    }
    for (int64_t q = 0; q < groups; ++q) {
      const int64_t rows = std::min(NR, c_out - q * NR);
      const T* wq = W + q * c_in * 3 * NR;
      const T* bq = bias ? padded_bias.data() + q * NR : nullptr;
      T* y0 = y + q * NR * y_stride + (p - y_t0);
      T* y1 = n1 > 0 ? y0 + d : nullptr;  // the pair's second time, when it is inside the range
      if (rows == NR && n0 == MR && (n1 == MR || n1 == 0)) {
        gemm.pair(c_in, block.data(), wq, bq, y0, y1, y_stride, accumulate);
        continue;
      }
      if (accumulate) {
        copy_tile(y0, y_stride, tile.data(), 2 * MR, rows, n0);
        if (y1) copy_tile(y1, y_stride, tile.data() + MR, 2 * MR, rows, n1);
      }
      gemm.pair(c_in, block.data(), wq, bq, tile.data(), tile.data() + MR, 2 * MR, accumulate);
      copy_tile(tile.data(), 2 * MR, y0, y_stride, rows, n0);
      if (y1) copy_tile(tile.data() + MR, 2 * MR, y1, y_stride, rows, n1);
    }
  }
}

}  // namespace

TwoTapWeights pack_two_tap(const at::Tensor& w_first, const at::Tensor& w_second) {
  const int64_t c_out = w_first.size(0), c_in = w_first.size(1);
  const int64_t NR = AT_DISPATCH_FLOATING_TYPES(w_first.scalar_type(), "pack_two_tap",
                                                [&] { return tap_gemm<scalar_t>().pair_nr; });
  const int64_t groups = (c_out + NR - 1) / NR;
  at::Tensor stacked = at::zeros({groups * NR, 3, c_in}, w_first.options());
  stacked.narrow(0, 0, c_out).select(1, 0).copy_(w_first);
  stacked.narrow(0, 0, c_out).select(1, 1).copy_(w_first + w_second);
  stacked.narrow(0, 0, c_out).select(1, 2).copy_(w_second);
  return {stacked.view({groups, NR, 3, c_in}).permute({0, 3, 2, 1}).contiguous(), c_out, c_in};
}

bool two_tap_conv_applies(at::ScalarType dtype, int64_t d) {
  const int64_t MR = dtype == at::kDouble ? tap_gemm<double>().mr : tap_gemm<float>().mr;
  return (dtype == at::kFloat || dtype == at::kDouble) && d >= MR;
}

template <typename T>
void two_tap_conv_range(const T* x, int64_t x_stride, int64_t T_len, const TwoTapWeights& w, const T* bias,
                        int64_t off, int64_t d, int64_t t0, int64_t t1, T* y, int64_t y_stride, bool accumulate) {
  for (int64_t s = t0; s < t1; s += 2 * d)
    pairs(x, x_stride, T_len, w, bias, off, d, s, std::min(s + d, t1), t1, y, t0, y_stride, accumulate);
}

template void two_tap_conv_range<float>(const float*, int64_t, int64_t, const TwoTapWeights&, const float*, int64_t,
                                        int64_t, int64_t, int64_t, float*, int64_t, bool);
template void two_tap_conv_range<double>(const double*, int64_t, int64_t, const TwoTapWeights&, const double*,
                                         int64_t, int64_t, int64_t, int64_t, double*, int64_t, bool);

void two_tap_conv(const at::Tensor& x, const TwoTapWeights& w, const c10::optional<at::Tensor>& bias, int64_t off,
                  int64_t d, at::Tensor& out) {
  TORCH_INTERNAL_ASSERT(x.stride(2) == 1 && out.is_contiguous() && out.scalar_type() == x.scalar_type());
  const int64_t B = x.size(0), T_len = x.size(2), c_out = out.size(1);
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "two_tap_conv", [&] {
    // Work items: (sequence, block of 2d times, chunk of CHUNK first-half lanes runs), so
    // that a few long blocks still spread over the threads.
    const int64_t MR = tap_gemm<scalar_t>().mr, chunk = 8 * MR;
    const int64_t blocks = (T_len + 2 * d - 1) / (2 * d), chunks = (d + chunk - 1) / chunk;
    const scalar_t* X = x.data_ptr<scalar_t>();
    scalar_t* Y = out.data_ptr<scalar_t>();
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B * blocks * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t c = item % chunks, j = (item / chunks) % blocks, bi = item / (chunks * blocks);
        const int64_t s = j * 2 * d, p0 = s + c * chunk, p1 = std::min({s + d, p0 + chunk, T_len});
        if (p0 >= p1) continue;
        pairs(X + bi * x.stride(0), x.stride(1), T_len, w, bp, off, d, p0, p1, T_len, Y + bi * c_out * T_len, 0, T_len,
              false);
      }
    });
  });
}

}  // namespace fastgen::cpu
