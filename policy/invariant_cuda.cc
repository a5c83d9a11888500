#include "policy/invariant_cuda.h"

#include <algorithm>

#ifdef LIGHTRL_POLICY_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/invariant/invariant_kernels.h"
#include "policy/cuda_views.h"
#include "policy/invariant_ops.h"
#endif

namespace lightrl::invariant_cuda {

#ifdef LIGHTRL_POLICY_CUDA
namespace {

cudaStream_t Stream() { return at::cuda::getCurrentCUDAStream().stream(); }

torch::Tensor Fp32(const torch::Tensor& t) { return t.to(torch::kFloat32).contiguous(); }

template <typename T>
const T* Ptr(const torch::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}

// Host int64 values as a device tensor on `like`'s device.
template <typename T>
torch::Tensor OnDevice(const std::vector<T>& v, const torch::Tensor& like) {
  return HostToDevice(v, like.device());
}

}  // namespace

torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& w) {
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), K = x.size(1), M = w.size(0);
  auto out = torch::empty({N, M}, x.options().dtype(torch::kFloat32));
  if (x.scalar_type() == torch::kBFloat16 && w.scalar_type() == torch::kBFloat16) {
    auto xc = x.contiguous(), wc = w.contiguous();
    CheckCudaLaunch(LaunchInvariantLinearTc(Ptr<__nv_bfloat16>(xc), Ptr<__nv_bfloat16>(wc),
                                            out.data_ptr<float>(), N, K, M, Stream()),
                    "invariant linear", nullptr);
    return out;
  }
  auto xf = Fp32(x), wf = Fp32(w);
  CheckCudaLaunch(LaunchInvariantLinear(xf.data_ptr<float>(), wf.data_ptr<float>(),
                                        out.data_ptr<float>(), N, K, M, Stream()),
                  "invariant linear", nullptr);
  return out;
}

torch::Tensor GroupedLinear(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                            const std::vector<int64_t>& offsets) {
  c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && offsets.size() == weights.size() + 1 &&
                  !weights.empty() && offsets.back() == x.size(0),
              "invariant grouped linear: bf16 rows in ", weights.size(), " groups wanted");
  auto xc = x.contiguous();
  const int64_t K = x.size(1), M = weights[0].size(0);
  bool vec = K % 8 == 0 && reinterpret_cast<uintptr_t>(xc.data_ptr()) % 16 == 0;
  std::vector<int64_t> pointers, tiles;
  for (size_t g = 0; g < weights.size(); ++g) {
    const auto& w = weights[g];
    TORCH_CHECK(w.is_cuda() && w.scalar_type() == torch::kBFloat16 && w.is_contiguous() &&
                    w.size(0) == M && w.size(1) == K,
                "invariant grouped linear: group ", g, " weight ", w.sizes(), " ", w.scalar_type());
    vec = vec && reinterpret_cast<uintptr_t>(w.data_ptr()) % 16 == 0;
    pointers.push_back(static_cast<int64_t>(reinterpret_cast<uintptr_t>(w.data_ptr())));
    for (int64_t r = offsets[g]; r < offsets[g + 1]; r += 64) {
      tiles.insert(tiles.end(), {static_cast<int64_t>(g), r, std::min(r + 64, offsets[g + 1])});
    }
  }
  auto out = torch::empty({x.size(0), M}, x.options().dtype(torch::kFloat32));
  auto w_dev = OnDevice(pointers, x), tiles_dev = OnDevice(tiles, x);
  CheckCudaLaunch(LaunchInvariantGroupedLinearTc(
                      Ptr<__nv_bfloat16>(xc),
                      reinterpret_cast<const __nv_bfloat16* const*>(w_dev.data_ptr()),
                      tiles_dev.data_ptr<int64_t>(), static_cast<int64_t>(tiles.size() / 3),
                      out.data_ptr<float>(), K, M, vec, Stream()),
                  "invariant grouped linear", nullptr);
  return out;
}

