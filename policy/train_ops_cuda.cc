#include "policy/train_ops_cuda.h"

#include <cmath>
#include <cstring>

#ifdef LIGHTRL_POLICY_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>

#include "kernels/train_ops/train_ops.h"
#include "policy/cuda_views.h"
#endif

namespace lightrl {

#ifdef LIGHTRL_POLICY_CUDA
namespace {

cudaStream_t Stream() { return at::cuda::getCurrentCUDAStream().stream(); }

// The device tables of a multi-tensor kernel: one item per tensor and the chunks
// MakeAdamWChunks plans over their sizes, in one pinned buffer copied to `device` on the
// current stream without blocking (torch's host allocator keeps the buffer until the
// stream has passed the copy; `table` keeps the device copy until this object goes).
template <typename Item>
struct ChunkTables {
  torch::Tensor table;
  const Item* items = nullptr;
  const AdamWChunk* chunks = nullptr;
  int num_chunks = 0;

  ChunkTables(const std::vector<Item>& list, const std::vector<int64_t>& sizes,
              const torch::Device& device, const char* what) {
    const int64_t n = MakeAdamWChunks(sizes.data(), static_cast<int>(sizes.size()), nullptr, 0);
    if (n == 0) return;
    TORCH_CHECK(n <= INT32_MAX, what, ": too many chunks");
    const size_t item_bytes = list.size() * sizeof(Item);
    const size_t chunk_offset = (item_bytes + 15) / 16 * 16;
    const size_t bytes = chunk_offset + static_cast<size_t>(n) * sizeof(AdamWChunk);
    auto host = torch::empty({static_cast<int64_t>(bytes)},
                             torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(true));
    auto* base = static_cast<uint8_t*>(host.data_ptr());
    std::memcpy(base, list.data(), item_bytes);
    MakeAdamWChunks(sizes.data(), static_cast<int>(sizes.size()),
                    reinterpret_cast<AdamWChunk*>(base + chunk_offset), n);
    table = host.to(device, /*non_blocking=*/true);
    auto* dev = static_cast<uint8_t*>(table.data_ptr());
    items = reinterpret_cast<const Item*>(dev);
    chunks = reinterpret_cast<const AdamWChunk*>(dev + chunk_offset);
    num_chunks = static_cast<int>(n);
  }
};

__nv_bfloat16* Bf16(const torch::Tensor& t) {
  return reinterpret_cast<__nv_bfloat16*>(t.data_ptr());
}

void CheckSameBf16(const torch::Tensor& t, const char* name, const torch::Tensor& like) {
  TORCH_CHECK(t.is_cuda() && t.scalar_type() == torch::kBFloat16 && t.is_contiguous(),
              "swiglu cuda: ", name, " must be a contiguous CUDA bf16 tensor");
  TORCH_CHECK(t.sizes() == like.sizes() && t.device() == like.device(), "swiglu cuda: ", name,
              " ", t.sizes(), " on ", t.device(), " differs from a ", like.sizes(), " on ",
              like.device());
}

class SwiGluFunction : public torch::autograd::Function<SwiGluFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& a,
                               const torch::Tensor& b) {
    CheckSameBf16(b, "b", a);
    c10::cuda::CUDAGuard guard(a.device());
    auto h = torch::empty_like(a);
    SwiGluParams p;
    p.a = Bf16(a);
    p.b = Bf16(b);
    p.h = Bf16(h);
    p.n = a.numel();
    CheckCudaLaunch(LaunchSwiGlu(p, Stream()), "swiglu forward", p.Validate());
    ctx->save_for_backward({a, b});
    return h;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto& a = saved[0];
    const auto& b = saved[1];
    auto dh = grad_out[0].to(torch::kBFloat16).contiguous();
    c10::cuda::CUDAGuard guard(a.device());
    auto da = torch::empty_like(a), db = torch::empty_like(b);
    SwiGluBackwardParams p;
    p.a = Bf16(a);
    p.b = Bf16(b);
    p.dh = Bf16(dh);
    p.da = Bf16(da);
    p.db = Bf16(db);
    p.n = a.numel();
    CheckCudaLaunch(LaunchSwiGluBackward(p, Stream()), "swiglu backward", p.Validate());
    return {da, db};
  }
};

