// Winograd F(2, R) along rows (see row_winograd.h): the transforms, and the row
// convolutions on the sparse-tap engine.
#include "row_winograd.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>

#include "tap_conv.h"

namespace fastgen::cpu {
namespace {

// Interpolation points, best conditioned first; F(m, R) uses the first m + R - 2 and
// infinity. With these, BT's entries are multiples of 1/4 and the float32 error stays within
// ~1e-6 of the output scale (direct: ~1e-7).
constexpr double kPoints[] = {0.0, 1.0, -1.0, 0.5, -0.5, 2.0};
// Output rows per group (m). Two keep the transform causal by construction: only the point
// at infinity reads a group's last input row, and it feeds only the group's last output
// row, so no output depends, even by rounding, on a row its kernel does not reach. (F(4, 4)
// would take 7 products for 4 rows instead of 5 for 2, but its first rows then carry
// rounding-level traces of later rows: a causality leak in an autoregressive model.)
constexpr int64_t kRows = 2;
constexpr int64_t kMaxKernelRows = 4;  // k <= 7; larger kernels stay on the tap engine

struct Transforms {
  int64_t m, R, alpha;      // alpha = m + R - 1 products per group of m output rows
  std::vector<double> AT;  // (m, alpha): output rows from the products
  std::vector<double> G;   // (alpha, R): product weights from kernel rows
  std::vector<double> BT;  // (alpha, alpha): product inputs from input rows
};

// A and G as in Lavin & Gray's construction (fractions in G, applied to the weights in
// double); BT solved from the identity out[e] = sum_r w_r d_{e+r} for every w and d.
Transforms make_transforms(int64_t R) {
  const int64_t m = kRows, a = m + R - 1, n = a - 1;  // n finite points
  Transforms t{m, R, a, std::vector<double>(m * a, 0.0), std::vector<double>(a * R, 0.0),
               std::vector<double>(a * a)};
  for (int64_t j = 0; j < n; ++j) {
    const double p = kPoints[j];
    double f = 1.0;
    for (int64_t l = 0; l < n; ++l)
      if (l != j) f *= p - kPoints[l];
    for (int64_t e = 0; e < m; ++e) t.AT[e * a + j] = std::pow(p, static_cast<double>(e));
    for (int64_t r = 0; r < R; ++r) t.G[j * R + r] = std::pow(p, static_cast<double>(r)) / f;
  }
  t.AT[(m - 1) * a + a - 1] = 1.0;  // the point at infinity
  t.G[(a - 1) * R + R - 1] = 1.0;
  // P[(e, r), j] = AT[e, j] G[j, r]; solve P BT[:, k] = [k == e + r] for every k.
  at::Tensor P = at::empty({m * R, a}, at::kDouble), rhs = at::zeros({m * R, a}, at::kDouble);
  for (int64_t e = 0; e < m; ++e)
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t j = 0; j < a; ++j) P[e * R + r][j] = t.AT[e * a + j] * t.G[j * R + r];
      rhs[e * R + r][e + r] = 1.0;
    }
  const at::Tensor BT = std::get<0>(at::linalg_lstsq(P, rhs)).contiguous();
  TORCH_INTERNAL_ASSERT(at::allclose(at::mm(P, BT), rhs, 0, 1e-9), "row Winograd transform is inconsistent");
  // Snapped to the exact quarters they are, so that the input transform is exact.
  const double* bt = BT.data_ptr<double>();
  for (int64_t j = 0; j < a * a; ++j) {
    t.BT[j] = std::round(4 * bt[j]) / 4;
    TORCH_INTERNAL_ASSERT(std::abs(t.BT[j] - bt[j]) < 1e-9, "row Winograd: BT is not in quarters");
  }
  return t;
}

// Built once per R (solving costs more than a small layer).
const Transforms& transforms(int64_t R) {
  TORCH_INTERNAL_ASSERT(R >= 2 && R <= kMaxKernelRows);
  static std::mutex lock;
  static std::map<int64_t, Transforms> built;
  std::lock_guard<std::mutex> guard(lock);
  auto it = built.find(R);
  if (it == built.end()) it = built.emplace(R, make_transforms(R)).first;
  return it->second;
}

int64_t groups(int64_t H) { return (H + kRows - 1) / kRows; }

