#include "inference_engine/cuda_ops.h"

#include <algorithm>
#include <utility>

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <cublas_v2.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/lightning/lightning_decode.h"
#include "kernels/lightning/lightning_prefill.h"
#include "kernels/moe/moe_decode_combine.h"
#include "kernels/moe/moe_routing.h"
#include "kernels/paged_attention/paged_attention.h"
#include "kernels/rms_norm/rms_norm.h"
#include "kernels/sampling/sampling.h"
#include "policy/cuda_views.h"

namespace lightrl {
namespace {

void CheckStateAndSlopes(const torch::Tensor& state, const torch::Tensor& slopes,
                         const torch::Tensor& q) {
  const int64_t H = q.size(1), d = q.size(2);
  TORCH_CHECK(state.dim() == 4 && state.size(1) == H && state.size(2) == d && state.size(3) == d,
              "lightning cuda: state pool must be [slots, ", H, ", ", d, ", ", d, "], got ",
              state.sizes());
  TORCH_CHECK(state.scalar_type() == torch::kFloat32 && state.is_contiguous() &&
                  state.device() == q.device(),
              "lightning cuda: state pool must be contiguous FP32 on ", q.device());
  TORCH_CHECK(slopes.dim() == 1 && slopes.size(0) == H && slopes.scalar_type() == torch::kFloat32 &&
                  slopes.is_contiguous() && slopes.device() == q.device(),
              "lightning cuda: slopes must be contiguous FP32 [", H, "] on ", q.device(), ", got ",
              slopes.sizes(), " ", slopes.scalar_type(), " on ", slopes.device());
}

// Slot values are not range-checked here (that would sync): the runner hands out slots
// below the pool's size.
void CheckSlots(const torch::Tensor& slots, int64_t n, const torch::Tensor& q) {
  TORCH_CHECK(slots.dim() == 1 && slots.size(0) == n && slots.scalar_type() == torch::kInt32 &&
                  slots.is_contiguous() && slots.device() == q.device(),
              "lightning cuda: slots must be contiguous int32 [", n, "] on ", q.device(), ", got ",
              slots.sizes(), " ", slots.scalar_type());
}

void CheckInt32Vector(const torch::Tensor& t, const char* name, int64_t n,
                      const torch::Tensor& like) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n && t.scalar_type() == torch::kInt32 &&
                  t.is_contiguous() && t.device() == like.device(),
              "paged attention cuda: ", name, " must be contiguous int32 [", n, "] on ",
              like.device(), ", got ", t.sizes(), " ", t.scalar_type());
}

// The pools and page table of one softmax layer, checked against q or k's head size.
PagedKvCacheView MakeCacheView(const torch::Tensor& k_pool, const torch::Tensor& v_pool,
                               const torch::Tensor& page_table, int64_t page_size,
                               const torch::Tensor& like) {
  TORCH_CHECK(k_pool.dim() == 3 && k_pool.sizes() == v_pool.sizes() &&
                  k_pool.size(2) == like.size(2),
              "paged attention cuda: pools must be [rows, KVH, ", like.size(2), "], got ",
              k_pool.sizes(), " and ", v_pool.sizes());
  for (const auto* t : {&k_pool, &v_pool}) {
    TORCH_CHECK(t->scalar_type() == torch::kBFloat16 && t->is_contiguous() &&
                    t->device() == like.device(),
                "paged attention cuda: pools must be contiguous bfloat16 on ", like.device());
  }
  TORCH_CHECK(page_table.dim() == 2 && page_table.scalar_type() == torch::kInt32 &&
                  page_table.is_contiguous() && page_table.device() == like.device(),
              "paged attention cuda: page_table must be contiguous int32 [rows, pages] on ",
              like.device(), ", got ", page_table.sizes(), " ", page_table.scalar_type());
  PagedKvCacheView view;
  view.k_pool = reinterpret_cast<__nv_bfloat16*>(k_pool.data_ptr());
  view.v_pool = reinterpret_cast<__nv_bfloat16*>(v_pool.data_ptr());
  view.page_table = page_table.data_ptr<int32_t>();
  view.page_table_stride = page_table.size(1);
  view.page_size = static_cast<int>(page_size);
  view.num_kv_heads = static_cast<int>(k_pool.size(1));
  view.head_dim = static_cast<int>(k_pool.size(2));
  return view;
}