torch::Tensor ExpertLinear(const torch::Tensor& x, const torch::Tensor& weights,
                           const torch::Tensor& offsets, int64_t M, bool vec) {
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t E = weights.numel();
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && x.dim() == 2 && E > 0 &&
                  weights.scalar_type() == torch::kInt64 && offsets.numel() == E + 1 &&
                  offsets.scalar_type() == torch::kInt64,
              "invariant expert linear: bf16 rows, ", E, " weight addresses and E + 1 offsets "
              "wanted, got ", x.scalar_type(), " ", x.sizes(), " and ", offsets.sizes());
  auto xc = x.contiguous();
  vec = vec && x.size(1) % 8 == 0 && reinterpret_cast<uintptr_t>(xc.data_ptr()) % 16 == 0;
  auto out = torch::empty({x.size(0), M}, x.options().dtype(torch::kFloat32));
  CheckCudaLaunch(LaunchInvariantExpertLinearTc(
                      Ptr<__nv_bfloat16>(xc),
                      reinterpret_cast<const __nv_bfloat16* const*>(weights.data_ptr()),
                      offsets.data_ptr<int64_t>(), E, out.data_ptr<float>(), x.size(0),
                      x.size(1), M, vec, Stream()),
                  "invariant expert linear", nullptr);
  return out;
}

MoeDispatch Dispatch(const torch::Tensor& expert, int64_t E, int64_t capacity) {
  c10::cuda::CUDAGuard guard(expert.device());
  auto ids = expert.to(torch::kInt64).contiguous().view({-1});
  const int64_t A = ids.numel();
  auto i64 = ids.options();
  auto counts = torch::empty({E}, i64);
  MoeDispatch d{torch::empty({A}, i64), torch::empty({A}, i64), torch::empty({E + 1}, i64),
                torch::empty({A}, i64.dtype(torch::kFloat32))};
  CheckCudaLaunch(LaunchInvariantMoeDispatch(ids.data_ptr<int64_t>(), A, E, capacity,
                                             counts.data_ptr<int64_t>(),
                                             d.offsets.data_ptr<int64_t>(),
                                             d.order.data_ptr<int64_t>(),
                                             d.position.data_ptr<int64_t>(),
                                             d.kept.data_ptr<float>(), Stream()),
                  "invariant MoE dispatch", nullptr);
  return d;
}

torch::Tensor RowRsqrt(const torch::Tensor& x, double eps) {
  c10::cuda::CUDAGuard guard(x.device());
  auto xf = Fp32(x);
  auto r = torch::empty({xf.size(0), 1}, xf.options());
  CheckCudaLaunch(LaunchInvariantRowRsqrt(xf.data_ptr<float>(), r.data_ptr<float>(), xf.size(0),
                                          xf.size(1), static_cast<float>(eps), Stream()),
                  "invariant RMSNorm", nullptr);
  return r;
}

torch::Tensor Unary(const torch::Tensor& x, bool silu) {
  c10::cuda::CUDAGuard guard(x.device());
  auto xf = Fp32(x);
  auto out = torch::empty_like(xf);
  CheckCudaLaunch(LaunchInvariantUnary(xf.data_ptr<float>(), out.data_ptr<float>(), xf.numel(),
                                       silu, Stream()),
                  silu ? "invariant silu" : "invariant sigmoid", nullptr);
  return out;
}

torch::Tensor RmsNormNoGrad(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous(), wc = weight.to(x.device()).contiguous();
  const int64_t D = x.size(-1), N = x.numel() / std::max<int64_t>(D, 1);
  auto y = torch::empty_like(xc);
  cudaError_t err;
  if (x.scalar_type() == torch::kBFloat16) {
    err = LaunchInvariantRmsNorm(Ptr<__nv_bfloat16>(xc), Ptr<__nv_bfloat16>(wc),
                                 reinterpret_cast<__nv_bfloat16*>(y.data_ptr()), N, D,
                                 static_cast<float>(eps), Stream());
  } else {
    err = LaunchInvariantRmsNorm(xc.data_ptr<float>(), wc.data_ptr<float>(), y.data_ptr<float>(),
                                 N, D, static_cast<float>(eps), Stream());
  }
  CheckCudaLaunch(err, "invariant RMSNorm", nullptr);
  return y;
}

torch::Tensor UnaryNoGrad(const torch::Tensor& x, bool silu) {
  c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto out = torch::empty_like(xc);
  cudaError_t err;
  if (x.scalar_type() == torch::kBFloat16) {
    err = LaunchInvariantUnary(Ptr<__nv_bfloat16>(xc),
                               reinterpret_cast<__nv_bfloat16*>(out.data_ptr()), xc.numel(), silu,
                               Stream());
  } else {
    err = LaunchInvariantUnary(xc.data_ptr<float>(), out.data_ptr<float>(), xc.numel(), silu,
                               Stream());
  }
  CheckCudaLaunch(err, silu ? "invariant silu" : "invariant sigmoid", nullptr);
  return out;
}

