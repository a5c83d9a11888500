#include "policy/policy_model.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status.h"
#include "policy/checkpoint.h"
#include "policy/minimax_model.h"

namespace lightrl {

struct PolicyModel::Impl {
  ModelConfig config;
  PolicyOptions options;
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  MiniMaxForCausalLM module{nullptr};
};

absl::Status PolicyOptions::Validate() const {
  if (dtype != "float32" && dtype != "bfloat16" && dtype != "float16") {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype must be float32, bfloat16 or float16, got \"", dtype, "\""));
  }
  if (device != "cpu" && device.rfind("cuda", 0) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("device must be cpu, cuda or cuda:N, got \"", device, "\""));
  }
  return absl::OkStatus();
}

namespace {

absl::StatusOr<std::unique_ptr<PolicyModel::Impl>> MakeImpl(const ModelConfig& config,
                                                            const PolicyOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<PolicyModel::Impl>();
  impl->config = config;
  impl->options = options;
  try {
    impl->device = torch::Device(options.device);
    if (impl->device.is_cuda() && !torch::cuda::is_available()) {
      return absl::FailedPreconditionError(
          absl::StrCat("device \"", options.device, "\" requested but no CUDA device is available"
                       " (or this build's LibTorch has no CUDA)"));
    }
    impl->dtype = options.dtype == "bfloat16"  ? torch::kBFloat16
                  : options.dtype == "float16" ? torch::kFloat16
                                               : torch::kFloat32;
    impl->module = MiniMaxForCausalLM(config);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("building the model: ", e.what_without_backtrace()));
  }
  return impl;
}

void Place(PolicyModel::Impl& impl) {
  impl.module->to(impl.device, impl.dtype);
  // The slopes stay FP32 whatever the compute dtype.
  for (auto& b : impl.module->named_buffers()) {
    if (b.key().size() >= 6 && b.key().compare(b.key().size() - 6, 6, ".slope") == 0) {
      b.value().set_data(b.value().to(torch::kFloat32));
    }
  }
  impl.module->eval();
}

}  // namespace

PolicyModel::PolicyModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PolicyModel::~PolicyModel() = default;

absl::StatusOr<std::unique_ptr<PolicyModel>> PolicyModel::Load(const std::string& dir,
                                                               const PolicyOptions& options) {
  if (!IsDirectory(dir)) {
    return absl::NotFoundError(absl::StrCat(dir, ": model directory does not exist"));
  }
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile(JoinPath(dir, "config.json")));
  ASSIGN_OR_RETURN(auto ckpt, SafetensorsCheckpoint::Open(dir));
  ASSIGN_OR_RETURN(auto impl, MakeImpl(config, options));
  try {
    RETURN_IF_ERROR(LoadWeights(impl->module, ckpt));
    Place(*impl);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(dir, ": loading weights: ", e.what_without_backtrace()));
  }
  return std::unique_ptr<PolicyModel>(new PolicyModel(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<PolicyModel>> PolicyModel::Create(const ModelConfig& config,
                                                                 uint64_t seed,
                                                                 const PolicyOptions& options) {
  RETURN_IF_ERROR(config.Validate());
  ASSIGN_OR_RETURN(auto impl, MakeImpl(config, options));
  impl->module->InitRandom(seed);
  Place(*impl);
  return std::unique_ptr<PolicyModel>(new PolicyModel(std::move(impl)));
}

const ModelConfig& PolicyModel::config() const { return impl_->config; }
const PolicyOptions& PolicyModel::options() const { return impl_->options; }
MiniMaxForCausalLM& PolicyModel::module() { return impl_->module; }

absl::Status CheckTokenIds(const std::vector<int32_t>& ids, int64_t vocab_size,
                           const std::string& what) {
  for (size_t t = 0; t < ids.size(); ++t) {
    if (ids[t] < 0 || ids[t] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(what, ", position ", t, ": token id ",
                                                     ids[t], " is outside the vocabulary [0, ",
                                                     vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::vector<float>>> PolicyModel::TokenLogprobs(
    const std::vector<std::vector<int32_t>>& sequences, int64_t max_batch_tokens) {
  for (size_t i = 0; i < sequences.size(); ++i) {
    RETURN_IF_ERROR(
        CheckTokenIds(sequences[i], impl_->config.vocab_size, absl::StrCat("sequence ", i)));
  }
  std::vector<std::vector<float>> out(sequences.size());
  try {
    torch::InferenceMode guard;
    size_t next = 0;
    while (next < sequences.size()) {
      // Pack whole sequences up to the token budget (at least one per forward).
      std::vector<size_t> batch;
      std::vector<int64_t> lengths, flat;
      int64_t total = 0;
      while (next < sequences.size() &&
             (batch.empty() ||
              total + static_cast<int64_t>(sequences[next].size()) <= max_batch_tokens)) {
        if (!sequences[next].empty()) {
          batch.push_back(next);
          lengths.push_back(static_cast<int64_t>(sequences[next].size()));
          flat.insert(flat.end(), sequences[next].begin(), sequences[next].end());
          total += lengths.back();
        }
        ++next;
      }
      if (batch.empty()) continue;
      PackedLayout layout = PackedLayout::FromLengths(lengths);
      auto tokens = torch::tensor(flat, torch::kInt64).to(impl_->device);
      auto hidden = impl_->module->Forward(tokens, layout).hidden;
      // Position t predicts token t+1 of the same document.
      auto targets = torch::roll(tokens, -1);
      auto logp = impl_->module->TokenLogprobs(hidden, targets).to(torch::kCPU);
      auto acc = logp.accessor<float, 1>();
      for (size_t b = 0; b < batch.size(); ++b) {
        auto& row = out[batch[b]];
        const int64_t begin = layout.cu_seqlens[b], n = lengths[b];
        row.resize(n);
        row[0] = std::numeric_limits<float>::quiet_NaN();
        for (int64_t t = 1; t < n; ++t) row[t] = acc[begin + t - 1];
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("forward failed: ", e.what_without_backtrace()));
  }
  return out;
}

absl::Status PolicyModel::Save(const std::string& dir, DType dtype) const {
  try {
    return SaveCheckpoint(impl_->module, dir, dtype);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(dir, ": saving: ", e.what_without_backtrace()));
  }
}

}  // namespace lightrl
