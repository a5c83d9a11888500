#include "policy/checkpoint.h"

#include <unistd.h>

#include <map>
#include <regex>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status.h"

namespace lightrl {
namespace {

std::vector<int64_t> Sizes(const torch::Tensor& t) {
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().end());
}

// transformers' decay buffers of a lightning layer, in FP32.
std::map<std::string, torch::Tensor> DecayBuffers(const torch::Tensor& slope, int64_t block) {
  auto s = slope.to(torch::kFloat32).view({-1, 1, 1});
  auto range = torch::arange(1, block + 1, torch::kFloat32);
  auto diff = range.view({-1, 1}) - range.view({1, -1});
  auto d = s * diff.view({1, block, block});
  auto diag = torch::exp(torch::where(d >= 0, -d, torch::full({}, -INFINITY)));
  return {{"slope_rate", s},
          {"query_decay", torch::exp(-s * range.view({-1, 1}))},
          {"key_decay", torch::exp(-s * (block - range.view({-1, 1})))},
          {"diagonal_decay", diag.unsqueeze(0)}};
}

bool IsDecayBuffer(const std::string& suffix) {
  return suffix == "slope_rate" || suffix == "query_decay" || suffix == "key_decay" ||
         suffix == "diagonal_decay";
}

}  // namespace

torch::ScalarType ToTorchDType(DType dtype) {
  switch (dtype) {
    case DType::kF64: return torch::kFloat64;
    case DType::kF32: return torch::kFloat32;
    case DType::kF16: return torch::kFloat16;
    case DType::kBF16: return torch::kBFloat16;
    case DType::kI64: return torch::kInt64;
    case DType::kI32: return torch::kInt32;
    case DType::kI16: return torch::kInt16;
    case DType::kI8: return torch::kInt8;
    case DType::kU8: return torch::kUInt8;
    case DType::kBool: return torch::kBool;
  }
  return torch::kFloat32;
}

absl::StatusOr<torch::Tensor> ShardBlock(const std::string& name, const torch::Tensor& full,
                                         const ModelConfig& config, const ShardCoords& shard) {
  ASSIGN_OR_RETURN(const TensorShard part, ShardOf(name, config, shard));
  if (!part.held) return torch::Tensor();
  if (part.whole()) return full;
  if (part.dim >= full.dim() || full.size(part.dim) % part.parts != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' of shape ", ShapeString(Sizes(full)), " does not split in ",
        part.parts, " blocks along dimension ", part.dim, " (", shard.ToString(), ")"));
  }
  const int64_t n = full.size(part.dim);
  return full.narrow(part.dim, part.begin(n), part.length(n));
}

namespace {

// Whole tensors assembled from a sharded checkpoint, looked up as a SafetensorsCheckpoint's.
class AssembledCheckpoint {
 public:
  static absl::StatusOr<AssembledCheckpoint> Read(const ShardedCheckpoint& ckpt,
                                                  const ModelConfig& config) {
    AssembledCheckpoint out;
    out.source_ = &ckpt;
    ASSIGN_OR_RETURN(out.blocks_, ckpt.ReadShards(config, ShardCoords{}));
    for (const TensorBlock& b : out.blocks_) {
      TensorInfo info;
      info.name = b.name;
      info.dtype = b.dtype;
      info.shape = b.shape;
      info.data = reinterpret_cast<const uint8_t*>(b.data.data());
      info.nbytes = b.data.size();
      out.infos_[b.name] = std::move(info);
    }
    return out;
  }
  const TensorInfo* Find(const std::string& name) const {
    auto it = infos_.find(name);
    return it == infos_.end() ? nullptr : &it->second;
  }
  std::vector<std::string> Names() const { return source_->Names(); }
  std::string FileOf(const std::string& name) const { return source_->FileOf(name); }
  const std::string& dir() const { return source_->dir(); }

