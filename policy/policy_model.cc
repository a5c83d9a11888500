#include "policy/policy_model.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/checkpoint_manifest.h"
#include "common/file_util.h"
#include "common/status.h"
#include "policy/checkpoint.h"
#include "policy/minimax_model.h"
#include "policy/sharded_checkpoint.h"

namespace lightrl {

struct PolicyModel::Impl {
  ModelConfig config;
  PolicyOptions options;
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  MiniMaxForCausalLM module{nullptr};
  ShardCoords shard;
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
                                                            const PolicyOptions& options,
                                                            const ShardCoords& shard) {
  RETURN_IF_ERROR(options.Validate());
  if (absl::Status s = shard.CheckModel(config); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model shard (", shard.ToString(), "): ", s.message()));
  }
  auto impl = std::make_unique<PolicyModel::Impl>();
  impl->config = config;
  impl->options = options;
  impl->shard = shard;
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
    impl->module = MiniMaxForCausalLM(config, shard);
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

// A lightrl checkpoint carries a manifest: the files the model is read from must match
// it before any tensor is trusted. Other model directories (HuggingFace) have none.
absl::Status VerifyWeightFiles(const std::string& dir) {
  return VerifyCheckpointManifest(dir, [](absl::string_view name) {
           return name == "config.json" || absl::EndsWith(name, ".safetensors") ||
                  absl::EndsWith(name, ".safetensors.index.json") || name == kShardedIndexName;
         }).status();
}

}  // namespace

PolicyModel::PolicyModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PolicyModel::~PolicyModel() = default;

absl::StatusOr<std::unique_ptr<PolicyModel>> PolicyModel::Load(const std::string& dir,
                                                               const PolicyOptions& options,
                                                               const ShardCoords& shard) {
  if (!IsDirectory(dir)) {
    return absl::NotFoundError(absl::StrCat(dir, ": model directory does not exist"));
  }
  RETURN_IF_ERROR(VerifyWeightFiles(dir));
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile(JoinPath(dir, "config.json")));
  // A sharded folder (policy/sharded_checkpoint.h) is read whole; an HF one as it is; a
  // model built for `shard` keeps its blocks of either.
  std::optional<ShardedCheckpoint> sharded;
  std::optional<SafetensorsCheckpoint> hf;
  if (ShardedCheckpoint::IsSharded(dir)) {
    ASSIGN_OR_RETURN(sharded, ShardedCheckpoint::Open(dir));
  } else {
    ASSIGN_OR_RETURN(hf, SafetensorsCheckpoint::Open(dir));
  }
  ASSIGN_OR_RETURN(auto impl, MakeImpl(config, options, shard));
  try {
    RETURN_IF_ERROR(sharded ? LoadWeights(impl->module, *sharded) : LoadWeights(impl->module, *hf));
    Place(*impl);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(dir, ": loading weights: ", e.what_without_backtrace()));
  }
  return std::unique_ptr<PolicyModel>(new PolicyModel(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<PolicyModel>> PolicyModel::Create(const ModelConfig& config,
                                                                 uint64_t seed,
                                                                 const PolicyOptions& options,
                                                                 const ShardCoords& shard) {
  RETURN_IF_ERROR(config.Validate());
  ASSIGN_OR_RETURN(auto impl, MakeImpl(config, options, shard));
  if (shard == ShardCoords{}) {
    impl->module->InitRandom(seed);
  } else {
    // The whole model's draw, then this rank's blocks of it.
    try {
      torch::NoGradGuard no_grad;
      MiniMaxForCausalLM whole(config);
      whole->InitRandom(seed);
      const auto full = whole->named_parameters();
      for (auto& p : impl->module->named_parameters()) {
        ASSIGN_OR_RETURN(auto block, ShardBlock(p.key(), full[p.key()], config, shard));
        p.value().copy_(block);
      }
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("slicing the model for ", shard.ToString(), ": ",
                                              e.what_without_backtrace()));
    }
  }
  Place(*impl);
  return std::unique_ptr<PolicyModel>(new PolicyModel(std::move(impl)));
}

const ModelConfig& PolicyModel::config() const { return impl_->config; }
const PolicyOptions& PolicyModel::options() const { return impl_->options; }
const ShardCoords& PolicyModel::shard() const { return impl_->shard; }

absl::StatusOr<std::unique_ptr<PolicyModel>> PolicyModel::CreateShard(const ModelConfig& config,
                                                                      uint64_t seed,
                                                                      const ShardCoords& shard,
                                                                      const PolicyOptions& options) {
  return Create(config, seed, options, shard);
}

absl::StatusOr<std::unique_ptr<PolicyModel>> PolicyModel::LoadShard(const std::string& dir,
                                                                    const ShardCoords& shard,
                                                                    const PolicyOptions& options) {
  if (!IsDirectory(dir)) {
    return absl::NotFoundError(absl::StrCat(dir, ": model directory does not exist"));
  }
  RETURN_IF_ERROR(VerifyWeightFiles(dir));
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile(JoinPath(dir, "config.json")));
  RETURN_IF_ERROR(config.Validate());
  ASSIGN_OR_RETURN(auto impl, MakeImpl(config, options, shard));
  // Only this rank's blocks are read (and assembled across the stored layout's files).
  ASSIGN_OR_RETURN(ShardedCheckpoint ckpt, ShardedCheckpoint::Open(dir));
  ASSIGN_OR_RETURN(std::vector<TensorBlock> blocks, ckpt.ReadShards(config, shard));
  std::map<std::string, const TensorBlock*> by_name;
  for (const TensorBlock& b : blocks) by_name[b.name] = &b;
  try {
    torch::NoGradGuard no_grad;
    for (auto& p : impl->module->named_parameters()) {
      if (config.tie_word_embeddings && p.key() == "lm_head.weight") continue;
      auto it = by_name.find(p.key());
      if (it == by_name.end()) {
        return absl::NotFoundError(absl::StrCat(dir, ": checkpoint lacks tensor '", p.key(), "'"));
      }
      const TensorBlock& b = *it->second;
      if (b.shape != p.value().sizes().vec()) {
        return absl::InvalidArgumentError(absl::StrCat(
            ckpt.FileOf(b.name), ": block of '", b.name, "' for ", shard.ToString(), " has shape ",
            ShapeString(b.shape), ", the shard needs ", ShapeString(p.value().sizes().vec())));
      }
      auto src = torch::from_blob(const_cast<char*>(b.data.data()), b.shape,
                                  torch::TensorOptions().dtype(ToTorchDType(b.dtype)));
      p.value().copy_(src);
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(dir, ": loading the shard ", shard.ToString(), ": ",
                                            e.what_without_backtrace()));
  }
  Place(*impl);
  return std::unique_ptr<PolicyModel>(new PolicyModel(std::move(impl)));
}
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