class MoeCombineFunction : public torch::autograd::Function<MoeCombineFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& y,
                               const torch::Tensor& rows, const torch::Tensor& readers,
                               const torch::Tensor& w) {
    c10::cuda::CUDAGuard guard(y.device());
    auto out = torch::empty({rows.size(0), y.size(1)}, y.options());
    MoeCombineParams p;
    p.y = Bf16(y);
    p.rows = rows.data_ptr<int64_t>();
    p.w = w.data_ptr<float>();
    p.out = Bf16(out);
    p.num_rows = y.size(0);
    p.tokens = static_cast<int>(rows.size(0));
    p.top_k = static_cast<int>(rows.size(1));
    p.dim = static_cast<int>(y.size(1));
    CheckCudaLaunch(LaunchMoeCombine(p, Stream()), "moe combine forward", p.Validate());
    ctx->save_for_backward({y, rows, readers, w});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto& y = saved[0];
    const auto& rows = saved[1];
    const auto& w = saved[3];
    c10::cuda::CUDAGuard guard(y.device());
    auto g = grad_out[0].to(torch::kBFloat16).contiguous();
    auto dy = torch::empty_like(y);
    auto dw = torch::empty_like(w);
    MoeCombineBackwardParams p;
    p.y = Bf16(y);
    p.rows = rows.data_ptr<int64_t>();
    p.readers = saved[2].data_ptr<int64_t>();
    p.w = w.data_ptr<float>();
    p.g = Bf16(g);
    p.dy = Bf16(dy);
    p.dw = dw.data_ptr<float>();
    p.num_rows = y.size(0);
    p.tokens = static_cast<int>(rows.size(0));
    p.top_k = static_cast<int>(rows.size(1));
    p.dim = static_cast<int>(y.size(1));
    CheckCudaLaunch(LaunchMoeCombineBackward(p, Stream()), "moe combine backward", p.Validate());
    return {dy, torch::Tensor(), torch::Tensor(), dw};
  }
};

// The [n] log-probabilities and [n] log-sum-exps of FP32 logits [n, V].
std::pair<torch::Tensor, torch::Tensor> TokenLogprobKernel(const torch::Tensor& logits,
                                                           const torch::Tensor& targets) {
  auto opts = logits.options().dtype(torch::kFloat32);
  auto lse = torch::empty({logits.size(0)}, opts), logp = torch::empty({logits.size(0)}, opts);
  TokenLogprobParams p;
  p.logits = logits.data_ptr<float>();
  p.targets = targets.data_ptr<int64_t>();
  p.lse = lse.data_ptr<float>();
  p.logp = logp.data_ptr<float>();
  p.logits_row_stride = logits.stride(0);
  p.rows = static_cast<int>(logits.size(0));
  p.vocab = static_cast<int>(logits.size(1));
  CheckCudaLaunch(LaunchTokenLogprob(p, Stream()), "token logprob forward", p.Validate());
  return {logp, lse};
}

