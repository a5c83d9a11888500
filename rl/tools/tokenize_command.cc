// `lightrl tokenize`: encodes (and decodes back) JSONL text with a tokenizer.json; the
// Python parity test drives the C++ tokenizer through it.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/status.h"
#include "policy/tokenizer.h"
#include "rl/tools/commands.h"
#include "rl/tools/flags.h"

namespace lightrl {
namespace {

constexpr const char* kUsage =
    "usage: lightrl tokenize --tokenizer PATH --input IN.jsonl --output OUT.jsonl\n"
    "PATH is a tokenizer.json or a directory holding one.\n"
    "Each input line is {\"text\": \"...\"} or {\"ids\": [...]}. Each output line repeats it\n"
    "and adds \"ids\" (text lines only; added tokens in the text become their ids, no BOS is\n"
    "added) and \"decoded\" (the ids decoded back, special tokens kept).\n"
    "Nothing is written unless every line succeeds.\n";

absl::StatusOr<std::vector<int32_t>> ReadIds(const Json& ids, const std::string& where) {
  if (!ids.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": \"ids\" must be a list of ints"));
  }
  std::vector<int32_t> out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const Json& id = ids.as_array()[i];
    if (!id.is_int() || id.as_int() < INT32_MIN || id.as_int() > INT32_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ids[", i, "] must be an integer, got ", id.Dump()));
    }
    out.push_back(static_cast<int32_t>(id.as_int()));
  }
  return out;
}

absl::Status Run(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args, {"tokenizer", "input", "output"}));
  ASSIGN_OR_RETURN(std::string tokenizer_path, flags.Required("tokenizer"));
  ASSIGN_OR_RETURN(std::string input, flags.Required("input"));
  ASSIGN_OR_RETURN(std::string output, flags.Required("output"));
  ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::FromFile(tokenizer_path));
  ASSIGN_OR_RETURN(std::string text, ReadFile(input));

  std::string out;
  out.reserve(text.size() * 2);
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == absl::string_view::npos) continue;
    const std::string where = absl::StrCat(input, ":", line_no);
    absl::StatusOr<Json> json = Json::Parse(line);
    if (!json.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", json.status().message()));
    }
    if (!json->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": expected a JSON object"));
    }
    std::vector<int32_t> ids;
    if (const Json* line_text = json->find("text"); line_text != nullptr) {
      if (!line_text->is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": \"text\" must be a string"));
      }
      absl::StatusOr<std::vector<int32_t>> encoded = tokenizer.Encode(line_text->as_string());
      if (!encoded.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": ", encoded.status().message()));
      }
      ids = *std::move(encoded);
      Json ids_json = Json::MakeArray();
      for (int32_t id : ids) ids_json.push_back(Json(id));
      json->set("ids", std::move(ids_json));
    } else if (const Json* line_ids = json->find("ids"); line_ids != nullptr) {
      ASSIGN_OR_RETURN(ids, ReadIds(*line_ids, where));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": each line needs \"text\" or \"ids\""));
    }
    absl::StatusOr<std::string> decoded = tokenizer.Decode(ids);
    if (!decoded.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", decoded.status().message()));
    }
    json->set("decoded", Json(*std::move(decoded)));
    out += json->Dump();
    out += '\n';
  }
  return WriteFileAtomic(output, out);
}

}  // namespace

int RunTokenizeCommand(const std::vector<std::string>& args) {
  return RunSubcommand("tokenize", kUsage, args, Run);
}

}  // namespace lightrl
