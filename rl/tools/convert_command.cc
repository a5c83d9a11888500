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
  return absl::InvalidArgumentError(
      absl::StrCat("--dtype must be float32, bfloat16 or float16, got \"", name, "\""));
}

int Report(const char* command, const absl::Status& status) {
  if (status.ok()) return 0;
  std::cerr << "lightrl " << command << ": " << status.message() << "\n";
  return 1;
}

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
    return absl::InvalidArgumentError("--output must differ from --model");
  }
  ASSIGN_OR_RETURN(auto model, PolicyModel::Load(model_dir));
  RETURN_IF_ERROR(model->Save(output, dtype));
  return CopyGenerationFiles(model_dir, output).status();
}

}  // namespace

int RunInitCommand(const std::vector<std::string>& args) {
  return Report("init", Init(args));
}

int RunConvertCommand(const std::vector<std::string>& args) {
  return Report("convert", Convert(args));
}

}  // namespace lightrl