class TokenLogprobsFunction : public torch::autograd::Function<TokenLogprobsFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& w, const torch::Tensor& targets) {
    c10::cuda::CUDAGuard guard(x.device());
    auto logits = at::mm(x, w.t(), torch::kFloat32);
    auto [logp, lse] = TokenLogprobKernel(logits, targets);
    ctx->save_for_backward({x, w, logits, lse, targets});
    return logp;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& w = saved[1];
    const auto& logits = saved[2];
    c10::cuda::CUDAGuard guard(x.device());
    auto grad = grad_out[0].to(torch::kFloat32).contiguous();
    auto dlogits = torch::empty(logits.sizes(), x.options());
    TokenLogprobBackwardParams p;
    p.logits = logits.data_ptr<float>();
    p.targets = saved[4].data_ptr<int64_t>();
    p.lse = saved[3].data_ptr<float>();
    p.grad = grad.data_ptr<float>();
    p.dlogits = Bf16(dlogits);
    p.logits_row_stride = logits.stride(0);
    p.dlogits_row_stride = dlogits.stride(0);
    p.rows = static_cast<int>(logits.size(0));
    p.vocab = static_cast<int>(logits.size(1));
    CheckCudaLaunch(LaunchTokenLogprobBackward(p, Stream()), "token logprob backward", p.Validate());
    torch::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) dx = at::mm(dlogits, w);
    if (ctx->needs_input_grad(1)) dw = at::mm(dlogits.t(), x);
    return {dx, dw, torch::Tensor()};
  }
};

}  // namespace

bool TrainKernelsSupported(const torch::Tensor& t) {
  return t.is_cuda() && t.scalar_type() == torch::kBFloat16;
}

torch::Tensor SwiGluCuda(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.is_cuda() && a.scalar_type() == torch::kBFloat16, "swiglu cuda: a must be CUDA bf16");
  return SwiGluFunction::apply(a.contiguous(), b.contiguous());
}

torch::Tensor MoeCombineCuda(const torch::Tensor& y, const torch::Tensor& rows,
                             const torch::Tensor& readers, const torch::Tensor& w) {
  TORCH_CHECK(y.dim() == 2 && y.is_cuda() && y.scalar_type() == torch::kBFloat16,
              "moe combine cuda: y must be [rows, dim] CUDA bf16");
  TORCH_CHECK(rows.dim() == 2 && w.sizes() == rows.sizes() && readers.dim() == 1 &&
                  readers.size(0) == y.size(0),
              "moe combine cuda: rows ", rows.sizes(), ", w ", w.sizes(), " and readers ",
              readers.sizes(), " do not fit y ", y.sizes());
  TORCH_CHECK(rows.size(0) <= INT32_MAX && y.size(1) <= INT32_MAX, "moe combine cuda: too large");
  auto on = [&](const torch::Tensor& t, torch::ScalarType type) {
    return t.to(y.device(), type).contiguous();
  };
  return MoeCombineFunction::apply(y.contiguous(), on(rows, torch::kInt64), on(readers, torch::kInt64),
                                   on(w, torch::kFloat32));
}

torch::Tensor TokenLogprobsCuda(const torch::Tensor& x, const torch::Tensor& w,
                                const torch::Tensor& targets) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "token logprobs cuda: x ", x.sizes(), " and W ", w.sizes(), " do not multiply");
  TORCH_CHECK(x.is_cuda() && x.scalar_type() == torch::kBFloat16 &&
                  w.scalar_type() == torch::kBFloat16 && w.device() == x.device(),
              "token logprobs cuda: x and W must be bf16 on one CUDA device");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == x.size(0), "token logprobs cuda: targets ",
              targets.sizes(), " must be [", x.size(0), "]");
  TORCH_CHECK(w.size(0) <= INT32_MAX && x.size(0) <= INT32_MAX, "token logprobs cuda: too large");
  return TokenLogprobsFunction::apply(x, w, targets.to(x.device(), torch::kInt64).contiguous());
}

bool MasterAdamWSupported(const torch::Device& device) { return device.is_cuda(); }