void CheckBf16On(const torch::Tensor& t, const char* op, const char* name,
                 const torch::Device& device) {
  TORCH_CHECK(t.scalar_type() == torch::kBFloat16, op, ": ", name, " must be bfloat16, got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == device, op, ": ", name, " must be on ", device, ", got ",
              t.device());
}

}  // namespace

bool CudaLightningSupported(const torch::Device& device, torch::ScalarType dtype,
                            int64_t head_dim) {
  return device.is_cuda() && dtype == torch::kBFloat16 && (head_dim == 64 || head_dim == 128);
}

torch::Tensor LightningPrefillCuda(const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const torch::Tensor& cu_seqlens,
                                   const torch::Tensor& slots, torch::Tensor& state,
                                   const torch::Tensor& slopes, int64_t max_seqlen) {
  CheckLightningView(q, "q", q);
  CheckLightningView(k, "k", q);
  CheckLightningView(v, "v", q);
  CheckStateAndSlopes(state, slopes, q);
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1 &&
                  cu_seqlens.scalar_type() == torch::kInt32 && cu_seqlens.is_contiguous() &&
                  cu_seqlens.device() == q.device(),
              "lightning cuda: cu_seqlens must be contiguous int32 [n + 1] on ", q.device(),
              ", got ", cu_seqlens.sizes(), " ", cu_seqlens.scalar_type());
  const int64_t n = cu_seqlens.size(0) - 1;
  CheckSlots(slots, n, q);
  TORCH_CHECK(max_seqlen >= 0 && max_seqlen <= q.size(0), "lightning cuda: max_seqlen ",
              max_seqlen, " outside [0, ", q.size(0), "]");
  c10::cuda::CUDAGuard guard(q.device());
  auto o = torch::empty(q.sizes(), q.options().memory_format(torch::MemoryFormat::Contiguous));
  LightningPrefillParams p;
  p.q = MakeLightningView<LightningInputView>(q);
  p.k = MakeLightningView<LightningInputView>(k);
  p.v = MakeLightningView<LightningInputView>(v);
  p.o = MakeLightningView<LightningOutputView>(o);
  p.cu_seqlens = cu_seqlens.data_ptr<int32_t>();
  p.state_slots = slots.data_ptr<int32_t>();
  p.state = state.data_ptr<float>();
  p.slopes = slopes.data_ptr<float>();
  p.num_seqs = static_cast<int>(n);
  p.num_heads = static_cast<int>(q.size(1));
  p.head_dim = static_cast<int>(q.size(2));
  p.max_seqlen = static_cast<int>(max_seqlen);
  p.num_tokens = q.size(0);
  p.use_initial_state = false;
  p.store_final_state = true;
  CheckCudaLaunch(LaunchLightningPrefill(p, at::cuda::getCurrentCUDAStream().stream()), "prefill",
              p.Validate());
  return o;
}

