#include "rl/dataset.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/status.h"

namespace lightrl {
namespace {

std::string MetadataValue(const Json& value) {
  return value.is_string() ? value.as_string() : value.Dump();
}

// The row's metadata as `options` select it; `where` is "file:line" for errors.
absl::StatusOr<std::map<std::string, std::string>> RowMetadata(
    const Json& row, const std::string& prompt_key, const std::string& answer_key,
    const DatasetMetadataOptions& options, const std::string& where) {
  std::map<std::string, std::string> metadata;
  for (const std::string& field : options.fields) {
    if (field == "*") {
      for (const auto& [key, value] : row.as_object()) {
        if (key != prompt_key && key != answer_key) metadata[key] = MetadataValue(value);
      }
    } else if (const Json* value = row.find(field); value != nullptr) {
      metadata[field] = MetadataValue(*value);
    }
  }
  int64_t bytes = 0;
  for (const auto& [key, value] : metadata) bytes += static_cast<int64_t>(key.size() + value.size());
  if (bytes > options.max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": the row's metadata fields take ", bytes, " bytes, more than the limit of ",
        options.max_bytes, " (reward.metadata_max_kb; reward.metadata_fields selects fields)"));
  }
  return metadata;
}

}  // namespace

absl::StatusOr<Dataset> Dataset::Load(const std::string& path, const std::string& prompt_key,
                                      const std::string& answer_key, bool require_answer,
                                      const DatasetMetadataOptions& metadata) {
  if (metadata.max_bytes < 0 || metadata.max_bytes > kMaxDatasetMetadataBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": metadata limit must be in [0, ",
                                                   kMaxDatasetMetadataBytes, "] bytes, got ",
                                                   metadata.max_bytes));
  }
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  Dataset ds;
  int64_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == absl::string_view::npos) continue;
    const std::string where = absl::StrCat(path, ":", line_no);
    auto json = Json::Parse(line);
    if (!json.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", json.status().message()));
    if (!json->is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected a JSON object"));
    Example ex;
    ex.id = where;
    const Json* prompt = json->find(prompt_key);
    if (prompt == nullptr || !prompt->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": \"", prompt_key, "\" must be a string, got ", prompt ? prompt->Dump() : "nothing"));
    }
    ex.prompt = prompt->as_string();
    const Json* answer = json->find(answer_key);
    if (answer != nullptr && answer->is_string()) {
      ex.answer = answer->as_string();
    } else if (answer != nullptr && answer->is_number()) {
      ex.answer = answer->Dump();
    } else if (require_answer || answer != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": \"", answer_key, "\" must be a string or number, got ", answer ? answer->Dump() : "nothing"));
    }
    ASSIGN_OR_RETURN(ex.metadata, RowMetadata(*json, prompt_key, answer_key, metadata, where));
    ds.examples_.push_back(std::move(ex));
  }
  if (ds.examples_.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no examples"));
  return ds;
}

std::vector<int64_t> Dataset::Order(int64_t epoch, uint64_t seed, bool shuffle) const {
  std::vector<int64_t> order(examples_.size());
  std::iota(order.begin(), order.end(), 0);
  if (shuffle) {
    std::mt19937_64 rng(seed * 1000003ull + static_cast<uint64_t>(epoch));
    // Fisher-Yates with our own index draw: std::shuffle's sequence is not portable.
    for (size_t i = order.size(); i > 1; --i) {
      std::swap(order[i - 1], order[rng() % i]);
    }
  }
  return order;
}

std::vector<const Example*> Dataset::Next(int64_t n, uint64_t seed, bool shuffle,
                                          DatasetPosition& position) const {
  std::vector<const Example*> out;
  std::vector<int64_t> order = Order(position.epoch, seed, shuffle);
  while (static_cast<int64_t>(out.size()) < n) {
    if (position.index >= size()) {
      ++position.epoch;
      position.index = 0;
      order = Order(position.epoch, seed, shuffle);
    }
    out.push_back(&examples_[order[position.index++]]);
  }
  return out;
}

}  // namespace lightrl
