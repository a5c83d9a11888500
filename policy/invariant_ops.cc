#include "policy/invariant_ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "kernels/invariant/invariant_math.h"
#include "policy/invariant_cuda.h"

// Built with -ffp-contract=off (policy/CMakeLists.txt): a multiply-add fused into one FMA
// in one loop and left as two roundings in another would break the equality these ops
// exist for. Without -ffast-math the compiler keeps every sum in the order written.

namespace lightrl {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

torch::Tensor Fp32(const torch::Tensor& t) { return t.to(torch::kFloat32).contiguous(); }

// Rows [r0, r1) and columns [c0, c1) of out = x [N, K] wt [K, M]: each output sums
// k = 0..K-1 in order, vectorised across columns. Every lane does the same IEEE multiply
// and add in the same order, so the clones for wider vectors give the same bits as the
// baseline one (the one the CPU picks runs everywhere in the process).
__attribute__((target_clones("avx512f", "avx2", "default"))) void LinearTile(
    const float* x, const float* wt, float* out, int64_t K, int64_t M, int64_t r0, int64_t r1,
    int64_t c0, int64_t c1) {
  for (int64_t r = r0; r < r1; ++r) std::fill(out + r * M + c0, out + r * M + c1, 0.0f);
  for (int64_t kk = 0; kk < K; ++kk) {
    const float* __restrict__ w = wt + kk * M;
    for (int64_t r = r0; r < r1; ++r) {
      const float xv = x[r * K + kk];
      float* __restrict__ o = out + r * M;
      for (int64_t c = c0; c < c1; ++c) o[c] += xv * w[c];
    }
  }
}

// out [N, M] = x [N, K] wt [K, M] in tiles of rows and columns that share the loads of wt;
// the tiling never changes an output's order.
void LinearRows(const float* x, const float* wt, float* out, int64_t N, int64_t K, int64_t M) {
  constexpr int64_t kRows = 4, kCols = 512;
  const int64_t row_tiles = (N + kRows - 1) / kRows, col_tiles = (M + kCols - 1) / kCols;
  at::parallel_for(0, row_tiles * col_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t r0 = tile / col_tiles * kRows, c0 = tile % col_tiles * kCols;
      LinearTile(x, wt, out, K, M, r0, std::min(N, r0 + kRows), c0, std::min(M, c0 + kCols));
    }
  });
}

class LinearFunction : public torch::autograd::Function<LinearFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                               int64_t out_dtype) {
    ctx->save_for_backward({x, w});
    const auto dtype = static_cast<torch::ScalarType>(out_dtype);
    if (x.is_cuda()) return invariant_cuda::Linear(x, w).to(dtype);
    const int64_t N = x.size(0), K = x.size(1), M = w.size(0);
    auto xf = Fp32(x);
    auto wt = w.to(torch::kFloat32).t().contiguous();
    auto out = torch::empty({N, M}, xf.options());
    LinearRows(xf.data_ptr<float>(), wt.data_ptr<float>(), out.data_ptr<float>(), N, K, M);
    return out.to(dtype);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& w = saved[1];
    // The backward's order is free: on the GPU its matmuls run in the inputs' dtype (bf16
    // on the tensor cores with FP32 accumulation, as the default path's), on the CPU in FP32
    // (ATen's CPU bf16 GEMM is slow).
    const auto dtype = x.is_cuda() && x.scalar_type() == w.scalar_type() ? x.scalar_type()
                                                                          : torch::kFloat32;
    auto g = grad_out[0].to(dtype);
    torch::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) dx = g.mm(w.to(dtype)).to(x.scalar_type());
    if (ctx->needs_input_grad(1)) dw = g.t().mm(x.to(dtype)).to(w.scalar_type());
    return {dx, dw, torch::Tensor()};
  }
};

// 1 / sqrt(mean(x^2) + eps) of each row of FP32 x [N, D], as [N, 1].
class RowRsqrtFunction : public torch::autograd::Function<RowRsqrtFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& xf, double eps) {
    if (xf.is_cuda()) {
      auto r = invariant_cuda::RowRsqrt(xf, eps);
      ctx->save_for_backward({xf, r});
      return r;
    }
    const int64_t N = xf.size(0), D = xf.size(1);
    auto x = xf.contiguous();
    auto r = torch::empty({N, 1}, x.options());
    const float* px = x.data_ptr<float>();
    float* pr = r.data_ptr<float>();
    const float e = static_cast<float>(eps), dim = static_cast<float>(D);
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        float ss = 0.0f;
        for (int64_t i = 0; i < D; ++i) ss += px[n * D + i] * px[n * D + i];
        pr[n] = inv::Div(1.0f, inv::Sqrt(inv::Add(inv::Div(ss, dim), e)));
      }
    });
    ctx->save_for_backward({xf, r});
    return r;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& r = saved[1];
    // d r / d x_i = -r^3 x_i / D.
    auto g = grad_out[0] * r.pow(3) / static_cast<double>(x.size(1));
    return {-g * x, torch::Tensor()};
  }
};

enum class Unary { kSilu, kSigmoid };

