// `lightrl init` (a random model from a config.json) and `lightrl convert` (re-save a
// checkpoint: dtype, sharding, MiniMax-M1 naming to transformers' naming; the tokenizer
// and generation files come along).
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "policy/checkpoint_files.h"
#include "policy/policy_model.h"
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
    "Re-saves the checkpoint in DIR to DIR2 (which must differ) in transformers' naming,\n"
    "as --dtype float32 (default), bfloat16 or float16; the\n"
    "tokenizer and generation files come along.\n";

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

absl::Status Convert(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args, {"model", "output", "dtype"}));
  ASSIGN_OR_RETURN(std::string model_dir, flags.Required("model"));
  ASSIGN_OR_RETURN(std::string output, flags.Required("output"));
  ASSIGN_OR_RETURN(DType dtype, ParseSaveDType(flags.Get("dtype", "float32")));
  if (output == model_dir) {
    return UsageError("--output must differ from --model");
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