torch::Tensor LightningDecodeCuda(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, const torch::Tensor& slots,
                                  torch::Tensor& state, const torch::Tensor& slopes) {
  CheckLightningView(q, "q", q);
  CheckLightningView(k, "k", q);
  CheckLightningView(v, "v", q);
  CheckStateAndSlopes(state, slopes, q);
  CheckSlots(slots, q.size(0), q);
  c10::cuda::CUDAGuard guard(q.device());
  auto o = torch::empty(q.sizes(), q.options().memory_format(torch::MemoryFormat::Contiguous));
  LightningDecodeParams p;
  p.q = MakeLightningView<LightningInputView>(q);
  p.k = MakeLightningView<LightningInputView>(k);
  p.v = MakeLightningView<LightningInputView>(v);
  p.o = MakeLightningView<LightningOutputView>(o);
  p.state_slots = slots.data_ptr<int32_t>();
  p.state = state.data_ptr<float>();
  p.slopes = slopes.data_ptr<float>();
  p.batch = static_cast<int>(q.size(0));
  p.num_heads = static_cast<int>(q.size(1));
  p.head_dim = static_cast<int>(q.size(2));
  CheckCudaLaunch(LaunchLightningDecode(p, at::cuda::getCurrentCUDAStream().stream()), "decode",
              p.Validate());
  return o;
}

void PagedKvAppendCuda(const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& seq_rows, const torch::Tensor& positions,
                       const torch::Tensor& page_table, int64_t page_size, torch::Tensor& k_pool,
                       torch::Tensor& v_pool) {
  CheckLightningView(k, "k", k);
  CheckLightningView(v, "v", k);
  const int64_t B = k.size(0);
  CheckInt32Vector(seq_rows, "seq_rows", B, k);
  CheckInt32Vector(positions, "positions", B, k);
  c10::cuda::CUDAGuard guard(k.device());
  PagedKvAppendParams p;
  p.cache = MakeCacheView(k_pool, v_pool, page_table, page_size, k);
  TORCH_CHECK(p.cache.num_kv_heads == k.size(1), "paged attention cuda: k has ", k.size(1),
              " heads, the pools ", p.cache.num_kv_heads);
  p.k = MakeLightningView<LightningInputView>(k);
  p.v = MakeLightningView<LightningInputView>(v);
  p.seq_rows = seq_rows.data_ptr<int32_t>();
  p.positions = positions.data_ptr<int32_t>();
  p.batch = static_cast<int>(B);
  CheckCudaLaunch(LaunchPagedKvAppend(p, at::cuda::getCurrentCUDAStream().stream()), "kv append",
              p.Validate());
}

torch::Tensor PagedDecodeAttentionCuda(const torch::Tensor& q, const torch::Tensor& k_pool,
                                       const torch::Tensor& v_pool, const torch::Tensor& seq_rows,
                                       const torch::Tensor& positions,
                                       const torch::Tensor& page_table, int64_t page_size,
                                       double scale, int64_t partition_tokens,
                                       int64_t num_partitions) {
  CheckLightningView(q, "q", q);
  const int64_t B = q.size(0);
  CheckInt32Vector(seq_rows, "seq_rows", B, q);
  CheckInt32Vector(positions, "positions", B, q);
  c10::cuda::CUDAGuard guard(q.device());
  auto o = torch::empty(q.sizes(), q.options().memory_format(torch::MemoryFormat::Contiguous));
  PagedDecodeAttentionParams p;
  p.cache = MakeCacheView(k_pool, v_pool, page_table, page_size, q);
  p.q = MakeLightningView<LightningInputView>(q);
  p.o = MakeLightningView<LightningOutputView>(o);
  p.seq_rows = seq_rows.data_ptr<int32_t>();
  p.positions = positions.data_ptr<int32_t>();
  p.batch = static_cast<int>(B);
  p.num_heads = static_cast<int>(q.size(1));
  p.scale = static_cast<float>(scale);
  p.partition_tokens = static_cast<int>(partition_tokens);
  p.num_partitions = static_cast<int>(num_partitions);
  auto workspace = torch::empty(
      {PagedDecodeWorkspaceFloats(p.batch, p.num_heads, p.cache.head_dim, p.num_partitions)},
      q.options().dtype(torch::kFloat32));
  p.workspace = workspace.data_ptr<float>();
  CheckCudaLaunch(LaunchPagedDecodeAttention(p, at::cuda::getCurrentCUDAStream().stream()),
              "paged decode attention", p.Validate());
  return o;
}

