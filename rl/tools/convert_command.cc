// `lightrl init` (a random model from a config.json) and `lightrl convert` (re-save a
// checkpoint: dtype, sharding, MiniMax-M1 naming to transformers' naming; reassemble a
// sharded checkpoint into the HF format or split any into a layout's shard files; the
// tokenizer and generation files come along).
#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/checkpoint_manifest.h"
#include "common/file_util.h"
#include "common/status.h"
#include "policy/checkpoint_files.h"
#include "policy/policy_model.h"
#include "policy/sharded_checkpoint.h"
#include "rl/tools/commands.h"
#include "rl/tools/flags.h"

namespace lightrl {
namespace {

absl::StatusOr<DType> ParseSaveDType(const std::string& name) {
  if (name == "float32" || name == "fp32") return DType::kF32;
  if (name == "bfloat16" || name == "bf16") return DType::kBF16;
  if (name == "float16" || name == "fp16") return DType::kF16;
  return UsageError(
      absl::StrCat("--dtype must be float32, bfloat16 or float16, got \"", name, "\""));
}

constexpr const char* kInitUsage =
    "usage: lightrl init --config config.json --output DIR [--seed N] [--dtype D]\n"
    "Writes a randomly initialised model (config.json + model.safetensors) for the model\n"
    "config to DIR. --seed: the initialisation seed (default 0); --dtype: float32\n"
    "(default), bfloat16 or float16.\n";

constexpr const char* kConvertUsage =
    "usage: lightrl convert --model DIR --output DIR2 [--dtype D]\n"
    "       lightrl convert --model DIR --output DIR2 --to-layout tp=N,ep=N,expert_tp=N\n"
    "Re-saves the checkpoint in DIR (HuggingFace single or sharded safetensors, or a\n"
    "lightrl sharded checkpoint) to DIR2 (which must differ); config.json and the\n"
    "tokenizer and generation files come along.\n"
    "Without --to-layout, DIR2 is in transformers' format: the model is loaded and saved\n"
    "as --dtype float32 (default), bfloat16 or float16; a sharded DIR without --dtype is\n"
    "reassembled as stored, byte for byte.\n"
    "--to-layout: DIR2 is a sharded checkpoint of that layout (a file per tp/ep/expert_tp\n"
    "coordinate, model.sharded.index.json, manifest.json), dtypes as stored; absent keys\n"
    "are 1.\n";

absl::Status Init(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args, {"config", "output", "seed", "dtype"}));
  ASSIGN_OR_RETURN(std::string config_path, flags.Required("config"));
  ASSIGN_OR_RETURN(std::string output, flags.Required("output"));
  ASSIGN_OR_RETURN(int64_t seed, flags.GetInt("seed", 0));
  ASSIGN_OR_RETURN(DType dtype, ParseSaveDType(flags.Get("dtype", "float32")));
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile(config_path));
  ASSIGN_OR_RETURN(auto model, PolicyModel::Create(config, static_cast<uint64_t>(seed)));
  return model->Save(output, dtype);
}

// A lightrl checkpoint's weights and config must match its manifest before they are copied
// (as PolicyModel::Load checks them); a folder without one is taken as it is.
absl::Status VerifyWeights(const std::string& dir) {
  return VerifyCheckpointManifest(dir, [](absl::string_view name) {
           return name == "config.json" || absl::EndsWith(name, ".safetensors") ||
                  (absl::EndsWith(name, ".json") && absl::StartsWith(name, "model."));
         }).status();
}

// config.json byte for byte, then the generation files.
absl::Status CopyModelFiles(const std::string& from, const std::string& to) {
  ASSIGN_OR_RETURN(std::string config, ReadFile(JoinPath(from, "config.json")));
  RETURN_IF_ERROR(WriteFileAtomic(JoinPath(to, "config.json"), config));
  return CopyGenerationFiles(from, to).status();
}