torch::Tensor Softmax(const torch::Tensor& x) {
  c10::cuda::CUDAGuard guard(x.device());
  auto xf = Fp32(x);
  auto p = torch::empty_like(xf);
  CheckCudaLaunch(LaunchInvariantSoftmax(xf.data_ptr<float>(), p.data_ptr<float>(), xf.size(0),
                                         xf.size(1), Stream()),
                  "invariant softmax", nullptr);
  return p;
}

torch::Tensor TopK(const torch::Tensor& x, int64_t k) {
  c10::cuda::CUDAGuard guard(x.device());
  auto xf = Fp32(x);
  TORCH_CHECK(xf.size(1) <= kInvariantTopKMaxEntries, "invariant top-k: ", xf.size(1),
              " entries a row, at most ", kInvariantTopKMaxEntries, " on CUDA");
  auto idx = torch::empty({xf.size(0), k}, xf.options().dtype(torch::kInt64));
  CheckCudaLaunch(LaunchInvariantTopK(xf.data_ptr<float>(), idx.data_ptr<int64_t>(), xf.size(0),
                                      xf.size(1), k, Stream()),
                  "invariant top-k", nullptr);
  return idx;
}

namespace {

struct LightningInputs {
  torch::Tensor q, k, v, slope, cu, init;
  InvariantLightningArgs args;
};

LightningInputs PrepareLightning(const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& v, const torch::Tensor& slope,
                                 const std::vector<int64_t>& cu, const torch::Tensor& init) {
  TORCH_CHECK(q.size(2) <= kInvariantLightningMaxDim, "invariant lightning: head_dim ",
              q.size(2), " exceeds the CUDA kernel's ", kInvariantLightningMaxDim);
  TORCH_CHECK(slope.numel() == q.size(1), "invariant lightning: ", slope.numel(),
              " slopes for ", q.size(1), " heads");
  LightningInputs in{Fp32(q), Fp32(k), Fp32(v), Fp32(slope.to(q.device())), OnDevice(cu, q),
                     init.defined() && init.numel() > 0 ? Fp32(init) : torch::Tensor(), {}};
  InvariantLightningArgs& a = in.args;
  a.q = in.q.data_ptr<float>();
  a.k = in.k.data_ptr<float>();
  a.v = in.v.data_ptr<float>();
  a.slope = in.slope.data_ptr<float>();
  a.cu = in.cu.data_ptr<int64_t>();
  a.init = in.init.defined() ? in.init.data_ptr<float>() : nullptr;
  a.num_docs = static_cast<int64_t>(cu.size()) - 1;
  a.H = q.size(1);
  a.d = q.size(2);
  return in;
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> Lightning(const torch::Tensor& q, const torch::Tensor& k,
                                                  const torch::Tensor& v, const torch::Tensor& slope,
                                                  const std::vector<int64_t>& cu,
                                                  const torch::Tensor& init) {
  c10::cuda::CUDAGuard guard(q.device());
  auto in = PrepareLightning(q, k, v, slope, cu, init);
  auto o = torch::empty_like(in.q);
  auto last = torch::empty({in.args.num_docs, in.args.H, in.args.d, in.args.d}, in.q.options());
  CheckCudaLaunch(LaunchInvariantLightning(in.args, o.data_ptr<float>(), last.data_ptr<float>(),
                                           Stream()),
                  "invariant lightning", nullptr);
  return {o, last};
}

std::vector<torch::Tensor> LightningBackward(const torch::Tensor& q, const torch::Tensor& k,
                                             const torch::Tensor& v, const torch::Tensor& g,
                                             const torch::Tensor& slope,
                                             const std::vector<int64_t>& cu,
                                             const torch::Tensor& init) {
  c10::cuda::CUDAGuard guard(q.device());
  auto in = PrepareLightning(q, k, v, slope, cu, init);
  auto gf = Fp32(g);
  auto dq = torch::empty_like(in.q), dk = torch::empty_like(in.q), dv = torch::empty_like(in.q);
  CheckCudaLaunch(LaunchInvariantLightningBackward(in.args, gf.data_ptr<float>(),
                                                   dq.data_ptr<float>(), dk.data_ptr<float>(),
                                                   dv.data_ptr<float>(), Stream()),
                  "invariant lightning backward", nullptr);
  return {dq, dk, dv};
}

torch::Tensor LightningStep(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& slope, const torch::Tensor& states,
                            const torch::Tensor& slots) {
  c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), H = q.size(1), d = q.size(2);
  TORCH_CHECK(q.size(2) <= kInvariantLightningMaxDim, "invariant lightning: head_dim ", d,
              " exceeds the CUDA kernel's ", kInvariantLightningMaxDim);
  TORCH_CHECK(states.scalar_type() == torch::kFloat32 && states.is_contiguous() &&
                  states.dim() == 4 && states.size(1) == H && states.size(2) == d &&
                  states.size(3) == d && slots.numel() == B &&
                  slots.scalar_type() == torch::kInt64 && slope.numel() == H,
              "invariant lightning step: states ", states.sizes(), " for q ", q.sizes(), ", ",
              slots.numel(), " slots, ", slope.numel(), " slopes");
  auto qf = Fp32(q), kf = Fp32(k), vf = Fp32(v), sf = Fp32(slope.to(q.device()));
  auto sl = slots.contiguous();
  auto cu = torch::arange(B + 1, sl.options());
  InvariantLightningArgs a;
  a.q = qf.data_ptr<float>();
  a.k = kf.data_ptr<float>();
  a.v = vf.data_ptr<float>();
  a.slope = sf.data_ptr<float>();
  a.cu = cu.data_ptr<int64_t>();
  a.init = states.data_ptr<float>();
  a.state_index = sl.data_ptr<int64_t>();
  a.num_docs = B;
  a.H = H;
  a.d = d;
  auto o = torch::empty_like(qf);
  CheckCudaLaunch(LaunchInvariantLightning(a, o.data_ptr<float>(), states.data_ptr<float>(),
                                           Stream()),
                  "invariant lightning step", nullptr);
  return o;
}

namespace {
// Launches the attention kernel of `a` (its keys set) for the FP32 queries qf [Q, H, d].
torch::Tensor LaunchAttention(InvariantAttentionArgs& a, const torch::Tensor& qf, int64_t kv_heads,
                              double scale, const char* what) {
  a.q = qf.data_ptr<float>();
  a.Q = qf.size(0);
  a.H = qf.size(1);
  a.KVH = kv_heads;
  a.d = qf.size(2);
  a.scale = static_cast<float>(scale);
  auto o = torch::empty_like(qf);
  CheckCudaLaunch(LaunchInvariantAttention(a, o.data_ptr<float>(), Stream()), what, nullptr);
  return o;
}
}  // namespace

torch::Tensor PagedAttention(const torch::Tensor& q, const torch::Tensor& k_pool,
                             const torch::Tensor& v_pool, const torch::Tensor& page_table,
                             const torch::Tensor& page_row, const torch::Tensor& count,
                             int64_t page_size, double scale) {
  c10::cuda::CUDAGuard guard(q.device());
  const bool bf16 = k_pool.scalar_type() == torch::kBFloat16;
  TORCH_CHECK(k_pool.is_contiguous() && v_pool.is_contiguous() &&
                  v_pool.scalar_type() == k_pool.scalar_type() &&
                  (bf16 || k_pool.scalar_type() == torch::kFloat32) &&
                  page_table.scalar_type() == torch::kInt32 && page_table.dim() == 2 &&
                  page_table.is_contiguous() && page_row.scalar_type() == torch::kInt64 &&
                  count.scalar_type() == torch::kInt64 && page_row.numel() == q.size(0) &&
                  count.numel() == q.size(0) && page_size > 0,
              "invariant paged attention: pools ", k_pool.scalar_type(), " ", k_pool.sizes(),
              ", page table ", page_table.scalar_type(), " ", page_table.sizes());
  auto qf = Fp32(q);
  auto rows = page_row.contiguous(), counts = count.contiguous();
  InvariantAttentionArgs a;
  if (bf16) {
    a.k16 = Ptr<__nv_bfloat16>(k_pool);
    a.v16 = Ptr<__nv_bfloat16>(v_pool);
  } else {
    a.k = k_pool.data_ptr<float>();
    a.v = v_pool.data_ptr<float>();
  }
  a.count = counts.data_ptr<int64_t>();
  a.page_table = page_table.data_ptr<int32_t>();
  a.page_row = rows.data_ptr<int64_t>();
  a.max_pages = page_table.size(1);
  a.page_size = page_size;
  return LaunchAttention(a, qf, k_pool.size(1), scale, "invariant paged attention");
}

torch::Tensor Attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const std::vector<int64_t>& start, const std::vector<int64_t>& count,
                        const std::vector<int64_t>* index, double scale) {
  c10::cuda::CUDAGuard guard(q.device());
  auto qf = Fp32(q), kf = Fp32(k), vf = Fp32(v);
  auto starts = OnDevice(start, q), counts = OnDevice(count, q);
  torch::Tensor rows = index != nullptr ? OnDevice(*index, q) : torch::Tensor();
  InvariantAttentionArgs a;
  a.k = kf.data_ptr<float>();
  a.v = vf.data_ptr<float>();
  a.start = starts.data_ptr<int64_t>();
  a.count = counts.data_ptr<int64_t>();
  a.index = rows.defined() ? rows.data_ptr<int64_t>() : nullptr;
  return LaunchAttention(a, qf, k.size(1), scale, "invariant attention");
}