class UnaryFunction : public torch::autograd::Function<UnaryFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t kind) {
    ctx->save_for_backward({x});
    ctx->saved_data["kind"] = kind;
    const bool silu = static_cast<Unary>(kind) == Unary::kSilu;
    if (x.is_cuda()) return invariant_cuda::Unary(x, silu).to(x.scalar_type());
    auto xf = Fp32(x);
    auto out = torch::empty_like(xf);
    const float* px = xf.data_ptr<float>();
    float* po = out.data_ptr<float>();
    at::parallel_for(0, xf.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float s = inv::InvSigmoid(px[i]);
        po[i] = silu ? inv::Mul(px[i], s) : s;
      }
    });
    return out.to(x.scalar_type());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto x = ctx->get_saved_variables()[0];
    const bool silu = static_cast<Unary>(ctx->saved_data["kind"].toInt()) == Unary::kSilu;
    auto xf = x.to(torch::kFloat32);
    auto s = torch::sigmoid(xf);
    auto d = silu ? s * (1 + xf * (1 - s)) : s * (1 - s);
    return {(grad_out[0].to(torch::kFloat32) * d).to(x.scalar_type()), torch::Tensor()};
  }
};

class SoftmaxFunction : public torch::autograd::Function<SoftmaxFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x) {
    if (x.is_cuda()) {
      auto p = invariant_cuda::Softmax(x);
      ctx->save_for_backward({p});
      return p;
    }
    auto xf = Fp32(x);
    const int64_t N = xf.size(0), E = xf.size(1);
    auto p = torch::empty_like(xf);
    const float* px = xf.data_ptr<float>();
    float* pp = p.data_ptr<float>();
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const float* row = px + n * E;
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t e = 0; e < E; ++e) m = inv::Max(m, row[e]);
        float sum = 0.0f;
        for (int64_t e = 0; e < E; ++e) {
          pp[n * E + e] = inv::InvExp(row[e] - m);
          sum += pp[n * E + e];
        }
        for (int64_t e = 0; e < E; ++e) pp[n * E + e] /= sum;
      }
    });
    ctx->save_for_backward({p});
    return p;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto p = ctx->get_saved_variables()[0];
    auto gp = grad_out[0] * p;
    return {gp - p * gp.sum(-1, /*keepdim=*/true)};
  }
};

// --- lightning attention: the token recurrence ---

struct LightningArgs {
  const float *q, *k, *v, *init;  // init may be null (zeros)
  std::vector<float> decay;       // [H]: exp(-slope) (inv::InvExp, as the CUDA kernel)
  int64_t H, d;
  const std::vector<int64_t>* cu;
};

// Document `doc`, head `h`: o (and the last state into `last`, when not null).
void LightningDocHead(const LightningArgs& a, int64_t doc, int64_t h, float* o, float* last) {
  const int64_t d = a.d, H = a.H, b = (*a.cu)[doc], e = (*a.cu)[doc + 1];
  std::vector<float> S(d * d, 0.0f);
  if (a.init != nullptr) std::copy_n(a.init + (doc * H + h) * d * d, d * d, S.data());
  const float lambda = a.decay[h];
  for (int64_t t = b; t < e; ++t) {
    const float* q = a.q + (t * H + h) * d;
    const float* k = a.k + (t * H + h) * d;
    const float* v = a.v + (t * H + h) * d;
    float* out = o + (t * H + h) * d;
    for (int64_t i = 0; i < d; ++i) {
      for (int64_t j = 0; j < d; ++j) S[i * d + j] = lambda * S[i * d + j] + k[i] * v[j];
    }
    std::fill(out, out + d, 0.0f);
    for (int64_t i = 0; i < d; ++i) {
      for (int64_t j = 0; j < d; ++j) out[j] += q[i] * S[i * d + j];
    }
  }
  if (last != nullptr) std::copy_n(S.data(), d * d, last + (doc * H + h) * d * d);
}

std::vector<float> Decays(const torch::Tensor& slope) {
  auto s = slope.to(torch::kCPU, torch::kFloat32).contiguous();
  std::vector<float> decay(s.numel());
  for (int64_t h = 0; h < s.numel(); ++h) decay[h] = inv::InvExp(-s.data_ptr<float>()[h]);
  return decay;
}