namespace {

// RmsNormCuda and GatedRmsNormCuda: `gate` null or a checked [T, D] tensor.
torch::Tensor RmsNormWithGate(const torch::Tensor& x, const torch::Tensor& weight,
                              const torch::Tensor* gate, double eps) {
  TORCH_CHECK(x.is_cuda(), "rms norm cuda: x must be on a CUDA device, got ", x.device());
  CheckBf16On(x, "rms norm cuda", "x", x.device());
  CheckBf16On(weight, "rms norm cuda", "weight", x.device());
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.stride(0) >= x.size(1),
              "rms norm cuda: x must be [T, D] rows with unit stride on D, got ", x.sizes(),
              " strides ", x.strides());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1) && weight.is_contiguous(),
              "rms norm cuda: weight must be contiguous [", x.size(1), "], got ", weight.sizes());
  TORCH_CHECK(x.size(0) <= 0x7fffffff && x.size(1) <= kRmsNormMaxDim, "rms norm cuda: x ",
              x.sizes(), " is larger than the kernel serves (D <= ", kRmsNormMaxDim, ")");
  c10::cuda::CUDAGuard guard(x.device());
  auto y = torch::empty(x.sizes(), x.options().memory_format(torch::MemoryFormat::Contiguous));
  RmsNormParams p;
  p.x = reinterpret_cast<const __nv_bfloat16*>(x.data_ptr());
  p.weight = reinterpret_cast<const __nv_bfloat16*>(weight.data_ptr());
  p.y = reinterpret_cast<__nv_bfloat16*>(y.data_ptr());
  p.x_row_stride = x.stride(0);
  p.y_row_stride = y.size(1);
  p.rows = static_cast<int>(x.size(0));
  p.dim = static_cast<int>(x.size(1));
  p.eps = static_cast<float>(eps);
  if (gate != nullptr) {
    p.gate = reinterpret_cast<const __nv_bfloat16*>(gate->data_ptr());
    p.gate_row_stride = gate->stride(0);
  }
  CheckCudaLaunch(LaunchRmsNorm(p, at::cuda::getCurrentCUDAStream().stream()), "rms norm",
              p.Validate());
  return y;
}

}  // namespace

torch::Tensor RmsNormCuda(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  return RmsNormWithGate(x, weight, nullptr, eps);
}

namespace {

// The routing kernel's inputs, checked; the caller names the outputs it wants.
MoeRoutingParams RoutingParams(const torch::Tensor& logits, int64_t top_k) {
  TORCH_CHECK(logits.is_cuda() && logits.scalar_type() == torch::kFloat32 && logits.dim() == 2 &&
                  logits.stride(1) == 1,
              "moe routing cuda: logits must be [T, E] FP32 CUDA rows with unit stride, got ",
              logits.sizes(), " ", logits.scalar_type(), " on ", logits.device());
  const int64_t T = logits.size(0), E = logits.size(1);
  TORCH_CHECK(T <= 0x7fffffff, "moe routing cuda: too many tokens: ", T);
  TORCH_CHECK(E >= 1 && E <= kMoeRoutingMaxExperts, "moe routing cuda: experts must be in 1 .. ",
              kMoeRoutingMaxExperts, ", got ", E);
  TORCH_CHECK(top_k >= 1 && top_k <= std::min<int64_t>(E, kMoeRoutingMaxTopK),
              "moe routing cuda: top_k must be in 1 .. min(experts, ", kMoeRoutingMaxTopK,
              "), got ", top_k, " of ", E, " experts");
  MoeRoutingParams p;
  p.logits = logits.data_ptr<float>();
  p.logits_row_stride = logits.stride(0);
  p.tokens = static_cast<int>(T);
  p.experts = static_cast<int>(E);
  p.top_k = static_cast<int>(top_k);
  return p;
}

}  // namespace