namespace {

// Checkpoints and weight sync carry whole tensors; a shard's would be partial.
absl::Status CheckWhole(const ShardCoords& shard, const char* what) {
  if (shard == ShardCoords{}) return absl::OkStatus();
  return absl::UnimplementedError(absl::StrCat(what, " of a model-parallel shard (", shard.ToString(),
                                               ") is not supported yet"));
}

}  // namespace

absl::Status PolicyModel::Save(const std::string& dir, DType dtype) const {
  RETURN_IF_ERROR(CheckWhole(impl_->shard, "saving a checkpoint"));
  try {
    return SaveCheckpoint(impl_->module, dir, dtype);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(dir, ": saving: ", e.what_without_backtrace()));
  }
}

namespace {

std::vector<std::pair<std::string, torch::Tensor>> SyncedParameters(MiniMaxForCausalLM& module) {
  std::vector<std::pair<std::string, torch::Tensor>> named;
  for (auto& p : module->named_parameters()) {
    if (module->config().tie_word_embeddings && p.key() == "lm_head.weight") continue;
    named.emplace_back(p.key(), p.value());
  }
  std::sort(named.begin(), named.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return named;
}

absl::Status CheckSyncDType(DType dtype) {
  if (dtype == DType::kF32 || dtype == DType::kBF16) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("weight sync dtype must be F32 or BF16, got ", DTypeName(dtype)));
}

}  // namespace

absl::StatusOr<std::vector<PolicyModel::WeightTensor>> PolicyModel::ExportWeights(DType dtype) const {
  RETURN_IF_ERROR(CheckWhole(impl_->shard, "weight export"));
  return ExportLocalWeights(dtype);
}

absl::StatusOr<std::vector<PolicyModel::WeightTensor>> PolicyModel::ExportLocalWeights(
    DType dtype) const {
  RETURN_IF_ERROR(CheckSyncDType(dtype));
  std::vector<WeightTensor> out;
  try {
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : SyncedParameters(impl_->module)) {
      auto c = t.detach().to(torch::kCPU, ToTorchDType(dtype)).contiguous();
      WeightTensor w;
      w.name = name;
      w.shape = c.sizes().vec();
      w.data.assign(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.nbytes()));
      out.push_back(std::move(w));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("exporting weights: ", e.what_without_backtrace()));
  }
  return out;
}

std::vector<PolicyModel::WeightSpec> PolicyModel::WeightSpecs() const {
  // By name, the order SyncedParameters (and so ExportWeights) has.
  std::map<std::string, std::vector<int64_t>> specs;
  for (auto& [name, t] : SyncedParameters(impl_->module)) {
    std::vector<int64_t> shape = t.sizes().vec();
    // A shard's block of a split tensor: the whole tensor is `parts` blocks along `dim`.
    absl::StatusOr<TensorShard> part = ShardOf(name, impl_->config, impl_->shard);
    if (part.ok() && part->held && part->dim >= 0) shape[part->dim] *= part->parts;
    specs.emplace(name, std::move(shape));
  }
  // The other EP ranks' experts: an update of the whole model carries them, and a shard
  // leaves them.
  const ModelConfig& c = impl_->config;
  if (impl_->shard.ep > 1) {
    const std::vector<int64_t> in = {c.intermediate_size, c.hidden_size};
    const std::vector<int64_t> out = {c.hidden_size, c.intermediate_size};
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      for (int64_t e = 0; e < c.num_local_experts; ++e) {
        const std::string p = absl::StrCat("model.layers.", i, ".block_sparse_moe.experts.", e, ".");
        specs.emplace(p + "w1.weight", in);
        specs.emplace(p + "w2.weight", out);
        specs.emplace(p + "w3.weight", in);
      }
    }
  }
  std::vector<WeightSpec> list;
  for (auto& [name, shape] : specs) list.push_back({name, std::move(shape)});
  return list;
}