class LightningFunction : public torch::autograd::Function<LightningFunction> {
 public:
  // Returns (o [T, H, d] FP32, last states [N, H, d, d] FP32).
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& slope,
                               const std::vector<int64_t>& cu, const torch::Tensor& init) {
    auto qf = Fp32(q), kf = Fp32(k), vf = Fp32(v);
    // No initial states: an empty tensor (a custom function's inputs must be defined).
    torch::Tensor initf = init.numel() > 0 ? Fp32(init) : torch::Tensor();
    const int64_t T = q.size(0), H = q.size(1), d = q.size(2);
    const int64_t N = static_cast<int64_t>(cu.size()) - 1;
    torch::Tensor o, last;
    if (q.is_cuda()) {
      std::tie(o, last) = invariant_cuda::Lightning(qf, kf, vf, slope, cu, initf);
    } else {
      LightningArgs a{qf.data_ptr<float>(), kf.data_ptr<float>(), vf.data_ptr<float>(),
                      initf.defined() ? initf.data_ptr<float>() : nullptr, Decays(slope), H, d, &cu};
      o = torch::empty({T, H, d}, qf.options());
      last = torch::empty({N, H, d, d}, qf.options());
      at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          LightningDocHead(a, i / H, i % H, o.data_ptr<float>(), last.data_ptr<float>());
        }
      });
    }
    ctx->save_for_backward({qf, kf, vf, slope, initf});
    ctx->saved_data["cu"] = cu;
    ctx->saved_data["dtypes"] = std::vector<int64_t>{static_cast<int64_t>(q.scalar_type()),
                                                     static_cast<int64_t>(k.scalar_type()),
                                                     static_cast<int64_t>(v.scalar_type())};
    ctx->mark_non_differentiable({last});
    return {o, last};
  }

  // dq_t = S_t g_t (S rebuilt forward); G_t = lambda G_{t+1} + q_t g_t^T backward, with
  // dk_t = G_t v_t and dv_t = G_t^T k_t.
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto &qf = saved[0], &kf = saved[1], &vf = saved[2], &slope = saved[3];
    const auto& initf = saved[4];
    const auto cu = ctx->saved_data["cu"].toIntVector();
    const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
    const int64_t H = qf.size(1), d = qf.size(2), N = static_cast<int64_t>(cu.size()) - 1;
    auto g = Fp32(grad_out[0].defined() ? grad_out[0] : torch::zeros_like(qf));
    auto as = [&](const torch::Tensor& t, int64_t i) {
      return t.to(static_cast<torch::ScalarType>(dtypes[i]));
    };
    if (qf.is_cuda()) {
      auto d_qkv = invariant_cuda::LightningBackward(qf, kf, vf, g, slope, cu, initf);
      return {as(d_qkv[0], 0), as(d_qkv[1], 1), as(d_qkv[2], 2), torch::Tensor(), torch::Tensor(),
              torch::Tensor()};
    }
    const auto decay = Decays(slope);
    auto dq = torch::zeros_like(qf), dk = torch::zeros_like(qf), dv = torch::zeros_like(qf);
    const float *q = qf.data_ptr<float>(), *k = kf.data_ptr<float>(), *v = vf.data_ptr<float>();
    const float* go = g.data_ptr<float>();
    const float* init = initf.defined() ? initf.data_ptr<float>() : nullptr;
    float *pdq = dq.data_ptr<float>(), *pdk = dk.data_ptr<float>(), *pdv = dv.data_ptr<float>();
    at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> S(d * d), G(d * d);
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t doc = idx / H, h = idx % H, b = cu[doc], e = cu[doc + 1];
        const float lambda = decay[h];
        std::fill(S.begin(), S.end(), 0.0f);
        if (init != nullptr) std::copy_n(init + (doc * H + h) * d * d, d * d, S.data());
        for (int64_t t = b; t < e; ++t) {
          const int64_t at = (t * H + h) * d;
          for (int64_t i = 0; i < d; ++i) {
            float acc = 0.0f;
            for (int64_t j = 0; j < d; ++j) {
              S[i * d + j] = lambda * S[i * d + j] + k[at + i] * v[at + j];
              acc += S[i * d + j] * go[at + j];
            }
            pdq[at + i] = acc;
          }
        }
        std::fill(G.begin(), G.end(), 0.0f);
        for (int64_t t = e - 1; t >= b; --t) {
          const int64_t at = (t * H + h) * d;
          for (int64_t i = 0; i < d; ++i) {
            float acc = 0.0f;
            for (int64_t j = 0; j < d; ++j) {
              G[i * d + j] = lambda * G[i * d + j] + q[at + i] * go[at + j];
              acc += G[i * d + j] * v[at + j];
              pdv[at + j] += G[i * d + j] * k[at + i];
            }
            pdk[at + i] = acc;
          }
        }
      }
    });
    return {as(dq, 0), as(dk, 1), as(dv, 2), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// --- softmax attention: each query over its keys in order ---

// One query q [d] of kv head `kvh` over rows[0..n) of k, v [*, KVH, d]: out [d] FP32.
// `scores` has room for n.
void AttendOne(const float* q, const float* k, const float* v, int64_t KVH, int64_t kvh,
               const int64_t* rows, int64_t n, int64_t d, float scale, float* scores, float* out) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    const float* kr = k + (rows[j] * KVH + kvh) * d;
    float dot = 0.0f;
    for (int64_t i = 0; i < d; ++i) dot += q[i] * kr[i];
    scores[j] = dot * scale;
    m = inv::Max(m, scores[j]);
  }
  float sum = 0.0f;
  std::fill(out, out + d, 0.0f);
  for (int64_t j = 0; j < n; ++j) {
    const float p = inv::InvExp(scores[j] - m);
    sum += p;
    const float* vr = v + (rows[j] * KVH + kvh) * d;
    for (int64_t i = 0; i < d; ++i) out[i] += p * vr[i];
  }
  for (int64_t i = 0; i < d; ++i) out[i] /= sum;
}

// o [Q, H, d] FP32 of queries q [Q, H, d]; query `i` reads rows rows_of(i) (pointer, count).
template <typename RowsOf>
torch::Tensor AttendAll(const torch::Tensor& qf, const torch::Tensor& kf, const torch::Tensor& vf,
                        float scale, int64_t max_rows, const RowsOf& rows_of) {
  const int64_t Q = qf.size(0), H = qf.size(1), d = qf.size(2), KVH = kf.size(1);
  TORCH_CHECK(H % KVH == 0, "attention: ", H, " heads over ", KVH, " KV heads");
  auto o = torch::empty({Q, H, d}, qf.options());
  const float *q = qf.data_ptr<float>(), *k = kf.data_ptr<float>(), *v = vf.data_ptr<float>();
  float* po = o.data_ptr<float>();
  at::parallel_for(0, Q * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(std::max<int64_t>(max_rows, 1));
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t i = idx / H, h = idx % H;
      auto [rows, n] = rows_of(i);
      AttendOne(q + idx * d, k, v, KVH, h / (H / KVH), rows, n, d, scale, scores.data(),
                po + idx * d);
    }
  });
  return o;
}