bool MoeRoutingSupported(int64_t experts, int64_t top_k) {
  return experts >= 1 && experts <= kMoeRoutingMaxExperts && top_k >= 1 &&
         top_k <= std::min<int64_t>(experts, kMoeRoutingMaxTopK);
}

torch::Tensor MoeCombineWeightsCuda(const torch::Tensor& logits, int64_t top_k) {
  MoeRoutingParams p = RoutingParams(logits, top_k);
  c10::cuda::CUDAGuard guard(logits.device());
  auto combine = torch::empty(logits.sizes(), logits.options().memory_format(torch::MemoryFormat::Contiguous));
  p.combine = combine.data_ptr<float>();
  CheckCudaLaunch(LaunchMoeRouting(p, at::cuda::getCurrentCUDAStream().stream()), "moe routing",
                  p.Validate());
  return combine;
}

std::pair<torch::Tensor, torch::Tensor> MoeRouteCuda(const torch::Tensor& logits, int64_t top_k) {
  MoeRoutingParams p = RoutingParams(logits, top_k);
  c10::cuda::CUDAGuard guard(logits.device());
  auto weights = torch::empty({logits.size(0), top_k}, logits.options());
  auto ids = torch::empty({logits.size(0), top_k}, logits.options().dtype(torch::kInt64));
  p.weights = weights.data_ptr<float>();
  p.ids = ids.data_ptr<int64_t>();
  CheckCudaLaunch(LaunchMoeRouting(p, at::cuda::getCurrentCUDAStream().stream()), "moe routing",
                  p.Validate());
  return {weights, ids};
}

torch::Tensor GatedRmsNormCuda(const torch::Tensor& x, const torch::Tensor& weight,
                               const torch::Tensor& gate, double eps) {
  CheckBf16On(gate, "gated rms norm cuda", "gate", x.device());
  TORCH_CHECK(gate.dim() == 2 && gate.sizes() == x.sizes() && gate.stride(1) == 1,
              "gated rms norm cuda: gate must be ", x.sizes(), " with unit stride on D, got ",
              gate.sizes(), " strides ", gate.strides());
  return RmsNormWithGate(x, weight, &gate, eps);
}

torch::Tensor MoeDecodeCombineCuda(const torch::Tensor& y, const torch::Tensor& combine,
                             const torch::Tensor& residual, double alpha, double beta) {
  TORCH_CHECK(y.is_cuda(), "moe decode combine cuda: y must be on a CUDA device, got ", y.device());
  CheckBf16On(y, "moe decode combine cuda", "y", y.device());
  CheckBf16On(residual, "moe decode combine cuda", "residual", y.device());
  TORCH_CHECK(y.dim() == 3 && y.is_contiguous() && residual.dim() == 2 &&
                  residual.is_contiguous() && residual.size(0) == y.size(1) &&
                  residual.size(1) == y.size(2),
              "moe decode combine cuda: y must be contiguous [E, T, D] and residual [T, D], got ",
              y.sizes(), " and ", residual.sizes());
  TORCH_CHECK(combine.device() == y.device() && combine.scalar_type() == torch::kFloat32 &&
                  combine.is_contiguous() && combine.dim() == 2 &&
                  combine.size(0) == y.size(1) && combine.size(1) == y.size(0),
              "moe decode combine cuda: combine must be contiguous FP32 [T, E] = [", y.size(1), ", ",
              y.size(0), "] on ", y.device(), ", got ", combine.sizes(), " ",
              combine.scalar_type(), " on ", combine.device());
  TORCH_CHECK(y.size(0) <= 0x7fffffff && y.size(1) <= 0x7fffffff && y.size(2) <= 0x7fffffff,
              "moe decode combine cuda: y ", y.sizes(), " is larger than the kernel serves");
  c10::cuda::CUDAGuard guard(y.device());
  auto out = torch::empty_like(residual);
  MoeDecodeCombineParams p;
  p.y = reinterpret_cast<const __nv_bfloat16*>(y.data_ptr());
  p.combine = combine.data_ptr<float>();
  p.residual = reinterpret_cast<const __nv_bfloat16*>(residual.data_ptr());
  p.out = reinterpret_cast<__nv_bfloat16*>(out.data_ptr());
  p.experts = static_cast<int>(y.size(0));
  p.tokens = static_cast<int>(y.size(1));
  p.hidden = static_cast<int>(y.size(2));
  p.alpha = static_cast<float>(alpha);
  p.beta = static_cast<float>(beta);
  CheckCudaLaunch(LaunchMoeDecodeCombine(p, at::cuda::getCurrentCUDAStream().stream()),
                  "moe decode combine", p.Validate());
  return out;
}