absl::StatusOr<std::vector<PolicyModel::ParameterBuffer>> PolicyModel::ParameterBuffers() {
  RETURN_IF_ERROR(CheckWhole(impl_->shard, "weight sync buffers"));
  std::vector<ParameterBuffer> out;
  for (auto& [name, t] : SyncedParameters(impl_->module)) {
    if (!t.is_contiguous()) {
      return absl::FailedPreconditionError(absl::StrCat("parameter ", name, " is not contiguous"));
    }
    out.push_back({name, t.data_ptr(), static_cast<int64_t>(t.nbytes())});
  }
  return out;
}

int PolicyModel::device_index() const {
  const auto device = impl_->module->lm_head->weight.device();
  return device.is_cuda() ? device.index() : -1;
}

namespace {

// Checks `tensors` (in `dtype`) are exactly `named`'s parameters with the shapes `want`
// gives (names, shapes, byte counts; nothing extra or twice), then copies each into its
// parameter through `keep` (the block of it the parameter holds). On error nothing changes.
absl::Status CheckedImport(const std::vector<std::pair<std::string, torch::Tensor>>& named,
                           const std::map<std::string, std::vector<int64_t>>& want, DType dtype,
                           const std::vector<PolicyModel::WeightTensor>& tensors,
                           const std::function<absl::StatusOr<torch::Tensor>(
                               const std::string&, const torch::Tensor&)>& keep) {
  RETURN_IF_ERROR(CheckSyncDType(dtype));
  std::map<std::string, const PolicyModel::WeightTensor*> by_name;
  for (const PolicyModel::WeightTensor& w : tensors) {
    if (!by_name.emplace(w.name, &w).second) {
      return absl::InvalidArgumentError(absl::StrCat("weights: tensor '", w.name, "' appears twice"));
    }
  }
  // Validate everything before touching a parameter: every tensor one of `want` (the
  // model's, and for an expert shard the other ranks' experts, left alone), every
  // parameter among them.
  for (const auto& [name, w] : by_name) {
    if (want.count(name) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("weights: unexpected tensor '", name, "' (not part of this model)"));
    }
  }
  for (const auto& [name, t] : named) {
    if (by_name.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("weights: tensor '", name, "' is missing"));
    }
  }
  for (const auto& [name, p] : by_name) {
    const PolicyModel::WeightTensor& w = *p;
    const std::vector<int64_t>& shape = want.at(name);
    if (w.shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat("weights: tensor '", name, "' has shape ",
                                                     ShapeString(w.shape), ", the model needs ",
                                                     ShapeString(shape)));
    }
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    const size_t bytes = static_cast<size_t>(numel) * DTypeSize(dtype);
    if (w.data.size() != bytes) {
      return absl::InvalidArgumentError(absl::StrCat("weights: tensor '", name, "' has ",
                                                     w.data.size(), " bytes, expected ", bytes));
    }
  }
  try {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> blocks;
    for (const auto& [name, t] : named) {
      const PolicyModel::WeightTensor& w = *by_name.at(name);
      auto src = torch::from_blob(const_cast<char*>(w.data.data()), w.shape,
                                  torch::TensorOptions().dtype(ToTorchDType(dtype)));
      ASSIGN_OR_RETURN(torch::Tensor block, keep(name, src));
      blocks.push_back(block);
    }
    for (size_t i = 0; i < named.size(); ++i) {
      torch::Tensor t = named[i].second;
      t.copy_(blocks[i]);
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("importing weights: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status PolicyModel::ImportWeights(DType dtype, const std::vector<WeightTensor>& tensors) {
  std::map<std::string, std::vector<int64_t>> want;
  for (WeightSpec& spec : WeightSpecs()) want.emplace(spec.name, std::move(spec.shape));
  const ModelConfig& config = impl_->config;
  const ShardCoords& shard = impl_->shard;
  const bool whole = shard == ShardCoords{};
  return CheckedImport(SyncedParameters(impl_->module), want, dtype, tensors,
                       [&](const std::string& name, const torch::Tensor& src)
                           -> absl::StatusOr<torch::Tensor> {
                         if (whole) return src;
                         return ShardBlock(name, src, config, shard);
                       });
}

absl::Status PolicyModel::ImportLocalWeights(DType dtype, const std::vector<WeightTensor>& tensors) {
  const auto named = SyncedParameters(impl_->module);
  std::map<std::string, std::vector<int64_t>> want;
  for (const auto& [name, t] : named) want.emplace(name, t.sizes().vec());
  return CheckedImport(named, want, dtype, tensors,
                       [](const std::string&, const torch::Tensor& src)
                           -> absl::StatusOr<torch::Tensor> { return src; });
}

}  // namespace lightrl