// The gradient of causal attention within each document by autograd through torch ops
// (the backward's order is free; on CUDA these are its kernels): per document the [H, L, L]
// probabilities, so memory grows with the square of the longest document.
}  // namespace

std::vector<torch::Tensor> InvariantAttentionGrad(const torch::Tensor& qf, const torch::Tensor& kf,
                                                  const torch::Tensor& vf, const torch::Tensor& g,
                                                  const std::vector<int64_t>& cu, double scale,
                                                  int64_t max_elements) {
  torch::AutoGradMode enable_grad(true);
  auto q = qf.detach().requires_grad_(), k = kf.detach().requires_grad_();
  auto v = vf.detach().requires_grad_();
  const int64_t H = q.size(1), KVH = k.size(1), d = q.size(2), group = H / KVH;
  // The documents by length, longest first, in groups padded to their longest: a group's
  // scores [n, H, L, L] stay within max_elements (a document alone may exceed it).
  std::vector<int64_t> docs;
  for (size_t doc = 0; doc + 1 < cu.size(); ++doc) {
    if (cu[doc + 1] > cu[doc]) docs.push_back(static_cast<int64_t>(doc));
  }
  const auto length = [&cu](int64_t doc) { return cu[doc + 1] - cu[doc]; };
  std::stable_sort(docs.begin(), docs.end(),
                   [&](int64_t a, int64_t b) { return length(a) > length(b); });
  std::vector<torch::Tensor> outs;
  std::vector<int64_t> order;  // the token row of each output row, in the groups' order
  const auto dev = [&q](const std::vector<int64_t>& v) { return HostToDevice(v, q.device()); };
  for (size_t first = 0; first < docs.size();) {
    const int64_t L = length(docs[first]);
    size_t last = first + 1;
    while (last < docs.size() &&
           static_cast<int64_t>(last - first + 1) * H * L * L <= max_elements) {
      ++last;
    }
    const int64_t n = static_cast<int64_t>(last - first);
    // Each document's rows padded by its first row to L, and which of them are its own.
    std::vector<int64_t> rows(n * L), valid;
    std::vector<int64_t> keep;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = cu[docs[first + i]], len = length(docs[first + i]);
      for (int64_t t = 0; t < L; ++t) rows[i * L + t] = t < len ? b + t : b;
      for (int64_t t = 0; t < len; ++t) {
        keep.push_back(i * L + t);
        order.push_back(b + t);
      }
      for (int64_t t = 0; t < L; ++t) valid.push_back(t < len ? 1 : 0);
    }
    auto index = dev(rows);
    auto qg = q.index_select(0, index).view({n, L, H, d}).transpose(1, 2);
    auto kg = k.index_select(0, index).view({n, L, KVH, d}).transpose(1, 2).repeat_interleave(group, 1);
    auto vg = v.index_select(0, index).view({n, L, KVH, d}).transpose(1, 2).repeat_interleave(group, 1);
    auto scores = torch::matmul(qg, kg.transpose(-1, -2)) * scale;  // [n, H, L, L]
    // Query t sees keys 0..t of its document (a padding query's row is dropped below; key
    // 0 keeps every row finite).
    auto allowed = torch::ones({L, L}, q.options().dtype(torch::kBool)).tril().view({1, 1, L, L}) &
                   (dev(valid).view({n, 1, 1, L}) > 0);
    auto p = torch::softmax(scores.masked_fill(allowed.logical_not(),
                                               -std::numeric_limits<float>::infinity()), -1);
    auto o = torch::matmul(p, vg).transpose(1, 2).reshape({n * L, H, d});
    outs.push_back(o.index_select(0, dev(keep)));
    first = last;
  }
  if (outs.empty()) return {torch::zeros_like(qf), torch::zeros_like(kf), torch::zeros_like(vf)};
  return torch::autograd::grad({torch::cat(outs)}, {q, k, v}, {g.index_select(0, dev(order))});
}