void MasterAdamWCuda(const std::vector<MasterAdamWEntry>& entries, const torch::Tensor& grad_scale,
                     const MasterAdamWHyper& hyper) {
  if (entries.empty()) return;
  const auto device = entries.front().master.device();
  c10::cuda::CUDAGuard guard(device);
  std::vector<AdamWTensor> tensors;
  std::vector<int64_t> sizes;
  for (const auto& e : entries) {
    TORCH_CHECK(e.master.device() == device && e.master.scalar_type() == torch::kFloat32 &&
                    e.master.is_contiguous(),
                "master adamw: masters must be contiguous FP32 on ", device);
    for (const auto* t : {&e.exp_avg, &e.exp_avg_sq, &e.grad}) {
      TORCH_CHECK(t->device() == device && t->numel() == e.master.numel() && t->is_contiguous(),
                  "master adamw: moments and gradient must be contiguous, on ", device,
                  ", with the master's ", e.master.numel(), " elements");
    }
    TORCH_CHECK(e.exp_avg.scalar_type() == torch::kFloat32 && e.exp_avg_sq.scalar_type() == torch::kFloat32,
                "master adamw: moments must be FP32");
    const bool bf16 = e.grad.scalar_type() == torch::kBFloat16;
    TORCH_CHECK(bf16 || e.grad.scalar_type() == torch::kFloat32,
                "master adamw: gradients must be bf16 or FP32, got ", e.grad.scalar_type());
    AdamWTensor t;
    t.master = e.master.data_ptr<float>();
    t.exp_avg = e.exp_avg.data_ptr<float>();
    t.exp_avg_sq = e.exp_avg_sq.data_ptr<float>();
    t.grad = e.grad.data_ptr();
    t.grad_bf16 = bf16;
    if (e.param_out.defined()) {
      TORCH_CHECK(e.param_out.scalar_type() == torch::kBFloat16 && e.param_out.is_contiguous() &&
                      e.param_out.numel() == e.master.numel() && e.param_out.device() == device,
                  "master adamw: param_out must be contiguous bf16 shaped as its master");
      t.param_out = Bf16(e.param_out);
    }
    t.n = e.master.numel();
    t.bias_correction1 = static_cast<float>(1.0 - std::pow(hyper.beta1, static_cast<double>(e.step)));
    t.bias_correction2 = static_cast<float>(1.0 - std::pow(hyper.beta2, static_cast<double>(e.step)));
    tensors.push_back(t);
    sizes.push_back(t.n);
  }
  ChunkTables<AdamWTensor> tables(tensors, sizes, device, "master adamw");
  if (tables.num_chunks == 0) return;
  MasterAdamWParams p;
  p.tensors = tables.items;
  p.chunks = tables.chunks;
  p.num_chunks = tables.num_chunks;
  torch::Tensor scale;
  if (grad_scale.defined()) {
    scale = grad_scale.to(device, torch::kFloat32).contiguous();
    TORCH_CHECK(scale.numel() == 1, "master adamw: grad_scale must be a scalar");
    p.grad_scale = scale.data_ptr<float>();
  }
  p.lr = static_cast<float>(hyper.lr);
  p.beta1 = static_cast<float>(hyper.beta1);
  p.beta2 = static_cast<float>(hyper.beta2);
  p.weight_decay = static_cast<float>(hyper.weight_decay);
  p.eps = static_cast<float>(hyper.eps);
  CheckCudaLaunch(LaunchMasterAdamW(p, Stream()), "master adamw", p.Validate());
}

bool GatherToFp32Supported(const torch::Tensor& dst) {
  return dst.is_cuda() && dst.scalar_type() == torch::kFloat32;
}