torch::Tensor TokenLogprobs(const torch::Tensor& logits, const torch::Tensor& targets,
                            const std::vector<float>& temperature) {
  c10::cuda::CUDAGuard guard(logits.device());
  auto lf = Fp32(logits);
  auto ids = targets.to(logits.device(), torch::kInt64).contiguous();
  auto temps = OnDevice(temperature, logits);
  auto out = torch::empty({lf.size(0)}, lf.options());
  CheckCudaLaunch(LaunchInvariantTokenLogprobs(lf.data_ptr<float>(), ids.data_ptr<int64_t>(),
                                               temps.data_ptr<float>(), out.data_ptr<float>(),
                                               lf.size(0), lf.size(1), Stream()),
                  "invariant token logprobs", nullptr);
  return out;
}

#else  // no CUDA kernels in this build

namespace {
[[noreturn]] void NoKernels(const char* op) {
  TORCH_CHECK(false, "numerics.batch_invariant: ", op,
              " on CUDA needs a build with the CUDA kernels (LIGHTRL_TORCH_CUDA=ON)");
}
}  // namespace

torch::Tensor Linear(const torch::Tensor&, const torch::Tensor&) { NoKernels("linear"); }
torch::Tensor RowRsqrt(const torch::Tensor&, double) { NoKernels("RMSNorm"); }
torch::Tensor GroupedLinear(const torch::Tensor&, const std::vector<torch::Tensor>&,
                            const std::vector<int64_t>&) {
  NoKernels("grouped linear");
}
torch::Tensor ExpertLinear(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                           int64_t, bool) {
  NoKernels("expert linear");
}
MoeDispatch Dispatch(const torch::Tensor&, int64_t, int64_t) { NoKernels("MoE dispatch"); }
torch::Tensor LightningStep(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                            const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  NoKernels("lightning attention");
}
torch::Tensor PagedAttention(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                             const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                             int64_t, double) {
  NoKernels("paged attention");
}
torch::Tensor Unary(const torch::Tensor&, bool) { NoKernels("silu / sigmoid"); }
torch::Tensor Softmax(const torch::Tensor&) { NoKernels("softmax"); }
torch::Tensor RmsNormNoGrad(const torch::Tensor&, const torch::Tensor&, double) {
  NoKernels("RMSNorm");
}
torch::Tensor UnaryNoGrad(const torch::Tensor&, bool) { NoKernels("silu / sigmoid"); }
torch::Tensor TopK(const torch::Tensor&, int64_t) { NoKernels("top-k"); }
std::pair<torch::Tensor, torch::Tensor> Lightning(const torch::Tensor&, const torch::Tensor&,
                                                  const torch::Tensor&, const torch::Tensor&,
                                                  const std::vector<int64_t>&,
                                                  const torch::Tensor&) {
  NoKernels("lightning attention");
}
std::vector<torch::Tensor> LightningBackward(const torch::Tensor&, const torch::Tensor&,
                                             const torch::Tensor&, const torch::Tensor&,
                                             const torch::Tensor&, const std::vector<int64_t>&,
                                             const torch::Tensor&) {
  NoKernels("lightning attention backward");
}
torch::Tensor Attention(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                        const std::vector<int64_t>&, const std::vector<int64_t>&,
                        const std::vector<int64_t>*, double) {
  NoKernels("softmax attention");
}
torch::Tensor TokenLogprobs(const torch::Tensor&, const torch::Tensor&, const std::vector<float>&) {
  NoKernels("token logprobs");
}

#endif

}  // namespace lightrl::invariant_cuda