namespace {

class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const std::vector<int64_t>& cu, double scale) {
    auto qf = Fp32(q), kf = Fp32(k), vf = Fp32(v);
    const int64_t T = q.size(0);
    std::vector<int64_t> start(T), rows(T);
    int64_t max_len = 0;
    for (size_t doc = 0; doc + 1 < cu.size(); ++doc) {
      for (int64_t t = cu[doc]; t < cu[doc + 1]; ++t) start[t] = cu[doc];
      max_len = std::max(max_len, cu[doc + 1] - cu[doc]);
    }
    torch::Tensor o;
    if (q.is_cuda()) {
      std::vector<int64_t> count(T);
      for (int64_t t = 0; t < T; ++t) count[t] = t - start[t] + 1;
      o = invariant_cuda::Attention(qf, kf, vf, start, count, nullptr, scale);
    } else {
      for (int64_t t = 0; t < T; ++t) rows[t] = t;
      o = AttendAll(qf, kf, vf, static_cast<float>(scale), max_len, [&](int64_t t) {
        return std::pair<const int64_t*, int64_t>(rows.data() + start[t], t - start[t] + 1);
      });
    }
    ctx->save_for_backward({qf, kf, vf});
    ctx->saved_data["cu"] = cu;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["dtypes"] = std::vector<int64_t>{static_cast<int64_t>(q.scalar_type()),
                                                     static_cast<int64_t>(k.scalar_type()),
                                                     static_cast<int64_t>(v.scalar_type())};
    return o.to(q.scalar_type());
  }

  // Per document and KV head (they own their keys' gradients): p_j recomputed, dv_j +=
  // p_j g, ds_j = p_j (g.v_j - sum_j p_j g.v_j), dq = scale sum_j ds_j k_j, dk_j += scale ds_j q.
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto &qf = saved[0], &kf = saved[1], &vf = saved[2];
    const auto cu = ctx->saved_data["cu"].toIntVector();
    const float scale = static_cast<float>(ctx->saved_data["scale"].toDouble());
    const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
    const int64_t H = qf.size(1), d = qf.size(2), KVH = kf.size(1), group = H / KVH;
    const int64_t N = static_cast<int64_t>(cu.size()) - 1;
    auto g = Fp32(grad_out[0]);
    auto as = [&](const torch::Tensor& t, int64_t i) {
      return t.to(static_cast<torch::ScalarType>(dtypes[i]));
    };
    if (qf.is_cuda()) {
      auto d_qkv = InvariantAttentionGrad(qf, kf, vf, g, cu, scale);
      return {as(d_qkv[0], 0), as(d_qkv[1], 1), as(d_qkv[2], 2), torch::Tensor(), torch::Tensor()};
    }
    auto dq = torch::zeros_like(qf), dk = torch::zeros_like(kf), dv = torch::zeros_like(vf);
    const float *q = qf.data_ptr<float>(), *k = kf.data_ptr<float>(), *v = vf.data_ptr<float>();
    const float* go = g.data_ptr<float>();
    float *pdq = dq.data_ptr<float>(), *pdk = dk.data_ptr<float>(), *pdv = dv.data_ptr<float>();
    at::parallel_for(0, N * KVH, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> p, dp;
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t doc = idx / KVH, kvh = idx % KVH, b = cu[doc], e = cu[doc + 1];
        p.resize(e - b);
        dp.resize(e - b);
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
          for (int64_t t = b; t < e; ++t) {
            const float* qt = q + (t * H + h) * d;
            const float* gt = go + (t * H + h) * d;
            const int64_t n = t - b + 1;
            float m = -std::numeric_limits<float>::infinity();
            for (int64_t j = 0; j < n; ++j) {
              const float* kr = k + ((b + j) * KVH + kvh) * d;
              float dot = 0.0f;
              for (int64_t i = 0; i < d; ++i) dot += qt[i] * kr[i];
              p[j] = dot * scale;
              m = std::max(m, p[j]);
            }
            float sum = 0.0f;
            for (int64_t j = 0; j < n; ++j) sum += (p[j] = std::exp(p[j] - m));
            float mean = 0.0f;
            for (int64_t j = 0; j < n; ++j) {
              p[j] /= sum;
              const float* vr = v + ((b + j) * KVH + kvh) * d;
              float dot = 0.0f;
              for (int64_t i = 0; i < d; ++i) dot += gt[i] * vr[i];
              dp[j] = dot;
              mean += p[j] * dot;
            }
            float* dqt = pdq + (t * H + h) * d;
            for (int64_t j = 0; j < n; ++j) {
              const float ds = p[j] * (dp[j] - mean) * scale;
              const int64_t row = ((b + j) * KVH + kvh) * d;
              for (int64_t i = 0; i < d; ++i) {
                dqt[i] += ds * k[row + i];
                pdk[row + i] += ds * qt[i];
                pdv[row + i] += p[j] * gt[i];
              }
            }
          }
        }
      }
    });
    return {as(dq, 0), as(dk, 1), as(dv, 2), torch::Tensor(), torch::Tensor()};
  }
};

// --- the LM head's logprob ---