// dst[p][bc, j] (a row of W) = the sum of c * src over the (c, src) rows that
// terms(bc, j, p, add) passes to add: the input transform and the transposed output transform.
template <typename T, typename Terms>
void combine_rows(int64_t BC, int64_t H2, int64_t a, int64_t W, T* dst, const Terms& terms) {
  at::parallel_for(0, BC, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc)
      for (int64_t j = 0; j < H2; ++j)
        for (int64_t p = 0; p < a; ++p) {
          T* d = dst + ((p * BC + bc) * H2 + j) * W;
          std::fill(d, d + W, T(0));
          terms(bc, j, p, [&](T c, const T* src) {
            for (int64_t w = 0; w < W; ++w) d[w] += c * src[w];
          });
        }
  });
}

// U (alpha, B, C, H2, W): U[a][b, c, j] = sum_l BT[a, l] in[b, c, m j + dh0 + l], zero rows outside.
template <typename T>
void input_transform(const T* in, int64_t BC, int64_t H, int64_t W, const Transforms& t, int64_t dh0, T* U) {
  const int64_t a = t.alpha;
  combine_rows<T>(BC, groups(H), a, W, U, [&](int64_t bc, int64_t j, int64_t p, const auto& add) {
    for (int64_t l = 0; l < a; ++l) {
      const T c = static_cast<T>(t.BT[p * a + l]);
      const int64_t row = t.m * j + dh0 + l;
      if (c != T(0) && row >= 0 && row < H) add(c, in + (bc * H + row) * W);
    }
  });
}

// The transpose of input_transform, accumulated: grad_in[b, c, m j + dh0 + l] += sum_a BT[a, l] dU[a][b, c, j].
template <typename T>
void input_transform_backward(const T* dU, int64_t BC, int64_t H, int64_t W, const Transforms& t, int64_t dh0,
                              T* grad_in) {
  const int64_t H2 = groups(H), a = t.alpha;
  at::parallel_for(0, BC, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc)
      for (int64_t j = 0; j < H2; ++j)
        for (int64_t l = 0; l < a; ++l) {
          const int64_t row = t.m * j + dh0 + l;
          if (row < 0 || row >= H) continue;
          T* g = grad_in + (bc * H + row) * W;
          for (int64_t p = 0; p < a; ++p) {
            const T c = static_cast<T>(t.BT[p * a + l]);
            if (c == T(0)) continue;
            const T* u = dU + ((p * BC + bc) * H2 + j) * W;
            for (int64_t w = 0; w < W; ++w) g[w] += c * u[w];
          }
        }
  });
}

// out[b, o, m j + e] = bias[o] + sum_a AT[e, a] M[a][b, o, j], for the rows inside the image.
template <typename T>
void output_transform(const T* M, int64_t B, int64_t C, int64_t H, int64_t W, const Transforms& t, const T* bias,
                      T* out) {
  const int64_t H2 = groups(H), a = t.alpha, BC = B * C;
  at::parallel_for(0, BC, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const T b0 = bias ? bias[bc % C] : T(0);
      for (int64_t h = 0; h < H; ++h) {
        T* y = out + (bc * H + h) * W;
        std::fill(y, y + W, b0);
        for (int64_t p = 0; p < a; ++p) {
          const T c = static_cast<T>(t.AT[(h % t.m) * a + p]);
          if (c == T(0)) continue;
          const T* mp = M + ((p * BC + bc) * H2 + h / t.m) * W;
          for (int64_t w = 0; w < W; ++w) y[w] += c * mp[w];
        }
      }
    }
  });
}

// The transpose of output_transform: dM[a][b, o, j] = sum_e AT[e, a] grad_out[b, o, m j + e].
template <typename T>
void output_transform_backward(const T* grad_out, int64_t BC, int64_t H, int64_t W, const Transforms& t, T* dM) {
  const int64_t a = t.alpha;
  combine_rows<T>(BC, groups(H), a, W, dM, [&](int64_t bc, int64_t j, int64_t p, const auto& add) {
    for (int64_t e = 0; e < t.m && t.m * j + e < H; ++e) {
      const T c = static_cast<T>(t.AT[e * a + p]);
      if (c != T(0)) add(c, grad_out + (bc * H + t.m * j + e) * W);
    }
  });
}

// The row convolutions' taps: one row, the column offsets (negated for the transpose).
TapSet column_taps(const RowConv& conv, int64_t sign) {
  TapSet taps;
  for (int64_t dw : conv.dw) {
    taps.dh.push_back(0);
    taps.dw.push_back(sign * dw);
  }
  return taps;
}

