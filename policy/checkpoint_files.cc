#include "policy/checkpoint_files.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status.h"

namespace lightrl {
namespace {

// What HuggingFace files besides the weights and config.json carry for generation.
constexpr const char* kCopiedFiles[] = {"tokenizer.json", "tokenizer_config.json",
                                        "generation_config.json", "special_tokens_map.json",
                                        "chat_template.jinja"};

std::string ParentDir(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

absl::Status KeyError(const std::string& source, absl::string_view key, absl::string_view what,
                      const Json& got) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": ", key, " must be ", what, ", got ", got.Dump()));
}

// The token string of the first of `ids` the tokenizer names; "" when none.
std::string FirstNamedToken(const Tokenizer& tokenizer, const std::vector<int64_t>& ids) {
  for (int64_t id : ids) {
    if (id < 0 || id >= tokenizer.vocab_size()) continue;
    std::string token = tokenizer.IdToToken(static_cast<int32_t>(id));
    if (!token.empty()) return token;
  }
  return "";
}

}  // namespace

std::vector<int64_t> DefaultEndTokenIds(const ModelConfig& config, const Tokenizer* tokenizer) {
  std::vector<int64_t> ids;
  auto add = [&](int64_t id) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  };
  for (int64_t id : config.eos_token_ids) add(id);
  if (tokenizer != nullptr) {
    for (const char* name : {"<|endoftext|>", "<|im_end|>", "</s>", "<|eot_id|>"}) {
      if (auto id = tokenizer->TokenToId(name)) add(*id);
    }
  }
  return ids;
}

Json GenerationConfigFile::ToJson() const {
  Json j = Json::MakeObject();
  if (bos_token_id) j.set("bos_token_id", Json(*bos_token_id));
  if (eos_token_ids.size() == 1) {
    j.set("eos_token_id", Json(eos_token_ids[0]));
  } else if (!eos_token_ids.empty()) {
    Json eos = Json::MakeArray();
    for (int64_t id : eos_token_ids) eos.push_back(Json(id));
    j.set("eos_token_id", std::move(eos));
  }
  if (max_new_tokens) j.set("max_new_tokens", Json(*max_new_tokens));
  if (temperature) {
    const bool sample = *temperature > 0;
    j.set("do_sample", Json(sample));
    // transformers warns about sampling fields on a greedy config; write them only when
    // they take effect.
    if (sample) {
      j.set("temperature", Json(*temperature));
      if (top_p) j.set("top_p", Json(*top_p));
      if (top_k) j.set("top_k", Json(*top_k));
    }
  }
  if (!stop_strings.empty()) {
    Json stops = Json::MakeArray();
    for (const std::string& s : stop_strings) stops.push_back(Json(s));
    j.set("stop_strings", std::move(stops));
  }
  return j;
}

absl::StatusOr<GenerationConfigFile> GenerationConfigFile::FromJson(const Json& json,
                                                                    const std::string& source) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": expected a JSON object"));
  }
  GenerationConfigFile g;
  auto get_int = [&](const char* key, std::optional<int64_t>& out) -> absl::Status {
    const Json* v = json.find(key);
    if (v == nullptr || v->is_null()) return absl::OkStatus();
    if (!v->is_int()) return KeyError(source, key, "an integer", *v);
    out = v->as_int();
    return absl::OkStatus();
  };
  auto get_num = [&](const char* key, std::optional<double>& out) -> absl::Status {
    const Json* v = json.find(key);
    if (v == nullptr || v->is_null()) return absl::OkStatus();
    if (!v->is_number()) return KeyError(source, key, "a number", *v);
    out = v->as_double();
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(get_int("bos_token_id", g.bos_token_id));
  if (const Json* eos = json.find("eos_token_id"); eos != nullptr && !eos->is_null()) {
    if (eos->is_int()) {
      g.eos_token_ids.push_back(eos->as_int());
    } else if (eos->is_array()) {
      for (const Json& e : eos->as_array()) {
        if (!e.is_int()) return KeyError(source, "eos_token_id", "an integer or a list of integers", *eos);
        g.eos_token_ids.push_back(e.as_int());
      }
    } else {
      return KeyError(source, "eos_token_id", "an integer or a list of integers", *eos);
    }
  }
  RETURN_IF_ERROR(get_int("max_new_tokens", g.max_new_tokens));
  if (const Json* sample = json.find("do_sample"); sample != nullptr && !sample->is_null()) {
    if (!sample->is_bool()) return KeyError(source, "do_sample", "true or false", *sample);
    if (sample->as_bool()) {
      RETURN_IF_ERROR(get_num("temperature", g.temperature));
      if (!g.temperature) g.temperature = 1.0;
      RETURN_IF_ERROR(get_num("top_p", g.top_p));
      RETURN_IF_ERROR(get_int("top_k", g.top_k));
    } else {
      g.temperature = 0.0;
    }
  }
  if (const Json* stops = json.find("stop_strings"); stops != nullptr && !stops->is_null()) {
    if (stops->is_string()) {
      g.stop_strings.push_back(stops->as_string());
    } else if (stops->is_array()) {
      for (const Json& s : stops->as_array()) {
        if (!s.is_string()) return KeyError(source, "stop_strings", "a string or a list of strings", *stops);
        g.stop_strings.push_back(s.as_string());
      }
    } else {
      return KeyError(source, "stop_strings", "a string or a list of strings", *stops);
    }
  }
  return g;
}

