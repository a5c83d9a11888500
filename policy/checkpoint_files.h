// The files beside a checkpoint's weights that make it usable on its own, by `lightrl
// generate` and by HuggingFace transformers: tokenizer.json, tokenizer_config.json (which
// tokens are BOS and EOS) and generation_config.json (the end ids and sampling defaults).
// Owns their names and contents and the default end tokens; knows nothing of weights,
// optimizer state or the checksum manifest (which lists whatever the folder holds).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/json.h"
#include "policy/model_config.h"
#include "policy/tokenizer.h"

namespace lightrl {

inline constexpr absl::string_view kTokenizerFileName = "tokenizer.json";
inline constexpr absl::string_view kTokenizerConfigFileName = "tokenizer_config.json";
inline constexpr absl::string_view kGenerationConfigFileName = "generation_config.json";

// The ids generation ends on when nothing names them: the model config's eos ids, then
// those of the conventional end tokens (<|endoftext|>, <|im_end|>, </s>, <|eot_id|>) that
// `tokenizer` (may be null) has, each once, in that order.
std::vector<int64_t> DefaultEndTokenIds(const ModelConfig& config, const Tokenizer* tokenizer);

// generation_config.json in transformers' GenerationConfig naming. Absent fields are
// absent from the file and leave the reader's own defaults.
struct GenerationConfigFile {
  std::optional<int64_t> bos_token_id;
  // Generation ends on any of these (eos_token_id: one id or a list).
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> max_new_tokens;
  // 0 = greedy (do_sample false); set only when the file says do_sample.
  std::optional<double> temperature;
  std::optional<double> top_p;
  // 0 = no top-k filter (written explicitly: transformers' default is 50).
  std::optional<int64_t> top_k;
  std::vector<std::string> stop_strings;

  Json ToJson() const;
  // Unknown keys (pad_token_id, transformers_version, ...) are ignored; a known key of the
  // wrong type is INVALID_ARGUMENT naming `source` and the key.
  static absl::StatusOr<GenerationConfigFile> FromJson(const Json& json, const std::string& source);
};

// DIR/generation_config.json, or nullopt when DIR has none.
absl::StatusOr<std::optional<GenerationConfigFile>> ReadGenerationConfig(const std::string& dir);

// Writes DIR/tokenizer.json (a copy of `tokenizer_path`, a tokenizer.json or a folder
// holding one), DIR/tokenizer_config.json and DIR/generation_config.json, each atomically.
// tokenizer_config.json starts from the one beside `tokenizer_path` when there is one
// (chat template and all) and names bos_token / eos_token from `generation`'s ids where it
// does not already; `model_max_length` is set likewise (0: left out).
absl::Status WriteGenerationFiles(const std::string& dir, const std::string& tokenizer_path,
                                  const Tokenizer& tokenizer,
                                  const GenerationConfigFile& generation,
                                  int64_t model_max_length);

// Copies what a model folder holds besides its weights and config.json for generation
// (tokenizer.json, tokenizer_config.json, generation_config.json, special_tokens_map.json,
// chat_template.jinja) from `from` to `to`, atomically each; files `from` lacks are
// skipped. Returns the names copied.
absl::StatusOr<std::vector<std::string>> CopyGenerationFiles(const std::string& from,
                                                             const std::string& to);

}  // namespace lightrl