class TokenLogprobsFunction : public torch::autograd::Function<TokenLogprobsFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits,
                               const torch::Tensor& targets, const std::vector<double>& temperature) {
    auto lf = Fp32(logits);
    const int64_t N = lf.size(0), V = lf.size(1);
    std::vector<float> inv_t(N);  // the divisor per row, as the sampler's FP32 one
    for (int64_t n = 0; n < N; ++n) {
      inv_t[n] = static_cast<float>(temperature.size() == 1 ? temperature[0] : temperature[n]);
    }
    auto temps = HostToDevice(inv_t, lf.device()).unsqueeze(1);
    if (lf.is_cuda()) {
      auto ids = targets.to(lf.device(), torch::kInt64).contiguous();
      ctx->save_for_backward({lf, ids, temps});
      return invariant_cuda::TokenLogprobs(lf, ids, inv_t);
    }
    auto ids = targets.to(torch::kCPU, torch::kInt64).contiguous();
    auto out = torch::empty({N}, lf.options());
    const float* pl = lf.data_ptr<float>();
    const int64_t* pid = ids.data_ptr<int64_t>();
    float* po = out.data_ptr<float>();
    // The row's max, then its exponentials summed in the lanes of inv::kSumLanes (lane l the
    // elements l, l + L, ... in order; then the lanes as a tree), as the CUDA kernel does.
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      constexpr int L = inv::kSumLanes;
      float lanes[L];
      for (int64_t n = begin; n < end; ++n) {
        const float* row = pl + n * V;
        const float t = inv_t[n];
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < V; ++i) m = inv::Max(m, row[i] / t);
        std::fill(lanes, lanes + L, 0.0f);
        for (int64_t i = 0; i < V; ++i) lanes[i % L] += inv::InvExp(row[i] / t - m);
        for (int s = L / 2; s > 0; s /= 2) {
          for (int l = 0; l < s; ++l) lanes[l] += lanes[l + s];
        }
        po[n] = (row[pid[n]] / t - m) - inv::InvLog(lanes[0]);
      }
    });
    ctx->save_for_backward({lf, ids, temps});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto &lf = saved[0], &ids = saved[1], &temps = saved[2];
    auto p = torch::softmax(lf / temps, -1);
    auto onehot = torch::zeros_like(p).scatter(1, ids.unsqueeze(1), 1.0);
    auto grad = grad_out[0].unsqueeze(1) * (onehot - p) / temps;
    return {grad, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

namespace {
template <typename T>
torch::Tensor ToDevice(const std::vector<T>& values, const torch::Device& device) {
  auto host = torch::tensor(values, std::is_same_v<T, float> ? torch::kFloat32 : torch::kInt64);
  if (!device.is_cuda()) return host;
  return host.pin_memory().to(device, /*non_blocking=*/true);
}
}  // namespace

torch::Tensor HostToDevice(const std::vector<int64_t>& values, const torch::Device& device) {
  return ToDevice(values, device);
}

torch::Tensor HostToDevice(const std::vector<float>& values, const torch::Device& device) {
  return ToDevice(values, device);
}

torch::Tensor InvariantLinear(const torch::Tensor& x, const torch::Tensor& w,
                              c10::optional<torch::ScalarType> out_dtype) {
  TORCH_CHECK(w.dim() == 2 && x.size(-1) == w.size(1), "linear: input ", x.sizes(),
              " does not match weight ", w.sizes());
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = w.size(0);
  auto out = LinearFunction::apply(x.reshape({-1, w.size(1)}), w,
                                   static_cast<int64_t>(out_dtype.value_or(x.scalar_type())));
  return out.view(shape);
}

namespace {
// A CUDA tensor of FP32 or bf16 outside autograd: the ops' fused one-kernel forms serve it.
bool FusedNoGrad(const torch::Tensor& x, const torch::Tensor& other = {}) {
  const bool grad = torch::GradMode::is_enabled() &&
                    (x.requires_grad() || (other.defined() && other.requires_grad()));
  return x.is_cuda() && !grad &&
         (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16) &&
         (!other.defined() || other.scalar_type() == x.scalar_type());
}
}  // namespace

namespace {
// Whether bf16 CUDA rows and weights can take the grouped tensor-core kernel (under autograd:
// GroupedLinearFunction).
bool GroupedOnTensorCores(const torch::Tensor& x, const std::vector<torch::Tensor>& weights) {
  if (!x.is_cuda() || x.scalar_type() != torch::kBFloat16 || x.dim() != 2) return false;
  for (const auto& w : weights) {
    if (!w.is_cuda() || w.scalar_type() != torch::kBFloat16 || !w.is_contiguous()) return false;
  }
  return true;
}

// The grouped linear under autograd: the forward in one launch (each row the bits
// InvariantLinear gives it, as outside autograd), the backward group by group in bf16 on
// the tensor cores with FP32 accumulation, as LinearFunction's (its order is free).
class GroupedLinearFunction : public torch::autograd::Function<GroupedLinearFunction> {
 public:
  // `weights` as a TensorList: autograd tracks each of them (a std::vector would pass as a
  // constant).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               at::TensorList weights, const std::vector<int64_t>& offsets) {
    std::vector<torch::Tensor> saved = {x};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["offsets"] = offsets;
    return invariant_cuda::GroupedLinear(x, weights.vec(), offsets).to(x.scalar_type());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto offsets = ctx->saved_data["offsets"].toIntVector();
    const auto& x = saved[0];
    const size_t groups = saved.size() - 1;
    auto g = grad_out[0].to(x.scalar_type());
    variable_list grads(groups + 2);
    std::vector<torch::Tensor> dx;
    for (size_t i = 0; i < groups; ++i) {
      const auto& w = saved[1 + i];
      auto rows_g = g.narrow(0, offsets[i], offsets[i + 1] - offsets[i]);
      if (ctx->needs_input_grad(0)) dx.push_back(rows_g.mm(w));
      if (ctx->needs_input_grad(1 + i)) {
        grads[1 + i] = rows_g.t().mm(x.narrow(0, offsets[i], offsets[i + 1] - offsets[i]));
      }
    }
    if (ctx->needs_input_grad(0)) grads[0] = torch::cat(dx);
    return grads;
  }
};
}  // namespace

torch::Tensor InvariantGroupedLinear(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                                     const std::vector<int64_t>& offsets) {
  TORCH_CHECK(offsets.size() == weights.size() + 1 && !weights.empty() && offsets[0] == 0 &&
                  offsets.back() == x.size(0),
              "grouped linear: ", weights.size(), " groups, offsets ending at ",
              offsets.empty() ? -1 : offsets.back(), ", ", x.size(0), " rows");
  if (GroupedOnTensorCores(x, weights)) {
    bool grad = torch::GradMode::is_enabled() && x.requires_grad();
    for (const auto& w : weights) grad = grad || (torch::GradMode::is_enabled() && w.requires_grad());
    if (!grad) return invariant_cuda::GroupedLinear(x, weights, offsets).to(x.scalar_type());
    return GroupedLinearFunction::apply(x, at::TensorList(weights), offsets);
  }
  std::vector<torch::Tensor> outs;
  for (size_t g = 0; g < weights.size(); ++g) {
    outs.push_back(InvariantLinear(x.narrow(0, offsets[g], offsets[g + 1] - offsets[g]), weights[g]));
  }
  return torch::cat(outs);
}