absl::StatusOr<std::optional<GenerationConfigFile>> ReadGenerationConfig(const std::string& dir) {
  const std::string path = JoinPath(dir, kGenerationConfigFileName);
  if (!FileExists(path)) return std::optional<GenerationConfigFile>();
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto json = Json::Parse(text);
  if (!json.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", json.status().message()));
  ASSIGN_OR_RETURN(GenerationConfigFile g, GenerationConfigFile::FromJson(*json, path));
  return std::optional<GenerationConfigFile>(std::move(g));
}

absl::Status WriteGenerationFiles(const std::string& dir, const std::string& tokenizer_path,
                                  const Tokenizer& tokenizer,
                                  const GenerationConfigFile& generation,
                                  int64_t model_max_length) {
  const std::string tokenizer_file = IsDirectory(tokenizer_path)
                                         ? JoinPath(tokenizer_path, kTokenizerFileName)
                                         : tokenizer_path;
  ASSIGN_OR_RETURN(std::string tokenizer_json, ReadFile(tokenizer_file));
  RETURN_IF_ERROR(WriteFileAtomic(JoinPath(dir, kTokenizerFileName), tokenizer_json));

  Json config = Json::MakeObject();
  const std::string beside = JoinPath(ParentDir(tokenizer_file), kTokenizerConfigFileName);
  if (FileExists(beside)) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(beside));
    auto parsed = Json::Parse(text);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(beside, ": ", parsed.status().message()));
    }
    if (!parsed->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(beside, ": expected a JSON object"));
    }
    config = std::move(*parsed);
  }
  auto set_missing = [&](const char* key, Json value) {
    const Json* have = config.find(key);
    if (have == nullptr || have->is_null()) config.set(key, std::move(value));
  };
  set_missing("tokenizer_class", Json("PreTrainedTokenizerFast"));
  if (generation.bos_token_id) {
    const std::string bos = FirstNamedToken(tokenizer, {*generation.bos_token_id});
    if (!bos.empty()) set_missing("bos_token", Json(bos));
  }
  const std::string eos = FirstNamedToken(tokenizer, generation.eos_token_ids);
  if (!eos.empty()) set_missing("eos_token", Json(eos));
  if (model_max_length > 0) set_missing("model_max_length", Json(model_max_length));
  set_missing("clean_up_tokenization_spaces", Json(false));
  RETURN_IF_ERROR(WriteFileAtomic(JoinPath(dir, kTokenizerConfigFileName), config.Dump(2) + "\n"));
  return WriteFileAtomic(JoinPath(dir, kGenerationConfigFileName), generation.ToJson().Dump(2) + "\n");
}

absl::StatusOr<std::vector<std::string>> CopyGenerationFiles(const std::string& from,
                                                             const std::string& to) {
  std::vector<std::string> copied;
  for (const char* name : kCopiedFiles) {
    const std::string src = JoinPath(from, name);
    if (!FileExists(src)) continue;
    ASSIGN_OR_RETURN(std::string data, ReadFile(src));
    RETURN_IF_ERROR(WriteFileAtomic(JoinPath(to, name), data));
    copied.push_back(name);
  }
  return copied;
}

}  // namespace lightrl