 private:
  const ShardedCheckpoint* source_ = nullptr;
  std::vector<TensorBlock> blocks_;
  std::map<std::string, TensorInfo> infos_;
};

// Copies every parameter from `ckpt` (a SafetensorsCheckpoint or an AssembledCheckpoint).
template <typename Checkpoint>
absl::Status LoadWeightsFrom(MiniMaxForCausalLM& model, const Checkpoint& ckpt) {
  torch::NoGradGuard no_grad;
  const ModelConfig& config = model->config();
  const ShardCoords& shard = model->shard();
  std::set<std::string> used;
  for (auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    if (config.tie_word_embeddings && name == "lm_head.weight") continue;
    const TensorInfo* info = ckpt.Find(name);
    if (info == nullptr) {
      return absl::NotFoundError(absl::StrCat(ckpt.dir(), ": checkpoint lacks tensor '", name,
                                              "' (expected shape ",
                                              ShapeString(Sizes(p.value())), ")"));
    }
    ASSIGN_OR_RETURN(const TensorShard part, ShardOf(name, config, shard));
    if (part.LocalShape(info->shape) != Sizes(p.value()) ||
        (!part.whole() && info->shape[part.dim] % part.parts != 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          ckpt.FileOf(name), ": tensor '", name, "' has shape ", ShapeString(info->shape),
          ", the config needs ", ShapeString(Sizes(p.value())),
          part.whole() ? std::string() : absl::StrCat(" as block ", part.index, " of ", part.parts,
                                                      " along dimension ", part.dim)));
    }
    if (info->dtype != DType::kF32 && info->dtype != DType::kBF16 && info->dtype != DType::kF16 &&
        info->dtype != DType::kF64) {
      return absl::InvalidArgumentError(absl::StrCat(ckpt.FileOf(name), ": tensor '", name,
                                                     "' has dtype ", DTypeName(info->dtype),
                                                     ", expected a floating type"));
    }
    auto src = torch::from_blob(const_cast<uint8_t*>(info->data), info->shape,
                                torch::TensorOptions().dtype(ToTorchDType(info->dtype)));
    ASSIGN_OR_RETURN(auto block, ShardBlock(name, src, config, shard));
    p.value().copy_(block);
    used.insert(name);
  }
  // Lightning decay buffers are derived from the config; take slope_rate, accept the rest.
  static const std::regex kBuffer(R"(model\.layers\.(\d+)\.self_attn\.(\w+))");
  for (const std::string& name : ckpt.Names()) {
    if (used.count(name)) continue;
    if (config.tie_word_embeddings && name == "lm_head.weight") continue;
    // Another rank's experts.
    if (auto part = ShardOf(name, config, shard); part.ok() && !part->held) continue;
    std::smatch m;
    if (std::regex_match(name, m, kBuffer) && IsDecayBuffer(m[2].str())) {
      const int64_t layer = std::stoll(m[1].str());
      if (layer < config.num_hidden_layers && config.is_lightning(layer)) {
        if (m[2].str() == "slope_rate") {
          const TensorInfo* info = ckpt.Find(name);
          if (info->numel() != config.num_attention_heads) {
            return absl::InvalidArgumentError(absl::StrCat(
                ckpt.FileOf(name), ": tensor '", name, "' has shape ", ShapeString(info->shape),
                ", expected ", config.num_attention_heads, " slopes"));
          }
          auto src = torch::from_blob(const_cast<uint8_t*>(info->data), {info->numel()},
                                      torch::TensorOptions().dtype(ToTorchDType(info->dtype)));
          // The slopes are recomputed in FP32 from the config (a bf16 checkpoint stores
          // them rounded); the stored ones only have to agree with that.
          auto* attn = model->model->layers[layer]->as<DecoderLayerImpl>()->lightning.get();
          // This rank's heads' slopes (all of them for a model not split over TP).
          const int64_t heads = attn->num_heads;
          auto stored = src.to(torch::kFloat32).narrow(0, shard.tp_rank * heads, heads);
          auto rel = ((stored - attn->slope).abs() / attn->slope).max().item<double>();
          if (!(rel < 1e-2)) {
            return absl::InvalidArgumentError(absl::StrCat(
                ckpt.FileOf(name), ": tensor '", name, "' differs from the slopes of layer ",
                layer, " of ", config.num_hidden_layers, " with ", config.num_attention_heads,
                " heads by ", rel * 100, "% (config and checkpoint disagree)"));
          }
        }
        continue;
      }
    }
    return absl::InvalidArgumentError(absl::StrCat(ckpt.FileOf(name), ": unexpected tensor '",
                                                   name, "' (not part of this model's config)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LoadWeights(MiniMaxForCausalLM& model, const SafetensorsCheckpoint& ckpt) {
  return LoadWeightsFrom(model, ckpt);
}

absl::Status LoadWeights(MiniMaxForCausalLM& model, const ShardedCheckpoint& ckpt) {
  if (!ckpt.sharded()) {
    ASSIGN_OR_RETURN(SafetensorsCheckpoint hf, SafetensorsCheckpoint::Open(ckpt.dir()));
    return LoadWeightsFrom(model, hf);
  }
  ASSIGN_OR_RETURN(AssembledCheckpoint whole, AssembledCheckpoint::Read(ckpt, model->config()));
  return LoadWeightsFrom(model, whole);
}

absl::Status SaveCheckpoint(MiniMaxForCausalLM& model, const std::string& dir, DType dtype,
                            size_t max_shard_bytes) {
  if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint dtype must be F32, BF16 or F16, got ", DTypeName(dtype)));
  }
  if (!(model->shard() == ShardCoords{})) {
    return absl::UnimplementedError(absl::StrCat(
        dir, ": saving a model-parallel shard (", model->shard().ToString(),
        ") as an HF checkpoint is not supported; each rank writes its blocks with "
        "policy/sharded_checkpoint.h's WriteRankShards"));
  }
  torch::NoGradGuard no_grad;
  const ModelConfig& config = model->config();
  std::vector<std::pair<std::string, torch::Tensor>> named;
  for (auto& p : model->named_parameters()) {
    if (config.tie_word_embeddings && p.key() == "lm_head.weight") continue;
    named.emplace_back(p.key(), p.value());
  }
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    if (!config.is_lightning(i)) continue;
    auto* attn = model->model->layers[i]->as<DecoderLayerImpl>()->lightning.get();
    for (auto& [suffix, t] : DecayBuffers(attn->slope.cpu(), config.block_size)) {
      named.emplace_back(absl::StrCat("model.layers.", i, ".self_attn.", suffix), t);
    }
  }
  std::sort(named.begin(), named.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<torch::Tensor> keep;
  std::vector<TensorData> tensors;
  keep.reserve(named.size());
  for (auto& [name, t] : named) {
    keep.push_back(t.detach().to(torch::kCPU, ToTorchDType(dtype)).contiguous());
    const auto& c = keep.back();
    tensors.push_back({name, dtype, Sizes(c), c.data_ptr(), static_cast<size_t>(c.nbytes())});
  }
  RETURN_IF_ERROR(MakeDirs(dir));
  // A sharded checkpoint's index left in DIR would be read in place of these weights.
  ::unlink(JoinPath(dir, std::string(kShardedIndexName)).c_str());
  RETURN_IF_ERROR(WriteSafetensorsCheckpoint(dir, tensors, max_shard_bytes));
  Json cfg = config.ToJson();
  cfg.set("dtype", Json(dtype == DType::kF32 ? "float32" : dtype == DType::kBF16 ? "bfloat16"
                                                                                  : "float16"));
  return WriteFileAtomic(JoinPath(dir, "config.json"), cfg.Dump(2) + "\n");
}

}  // namespace lightrl