torch::Tensor ScaledAddCuda(const torch::Tensor& a, const torch::Tensor& b, double alpha,
                            double beta) {
  TORCH_CHECK(a.is_cuda(), "scaled add cuda: a must be on a CUDA device, got ", a.device());
  CheckBf16On(a, "scaled add cuda", "a", a.device());
  CheckBf16On(b, "scaled add cuda", "b", a.device());
  TORCH_CHECK(a.sizes() == b.sizes() && a.is_contiguous() && b.is_contiguous(),
              "scaled add cuda: a ", a.sizes(), " and b ", b.sizes(),
              " must be contiguous and of one shape");
  c10::cuda::CUDAGuard guard(a.device());
  auto out = torch::empty_like(a, torch::MemoryFormat::Contiguous);
  ScaledAddParams p;
  p.a = reinterpret_cast<const __nv_bfloat16*>(a.data_ptr());
  p.b = reinterpret_cast<const __nv_bfloat16*>(b.data_ptr());
  p.out = reinterpret_cast<__nv_bfloat16*>(out.data_ptr());
  p.n = a.numel();
  p.alpha = static_cast<float>(alpha);
  p.beta = static_cast<float>(beta);
  CheckCudaLaunch(LaunchScaledAdd(p, at::cuda::getCurrentCUDAStream().stream()), "scaled add",
              p.Validate());
  return out;
}

CudaSampledTokens SampleTokensCuda(const torch::Tensor& logits, const torch::Tensor& params) {
  TORCH_CHECK(logits.is_cuda() && logits.dim() == 2, "sampling cuda: logits must be [rows, vocab] on "
              "a CUDA device, got ", logits.sizes(), " on ", logits.device());
  TORCH_CHECK(logits.scalar_type() == torch::kFloat32 || logits.scalar_type() == torch::kBFloat16,
              "sampling cuda: logits must be float32 or bfloat16, got ", logits.scalar_type());
  const int64_t R = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V >= 1 && V <= kSamplingMaxVocab && R <= 0x7fffffff, "sampling cuda: logits ",
              logits.sizes(), " outside what the kernel serves (1 <= vocab <= ", kSamplingMaxVocab,
              ")");
  TORCH_CHECK(logits.stride(1) == 1 && (R <= 1 || logits.stride(0) >= V),
              "sampling cuda: logits rows need unit stride along the vocabulary, got strides ",
              logits.strides());
  TORCH_CHECK(params.dim() == 2 && params.size(0) == R && params.size(1) == 4 &&
                  params.scalar_type() == torch::kFloat32 && params.is_contiguous() &&
                  params.device() == logits.device(),
              "sampling cuda: params must be contiguous float32 [", R, ", 4] on ", logits.device(),
              ", got ", params.sizes(), " ", params.scalar_type(), " on ", params.device());
  c10::cuda::CUDAGuard guard(logits.device());
  CudaSampledTokens out;
  out.packed = torch::empty({R * 12}, logits.options().dtype(torch::kUInt8));
  if (R == 0) {
    out.tokens = torch::empty({0}, logits.options().dtype(torch::kInt64));
    out.logprobs = torch::empty({0}, logits.options().dtype(torch::kFloat32));
    return out;
  }
  out.tokens = out.packed.narrow(0, 0, 8 * R).view(torch::kInt64);
  out.logprobs = out.packed.narrow(0, 8 * R, 4 * R).view(torch::kFloat32);
  FusedSamplingParams p;
  p.logits = logits.data_ptr();
  p.logits_type = logits.scalar_type() == torch::kBFloat16 ? SamplingLogitsType::kBFloat16
                                                            : SamplingLogitsType::kFloat32;
  // A single row's stride is never used; any value >= V does.
  p.logits_row_stride = R > 1 ? logits.stride(0) : V;
  p.options = reinterpret_cast<const SamplingRowOptions*>(params.data_ptr<float>());
  p.tokens = out.tokens.data_ptr<int64_t>();
  p.logprobs = out.logprobs.data_ptr<float>();
  p.rows = static_cast<int>(R);
  p.vocab = static_cast<int>(V);
  CheckCudaLaunch(LaunchFusedSampling(p, at::cuda::getCurrentCUDAStream().stream()), "fused sampling",
              p.Validate());
  return out;
}