// Every rank's file of `layout`, each read from `source` as that rank would, then the
// index and the manifest. One rank's blocks are in memory at a time.
absl::Status SplitToLayout(const std::string& model_dir, const std::string& output,
                           const ShardLayout& layout) {
  RETURN_IF_ERROR(VerifyWeights(model_dir));
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile(JoinPath(model_dir, "config.json")));
  ASSIGN_OR_RETURN(ShardedCheckpoint source, ShardedCheckpoint::Open(model_dir));
  for (const ShardCoords& coords : layout.AllCoords()) {
    if (absl::Status s = coords.CheckModel(config); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--to-layout ", layout.ToString(), " does not fit ", model_dir, "/config.json: ",
          s.message()));
    }
    ASSIGN_OR_RETURN(std::vector<TensorBlock> blocks, source.ReadShards(config, coords));
    std::vector<TensorData> views;
    views.reserve(blocks.size());
    for (const TensorBlock& b : blocks) views.push_back(b.view());
    RETURN_IF_ERROR(WriteRankShards(output, config, coords, views));
  }
  RETURN_IF_ERROR(WriteShardedIndex(output, config, layout));
  RETURN_IF_ERROR(CopyModelFiles(model_dir, output));
  return WriteCheckpointManifest(output);
}

// The whole tensors of a sharded checkpoint in transformers' format, bytes as stored.
absl::Status Reassemble(const std::string& model_dir, const std::string& output) {
  RETURN_IF_ERROR(VerifyWeights(model_dir));
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile(JoinPath(model_dir, "config.json")));
  ASSIGN_OR_RETURN(ShardedCheckpoint source, ShardedCheckpoint::Open(model_dir));
  ASSIGN_OR_RETURN(std::vector<TensorBlock> blocks, source.ReadShards(config, ShardCoords{}));
  std::vector<TensorData> views;
  views.reserve(blocks.size());
  for (const TensorBlock& b : blocks) views.push_back(b.view());
  RETURN_IF_ERROR(MakeDirs(output));
  // A sharded index left in the output would be read in place of these weights.
  RETURN_IF_ERROR(RemoveTree(JoinPath(output, std::string(kShardedIndexName))));
  RETURN_IF_ERROR(WriteSafetensorsCheckpoint(output, views));
  RETURN_IF_ERROR(CopyModelFiles(model_dir, output));
  // A manifest already in the output would no longer match.
  if (FileExists(JoinPath(output, std::string(kCheckpointManifestName)))) {
    return WriteCheckpointManifest(output);
  }
  return absl::OkStatus();
}

absl::Status Convert(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args, {"model", "output", "dtype", "to-layout"}));
  ASSIGN_OR_RETURN(std::string model_dir, flags.Required("model"));
  ASSIGN_OR_RETURN(std::string output, flags.Required("output"));
  ASSIGN_OR_RETURN(DType dtype, ParseSaveDType(flags.Get("dtype", "float32")));
  if (output == model_dir) {
    return UsageError("--output must differ from --model");
  }
  if (flags.Has("to-layout")) {
    if (flags.Has("dtype")) {
      return UsageError("--dtype cannot be combined with --to-layout (shards keep the stored dtype)");
    }
    absl::StatusOr<ShardLayout> layout = ShardLayout::Parse(flags.Get("to-layout"));
    if (!layout.ok()) return UsageError(absl::StrCat("--to-layout: ", layout.status().message()));
    return SplitToLayout(model_dir, output, *layout);
  }
  if (ShardedCheckpoint::IsSharded(model_dir) && !flags.Has("dtype")) {
    return Reassemble(model_dir, output);
  }
  ASSIGN_OR_RETURN(auto model, PolicyModel::Load(model_dir));
  RETURN_IF_ERROR(model->Save(output, dtype));
  return CopyGenerationFiles(model_dir, output).status();
}

}  // namespace

int RunInitCommand(const std::vector<std::string>& args) {
  return RunSubcommand("init", kInitUsage, args, Init);
}

int RunConvertCommand(const std::vector<std::string>& args) {
  return RunSubcommand("convert", kConvertUsage, args, Convert);
}

}  // namespace lightrl
