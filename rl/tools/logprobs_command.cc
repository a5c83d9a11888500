// `lightrl logprobs`: per-token log-probabilities of given sequences under a checkpoint.
#include <iostream>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/status.h"
#include "policy/policy_model.h"
#include "policy/tokenizer.h"
#include "rl/tools/commands.h"
#include "rl/tools/flags.h"

namespace lightrl {
namespace {

constexpr const char* kUsage =
    "usage: lightrl logprobs --model DIR --input IN.jsonl --output OUT.jsonl\n"
    "                        [--device cpu|cuda] [--dtype float32|bfloat16|float16]\n"
    "                        [--batch-tokens N]\n"
    "Each input line is {\"tokens\": [ids...]} or {\"text\": \"...\"} (text needs DIR/tokenizer.json).\n"
    "Each output line repeats it and adds \"logprobs\": log p(token t | tokens before t), null\n"
    "for the first token (and \"tokens\" for text input).\n";

struct Record {
  Json json;
  std::vector<int32_t> tokens;
  bool from_text = false;
};

absl::StatusOr<std::vector<Record>> ReadInput(const std::string& path, const std::string& model_dir,
                                              int64_t vocab_size) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::vector<Record> records;
  std::optional<Tokenizer> tokenizer;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == absl::string_view::npos) continue;
    const std::string where = absl::StrCat(path, ":", line_no);
    auto json = Json::Parse(line);
    if (!json.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", json.status().message()));
    if (!json->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": expected a JSON object"));
    }
    Record r;
    const Json* tokens = json->find("tokens");
    const Json* txt = json->find("text");
    if (tokens != nullptr) {
      if (!tokens->is_array()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": \"tokens\" must be a list of ids"));
      }
      for (size_t i = 0; i < tokens->size(); ++i) {
        const Json& id = tokens->as_array()[i];
        if (!id.is_int() || id.as_int() < 0 || id.as_int() >= vocab_size) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": tokens[", i, "] = ", id.Dump(),
                                                         " is not a token id in [0, ", vocab_size,
                                                         ")"));
        }
        r.tokens.push_back(static_cast<int32_t>(id.as_int()));
      }
    } else if (txt != nullptr) {
      if (!txt->is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": \"text\" must be a string"));
      }
      if (!tokenizer) {
        auto tok = Tokenizer::FromFile(JoinPath(model_dir, "tokenizer.json"));
        if (!tok.ok()) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": text input needs a tokenizer: ",
                                                         tok.status().message()));
        }
        tokenizer.emplace(std::move(*tok));
      }
      ASSIGN_OR_RETURN(r.tokens, tokenizer->Encode(txt->as_string()));
      r.from_text = true;
      RETURN_IF_ERROR(CheckTokenIds(r.tokens, vocab_size, where));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": each line needs \"tokens\" or \"text\""));
    }
    r.json = std::move(*json);
    records.push_back(std::move(r));
  }
  return records;
}

absl::Status Run(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(Flags flags,
                   Flags::Parse(args, {"model", "input", "output", "device", "dtype", "batch-tokens"}));
  ASSIGN_OR_RETURN(std::string model_dir, flags.Required("model"));
  ASSIGN_OR_RETURN(std::string input, flags.Required("input"));
  ASSIGN_OR_RETURN(std::string output, flags.Required("output"));
  ASSIGN_OR_RETURN(int64_t batch_tokens, flags.GetInt("batch-tokens", 16384));
  if (batch_tokens <= 0) {
    return UsageError(absl::StrCat("--batch-tokens must be > 0, got ", batch_tokens));
  }
  PolicyOptions options;
  options.device = flags.Get("device", "cpu");
  options.dtype = flags.Get("dtype", "float32");
  RETURN_IF_ERROR(options.Validate());
  // Read the config first so bad input fails before the weights load.
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile(JoinPath(model_dir, "config.json")));
  ASSIGN_OR_RETURN(std::vector<Record> records, ReadInput(input, model_dir, config.vocab_size));
  ASSIGN_OR_RETURN(auto model, PolicyModel::Load(model_dir, options));
  std::vector<std::vector<int32_t>> seqs;
  seqs.reserve(records.size());
  for (const auto& r : records) seqs.push_back(r.tokens);
  ASSIGN_OR_RETURN(auto logprobs, model->TokenLogprobs(seqs, batch_tokens));
  std::string out;
  for (size_t i = 0; i < records.size(); ++i) {
    Json& j = records[i].json;
    if (records[i].from_text) {
      Json ids = Json::MakeArray();
      for (int32_t id : records[i].tokens) ids.push_back(Json(id));
      j.set("tokens", std::move(ids));
    }
    // Floats are written by hand: shortest text that reads back as the same float32.
    std::string line = j.Dump();
    line.pop_back();  // '}'
    line += line.size() > 1 ? ",\"logprobs\":[" : "\"logprobs\":[";
    for (size_t t = 0; t < logprobs[i].size(); ++t) {
      if (t) line += ',';
      line += t == 0 ? "null" : FormatFloat(logprobs[i][t]);
    }
    line += "]}\n";
    out += line;
  }
  return WriteFileAtomic(output, out);
}

}  // namespace

int RunLogprobsCommand(const std::vector<std::string>& args) {
  return RunSubcommand("logprobs", kUsage, args, Run);
}

}  // namespace lightrl
