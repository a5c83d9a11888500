// A torch-free byte-level BPE tokenizer read from a HuggingFace tokenizer.json (GPT-2 and
// Llama-3 style). It reproduces `tokenizers`' ids exactly for what it accepts, and rejects
// every feature it does not implement with a message naming the field. Owns text <-> ids
// only: no chat templates, no BOS/EOS, no truncation.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/json.h"

namespace lightrl {

// Immutable once loaded; copies share the tables, and every method is safe to call from
// several threads at once.
//
// What a tokenizer.json may hold:
//   model          BPE with vocab and merges ("a b" strings or [a, b] pairs),
//                  ignore_merges, unk_token/fuse_unk; byte_fallback, dropout,
//                  continuing_subword_prefix and end_of_word_suffix only when off.
//   normalizer     null (or an empty Sequence). NFC, which Qwen2/2.5/3 ship, is rejected.
//   pre_tokenizer  ByteLevel, or a Sequence of Split steps followed by one ByteLevel.
//                  Split regexes are recognised by their exact text: the GPT-2 pattern
//                  and the GPT-4 / Llama-3 / Qwen pattern with \p{N}, \p{N}{1,3} or
//                  \p{N}+; literal String patterns work too.
//   decoder        ByteLevel.
//   post_processor anything; it is not applied (see Encode).
//   added_tokens   special or not, with single_word, lstrip, rstrip and normalized.
// truncation and padding are ignored: callers bound lengths themselves.
class Tokenizer {
 public:
  // `path` is a tokenizer.json file or a directory holding one.
  static absl::StatusOr<Tokenizer> FromFile(const std::string& path);
  // `source_name` prefixes every error message ("x/tokenizer.json: model.type ...").
  static absl::StatusOr<Tokenizer> FromJson(const Json& json, const std::string& source_name);

  // The ids of HuggingFace `Tokenizer.encode(text, add_special_tokens=False)`: the
  // post-processor's template is not applied, so no BOS/EOS is added. With
  // parse_special, added tokens written in the text become their single ids; without
  // it, special added tokens are encoded as plain text (HF's encode_special_tokens)
  // while non-special added tokens still match. Fails only on invalid UTF-8 or a byte
  // the vocabulary cannot encode.
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                              bool parse_special = true) const;

  // HuggingFace `decode(ids, skip_special_tokens=skip_special)`: bytes that do not form
  // valid UTF-8 (a cut multi-byte character) become U+FFFD. Unlike HF, an id that names
  // no token is an InvalidArgument error instead of being dropped.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special = false) const;

  // Max id + 1 over the vocabulary and the added tokens.
  int32_t vocab_size() const;
  // Added tokens first, then the BPE vocabulary (byte-level strings such as "Ġthe").
  std::optional<int32_t> TokenToId(absl::string_view token) const;
  // The token string of `id`; empty when no token has that id.
  std::string IdToToken(int32_t id) const;
  // Whether `id` is an added token marked special (skipped by Decode(..., true)).
  bool IsSpecial(int32_t id) const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

  std::shared_ptr<const Impl> impl_;
};

}  // namespace lightrl