torch::Tensor GroupedLinearCuda(const torch::Tensor& in, const torch::Tensor& weight_ptrs,
                                int64_t out_features) {
  TORCH_CHECK(in.is_cuda() && in.scalar_type() == torch::kBFloat16 && in.is_contiguous() &&
                  (in.dim() == 2 || in.dim() == 3),
              "grouped linear: input must be contiguous bfloat16 [T, K] or [G, T, K] on CUDA, got ",
              in.sizes(), " ", in.scalar_type());
  TORCH_CHECK(weight_ptrs.dim() == 1 && weight_ptrs.scalar_type() == torch::kInt64 &&
                  weight_ptrs.is_contiguous() && weight_ptrs.device() == in.device(),
              "grouped linear: weight_ptrs must be contiguous int64 [G] on ", in.device());
  const int64_t G = weight_ptrs.size(0), T = in.size(-2), K = in.size(-1), N = out_features;
  TORCH_CHECK(in.dim() == 2 || in.size(0) == G, "grouped linear: ", in.size(0), " inputs for ",
              G, " weights");
  c10::cuda::CUDAGuard guard(in.device());
  auto out = torch::empty({G, T, N}, in.options());
  if (G == 0 || T == 0) return out;
  auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(in.device());
  const int64_t in_base = reinterpret_cast<int64_t>(in.data_ptr());
  const int64_t out_base = reinterpret_cast<int64_t>(out.data_ptr());
  const int64_t elem = static_cast<int64_t>(sizeof(uint16_t));
  auto in_ptrs = in.dim() == 2 ? torch::full({G}, in_base, i64)
                               : torch::arange(in_base, in_base + G * T * K * elem, T * K * elem, i64);
  auto out_ptrs = torch::arange(out_base, out_base + G * T * N * elem, T * N * elem, i64);
  // Row-major out_g [T, N] = in_g [T, K] W_g^T is column-major out_g^T = W_g in_g^T.
  const float alpha = 1.f, beta = 0.f;
  TORCH_CUDABLAS_CHECK(cublasGemmBatchedEx(
      at::cuda::getCurrentCUDABlasHandle(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N),
      static_cast<int>(T), static_cast<int>(K), &alpha,
      reinterpret_cast<const void* const*>(weight_ptrs.data_ptr<int64_t>()), CUDA_R_16BF,
      static_cast<int>(K), reinterpret_cast<const void* const*>(in_ptrs.data_ptr<int64_t>()),
      CUDA_R_16BF, static_cast<int>(K), &beta,
      reinterpret_cast<void* const*>(out_ptrs.data_ptr<int64_t>()), CUDA_R_16BF,
      static_cast<int>(N), static_cast<int>(G), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return out;
}

}  // namespace lightrl