torch::Tensor InvariantRmsNorm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  if (FusedNoGrad(x, weight) && weight.dim() == 1 && weight.size(0) == x.size(-1)) {
    return invariant_cuda::RmsNormNoGrad(x, weight, eps);
  }
  auto xf = x.to(torch::kFloat32).reshape({-1, x.size(-1)});
  auto r = RowRsqrtFunction::apply(xf, eps);
  auto normed = (xf * r).to(x.scalar_type()).view(x.sizes());
  return weight * normed;
}

torch::Tensor InvariantSilu(const torch::Tensor& x) {
  if (FusedNoGrad(x)) return invariant_cuda::UnaryNoGrad(x, /*silu=*/true);
  return UnaryFunction::apply(x, static_cast<int64_t>(Unary::kSilu));
}

torch::Tensor InvariantSigmoid(const torch::Tensor& x) {
  if (FusedNoGrad(x)) return invariant_cuda::UnaryNoGrad(x, /*silu=*/false);
  return UnaryFunction::apply(x, static_cast<int64_t>(Unary::kSigmoid));
}

torch::Tensor InvariantSoftmax(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "softmax: FP32 [N, E] wanted, got ",
              x.scalar_type(), " ", x.sizes());
  return SoftmaxFunction::apply(x);
}

torch::Tensor InvariantTopK(const torch::Tensor& x, int64_t k) {
  TORCH_CHECK(x.dim() == 2 && k >= 1 && k <= x.size(1), "top-k: k ", k, " of ", x.sizes());
  if (x.is_cuda()) return invariant_cuda::TopK(x.detach(), k);
  auto xf = Fp32(x.detach());
  const int64_t N = xf.size(0), E = xf.size(1);
  auto idx = torch::empty({N, k}, torch::kInt64);
  const float* px = xf.data_ptr<float>();
  int64_t* pi = idx.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) {
    std::vector<char> taken(E, 0);
    for (int64_t j = 0; j < k; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        if (!taken[e] && (best < 0 || px[n * E + e] > px[n * E + best])) best = e;
      }
      taken[best] = 1;
      pi[n * k + j] = best;
    }
  }
  return idx;
}

// Computed on the CPU whatever the positions' device (a few values per token), so every
// device gets the same tables; returned on the positions' device (host positions save the
// device-to-host copy).
std::pair<torch::Tensor, torch::Tensor> InvariantRopeTables(const torch::Tensor& positions,
                                                            int64_t rotary_dim, double theta) {
  auto pos = positions.to(torch::kCPU, torch::kInt64).contiguous();
  const int64_t T = pos.numel(), half = rotary_dim / 2;
  auto cos = torch::empty({T, rotary_dim}, torch::kFloat32);
  auto sin = torch::empty({T, rotary_dim}, torch::kFloat32);
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = static_cast<float>(
        1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(rotary_dim)));
  }
  const int64_t* pp = pos.data_ptr<int64_t>();
  float *pc = cos.data_ptr<float>(), *ps = sin.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const float f = static_cast<float>(pp[t]) * inv_freq[i];
      pc[t * rotary_dim + i] = pc[t * rotary_dim + half + i] = std::cos(f);
      ps[t * rotary_dim + i] = ps[t * rotary_dim + half + i] = std::sin(f);
    }
  }
  if (!positions.is_cuda()) return {cos, sin};
  return {cos.pin_memory().to(positions.device(), /*non_blocking=*/true),
          sin.pin_memory().to(positions.device(), /*non_blocking=*/true)};
}

torch::Tensor InvariantLightning(const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& v, const torch::Tensor& slope,
                                 const std::vector<int64_t>& cu_seqlens,
                                 const torch::Tensor& init_states, torch::Tensor* final_states) {
  TORCH_CHECK(q.dim() == 3 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "lightning attention: q, k, v must be [T, H, d] alike, got ", q.sizes(), " ",
              k.sizes(), " ", v.sizes());
  TORCH_CHECK(!cu_seqlens.empty() && cu_seqlens.back() == q.size(0),
              "lightning attention: documents end at ",
              cu_seqlens.empty() ? 0 : cu_seqlens.back(), ", tokens ", q.size(0));
  auto outs = LightningFunction::apply(q, k, v, slope, cu_seqlens,
                                       init_states.defined() ? init_states : torch::empty({0}));
  if (final_states != nullptr) *final_states = outs[1];
  return outs[0];
}

torch::Tensor InvariantLightningStep(const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v, const torch::Tensor& slope,
                                     const torch::Tensor& states, const torch::Tensor& slots) {
  TORCH_CHECK(q.dim() == 3 && k.sizes() == q.sizes() && v.sizes() == q.sizes() &&
                  slots.dim() == 1 && slots.size(0) == q.size(0),
              "lightning step: q, k, v must be [B, H, d] alike with B slots, got ", q.sizes(),
              " ", k.sizes(), " ", v.sizes(), " and ", slots.sizes());
  torch::NoGradGuard no_grad;
  if (q.is_cuda()) return invariant_cuda::LightningStep(q, k, v, slope, states, slots);
  std::vector<int64_t> cu(q.size(0) + 1);
  for (size_t i = 0; i < cu.size(); ++i) cu[i] = static_cast<int64_t>(i);
  torch::Tensor last;
  auto o = InvariantLightning(q, k, v, slope, cu, states.index_select(0, slots), &last);
  states.index_copy_(0, slots, last);
  return o;
}