// V (alpha, nq, C_out, C_in) = sum_r G[a, r] weight[:, :, r, :], computed in double.
at::Tensor weight_transform(const at::Tensor& weight, const Transforms& t) {
  const at::Tensor G = at::tensor(t.G, at::kDouble).view({t.alpha, t.R});
  return at::einsum("ar,oirq->aqoi", {G, weight.to(at::kDouble)}).to(weight.scalar_type()).contiguous();
}

}  // namespace

bool row_winograd_applies(int64_t R) { return R >= 2 && R <= kMaxKernelRows; }

void row_winograd_forward(const at::Tensor& in_any, const at::Tensor& weight, const RowConv& conv,
                          const c10::optional<at::Tensor>& bias, at::Tensor& out) {
  const at::Tensor in = in_any.contiguous();
  const int64_t B = in.size(0), c_in = in.size(1), H = in.size(2), W = in.size(3), c_out = weight.size(0);
  const Transforms& t = transforms(weight.size(2));
  const at::Tensor V = weight_transform(weight, t);
  const TapSet taps = column_taps(conv, 1);
  const int64_t H2 = groups(H);
  at::Tensor U = at::empty({t.alpha, B, c_in, H2, W}, in.options());
  at::Tensor M = at::empty({t.alpha, B, c_out, H2, W}, in.options());
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "row_winograd_forward", [&] {
    input_transform<scalar_t>(in.data_ptr<scalar_t>(), B * c_in, H, W, t, conv.dh0, U.data_ptr<scalar_t>());
    for (int64_t a = 0; a < t.alpha; ++a) {
      at::Tensor m = M[a];
      tap_conv_forward(U[a], V[a], taps, c10::nullopt, m);
    }
    output_transform<scalar_t>(M.data_ptr<scalar_t>(), B, c_out, H, W, t,
                               b.defined() ? b.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>());
  });
}

std::tuple<at::Tensor, at::Tensor> row_winograd_backward(const at::Tensor& in_any, const at::Tensor& grad_out_any,
                                                         const at::Tensor& weight, const RowConv& conv, bool need_in,
                                                         bool need_weight) {
  const at::Tensor in = in_any.contiguous(), grad_out = grad_out_any.contiguous();
  const int64_t B = in.size(0), c_in = in.size(1), H = in.size(2), W = in.size(3), c_out = weight.size(0);
  const Transforms& t = transforms(weight.size(2));
  const int64_t H2 = groups(H);
  at::Tensor dM = at::empty({t.alpha, B, c_out, H2, W}, in.options());
  at::Tensor grad_in, grad_weight;
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "row_winograd_backward", [&] {
    output_transform_backward<scalar_t>(grad_out.data_ptr<scalar_t>(), B * c_out, H, W, t, dM.data_ptr<scalar_t>());
    if (need_weight) {
      at::Tensor U = at::empty({t.alpha, B, c_in, H2, W}, in.options());
      input_transform<scalar_t>(in.data_ptr<scalar_t>(), B * c_in, H, W, t, conv.dh0, U.data_ptr<scalar_t>());
      const TapSet taps = column_taps(conv, 1);
      std::vector<at::Tensor> dV;  // alpha x (nq, C_in, C_out)
      for (int64_t a = 0; a < t.alpha; ++a) dV.push_back(tap_conv_weight_grad(U[a], dM[a], taps));
      const at::Tensor G = at::tensor(t.G, at::kDouble).view({t.alpha, t.R});
      grad_weight = at::einsum("ar,aqio->oirq", {G, at::stack(dV).to(at::kDouble)}).to(in.scalar_type());
    }
    if (need_in) {
      // dU_a = the transposed row convolution of dM_a: weights V_a^T, column offsets negated.
      const at::Tensor Vt = weight_transform(weight, t).transpose(2, 3).contiguous();  // (alpha, nq, C_in, C_out)
      const TapSet taps = column_taps(conv, -1);
      at::Tensor dU = at::empty({t.alpha, B, c_in, H2, W}, in.options());
      for (int64_t a = 0; a < t.alpha; ++a) {
        at::Tensor u = dU[a];
        tap_conv_forward(dM[a], Vt[a], taps, c10::nullopt, u);
      }
      grad_in = at::zeros({B, c_in, H, W}, in.options());
      input_transform_backward<scalar_t>(dU.data_ptr<scalar_t>(), B * c_in, H, W, t, conv.dh0,
                                         grad_in.data_ptr<scalar_t>());
    }
  });
  return {grad_in, grad_weight};
}

}  // namespace fastgen::cpu