void GatherToFp32Cuda(const std::vector<torch::Tensor>& srcs, const std::vector<int64_t>& offsets,
                      const std::vector<int64_t>& numels, const torch::Tensor& dst) {
  TORCH_CHECK(srcs.size() == offsets.size() && srcs.size() == numels.size(),
              "gather to fp32: ", srcs.size(), " sources, ", offsets.size(), " offsets and ",
              numels.size(), " sizes");
  TORCH_CHECK(GatherToFp32Supported(dst) && dst.is_contiguous(),
              "gather to fp32: dst must be a contiguous FP32 CUDA tensor");
  const auto device = dst.device();
  c10::cuda::CUDAGuard guard(device);
  std::vector<GatherSegment> segments;
  std::vector<int64_t> sizes;
  for (size_t j = 0; j < srcs.size(); ++j) {
    TORCH_CHECK(offsets[j] >= 0 && numels[j] >= 0 && offsets[j] + numels[j] <= dst.numel(),
                "gather to fp32: segment ", j, " [", offsets[j], ", ", offsets[j] + numels[j],
                ") is outside dst's ", dst.numel(), " elements");
    GatherSegment seg;
    if (srcs[j].defined()) {
      const auto& t = srcs[j];
      TORCH_CHECK(t.device() == device && t.scalar_type() == torch::kBFloat16 && t.is_contiguous() &&
                      t.numel() == numels[j],
                  "gather to fp32: source ", j, " must be a contiguous bf16 tensor on ", device,
                  " with ", numels[j], " elements");
      seg.src = Bf16(t);
    }
    seg.dst_offset = offsets[j];
    seg.n = numels[j];
    segments.push_back(seg);
    sizes.push_back(seg.n);
  }
  ChunkTables<GatherSegment> tables(segments, sizes, device, "gather to fp32");
  if (tables.num_chunks == 0) return;
  GatherToFp32Params p;
  p.segments = tables.items;
  p.chunks = tables.chunks;
  p.num_chunks = tables.num_chunks;
  p.dst = dst.data_ptr<float>();
  CheckCudaLaunch(LaunchGatherToFp32(p, Stream()), "gather to fp32", p.Validate());
}

struct SideStream::State {
  std::optional<c10::cuda::CUDAStream> stream;
};

SideStream::SideStream(const torch::Device& device) : state_(std::make_unique<State>()) {
  if (device.is_cuda()) state_->stream = c10::cuda::getStreamFromPool(false, device.index());
}

SideStream::~SideStream() = default;

void SideStream::Run(const std::function<void()>& fn) {
  if (!state_->stream) {
    fn();
    return;
  }
  at::cuda::CUDAEvent ready;
  ready.record(c10::cuda::getCurrentCUDAStream(state_->stream->device_index()));
  ready.block(*state_->stream);
  c10::cuda::CUDAStreamGuard guard(*state_->stream);
  fn();
}

void SideStream::Keep(const torch::Tensor& t) {
  if (state_->stream && t.defined() && t.is_cuda()) t.record_stream(*state_->stream);
}

#else

bool GatherToFp32Supported(const torch::Tensor&) { return false; }

void GatherToFp32Cuda(const std::vector<torch::Tensor>&, const std::vector<int64_t>&,
                      const std::vector<int64_t>&, const torch::Tensor&) {
  TORCH_CHECK(false, "gather to fp32: this build has no CUDA kernels");
}

struct SideStream::State {};
SideStream::SideStream(const torch::Device&) : state_(std::make_unique<State>()) {}
SideStream::~SideStream() = default;
void SideStream::Run(const std::function<void()>& fn) { fn(); }
void SideStream::Keep(const torch::Tensor&) {}

bool TrainKernelsSupported(const torch::Tensor&) { return false; }

torch::Tensor SwiGluCuda(const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "swiglu cuda: this build has no CUDA kernels");
}

torch::Tensor MoeCombineCuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                             const torch::Tensor&) {
  TORCH_CHECK(false, "moe combine cuda: this build has no CUDA kernels");
}

torch::Tensor TokenLogprobsCuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "token logprobs cuda: this build has no CUDA kernels");
}

bool MasterAdamWSupported(const torch::Device&) { return false; }

void MasterAdamWCuda(const std::vector<MasterAdamWEntry>&, const torch::Tensor&,
                     const MasterAdamWHyper&) {
  TORCH_CHECK(false, "master adamw: this build has no CUDA kernels");
}

#endif

}  // namespace lightrl