torch::Tensor InvariantAttention(const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& v, const std::vector<int64_t>& cu_seqlens,
                                 double scale) {
  TORCH_CHECK(!cu_seqlens.empty() && cu_seqlens.back() == q.size(0) && k.size(0) == q.size(0),
              "softmax attention: documents end at ",
              cu_seqlens.empty() ? 0 : cu_seqlens.back(), ", queries ", q.size(0), ", keys ",
              k.size(0));
  return AttentionFunction::apply(q, k, v, cu_seqlens, scale);
}

torch::Tensor InvariantPagedAttention(const torch::Tensor& q, const torch::Tensor& k_pool,
                                      const torch::Tensor& v_pool,
                                      const std::vector<std::vector<int64_t>>& key_rows,
                                      double scale) {
  TORCH_CHECK(static_cast<int64_t>(key_rows.size()) == q.size(0), "paged attention: ",
              key_rows.size(), " key lists for ", q.size(0), " queries");
  // Only the rows read are widened: gathered back to back, each query's a slice.
  std::vector<int64_t> flat, start, count;
  int64_t max_rows = 0;
  for (const auto& r : key_rows) {
    start.push_back(static_cast<int64_t>(flat.size()));
    count.push_back(static_cast<int64_t>(r.size()));
    flat.insert(flat.end(), r.begin(), r.end());
    max_rows = std::max<int64_t>(max_rows, static_cast<int64_t>(r.size()));
  }
  for (int64_t row : flat) {
    TORCH_CHECK(row >= 0 && row < k_pool.size(0), "paged attention: key row ", row,
                " outside the pool of ", k_pool.size(0));
  }
  auto index = HostToDevice(flat, k_pool.device());
  auto k = Fp32(k_pool.index_select(0, index)), v = Fp32(v_pool.index_select(0, index));
  if (q.is_cuda()) {
    return invariant_cuda::Attention(Fp32(q), k, v, start, count, nullptr, scale)
        .to(q.scalar_type());
  }
  std::vector<int64_t> local(flat.size());
  for (size_t i = 0; i < local.size(); ++i) local[i] = static_cast<int64_t>(i);
  auto o = AttendAll(Fp32(q), k, v, static_cast<float>(scale), max_rows, [&](int64_t i) {
    return std::pair<const int64_t*, int64_t>(local.data() + start[i], count[i]);
  });
  return o.to(q.scalar_type());
}

torch::Tensor InvariantPagedAttention(const torch::Tensor& q, const torch::Tensor& k_pool,
                                      const torch::Tensor& v_pool, const torch::Tensor& page_table,
                                      const torch::Tensor& page_row, const torch::Tensor& count,
                                      int64_t page_size, double scale) {
  TORCH_CHECK(page_table.dim() == 2 && page_row.numel() == q.size(0) &&
                  count.numel() == q.size(0) && page_size > 0,
              "paged attention: page table ", page_table.sizes(), ", ", page_row.numel(),
              " page rows and ", count.numel(), " counts for ", q.size(0), " queries");
  if (q.is_cuda()) {
    return invariant_cuda::PagedAttention(q, k_pool, v_pool, page_table, page_row, count,
                                          page_size, scale)
        .to(q.scalar_type());
  }
  auto table = page_table.to(torch::kInt64).contiguous();
  auto rows = page_row.to(torch::kInt64).contiguous(), n = count.to(torch::kInt64).contiguous();
  const auto pages = table.accessor<int64_t, 2>();
  std::vector<std::vector<int64_t>> key_rows(q.size(0));
  for (int64_t i = 0; i < q.size(0); ++i) {
    const int64_t r = rows.data_ptr<int64_t>()[i], len = n.data_ptr<int64_t>()[i];
    TORCH_CHECK(r >= 0 && r < table.size(0) && len >= 0 && len <= table.size(1) * page_size,
                "paged attention: query ", i, " reads ", len, " keys through page row ", r,
                " of ", table.sizes());
    for (int64_t j = 0; j < len; ++j) {
      key_rows[i].push_back(pages[r][j / page_size] * page_size + j % page_size);
    }
  }
  return InvariantPagedAttention(q, k_pool, v_pool, key_rows, scale);
}

torch::Tensor InvariantTokenLogprobs(const torch::Tensor& logits, const torch::Tensor& targets,
                                     const std::vector<double>& temperature) {

  TORCH_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
              "token logprobs: logits ", logits.sizes(), " and targets ", targets.sizes());
  TORCH_CHECK(temperature.size() == 1 || static_cast<int64_t>(temperature.size()) == logits.size(0),
              "token logprobs: ", temperature.size(), " temperatures for ", logits.size(0), " rows");
  for (double t : temperature) {
    TORCH_CHECK(t > 0 && std::isfinite(t), "token logprobs: temperature must be finite and > 0, got ", t);
  }
  // (On CUDA the kernel checks them instead, without waiting on the device: an
  // out-of-range target's logprob is NaN.)
  if (targets.numel() > 0 && !logits.is_cuda()) {
    const int64_t lo = targets.min().item<int64_t>(), hi = targets.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < logits.size(1), "token logprobs: targets in [", lo, ", ", hi,
                "] outside the vocabulary of ", logits.size(1));
  }
  return TokenLogprobsFunction::apply(logits, targets, temperature);
}

}  // namespace lightrl
