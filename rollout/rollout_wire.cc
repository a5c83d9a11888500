#include "rollout/rollout_wire.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
#include "common/status.h"

namespace lightrl {

void ToProto(const SamplingParams& params, lightrl::v1::SamplingOptions* out) {
  out->set_temperature(params.temperature);
  out->set_top_p(params.top_p);
  out->set_top_k(params.top_k);
  out->set_max_new_tokens(params.max_new_tokens);
  out->set_n(params.n);
  out->set_seed(params.seed);
  for (int64_t id : params.stop_token_ids) out->add_stop_token_ids(id);
  for (const std::string& s : params.stop_strings) out->add_stop_strings(s);
  out->set_early_stop_window(params.early_stop_window);
  out->set_early_stop_prob(params.early_stop_prob);
}

SamplingParams FromProto(const lightrl::v1::SamplingOptions& options) {
  SamplingParams p;
  p.temperature = options.temperature();
  p.top_p = options.top_p() == 0 ? 1.0 : options.top_p();
  p.top_k = options.top_k();
  p.max_new_tokens = options.max_new_tokens();
  p.n = options.n();
  p.seed = options.seed();
  p.stop_token_ids.assign(options.stop_token_ids().begin(), options.stop_token_ids().end());
  p.stop_strings.assign(options.stop_strings().begin(), options.stop_strings().end());
  p.early_stop_window = options.early_stop_window();
  // Unset on the wire (0) means the engine's default; it matters only with a window.
  if (options.early_stop_prob() != 0) p.early_stop_prob = options.early_stop_prob();
  return p;
}

void ToProto(const GeneratedSample& sample, int index, lightrl::v1::GeneratedSequence* out) {
  out->set_index(index);
  out->mutable_tokens()->Add(sample.tokens.begin(), sample.tokens.end());
  out->mutable_logprobs()->Add(sample.logprobs.begin(), sample.logprobs.end());
  out->set_finish_reason(FinishReasonName(sample.finish_reason));
}

absl::StatusOr<GeneratedSample> FromProto(const lightrl::v1::GeneratedSequence& sequence) {
  GeneratedSample s;
  s.tokens.assign(sequence.tokens().begin(), sequence.tokens().end());
  s.logprobs.assign(sequence.logprobs().begin(), sequence.logprobs().end());
  if (s.tokens.size() != s.logprobs.size()) {
    return absl::InvalidArgumentError(absl::StrCat("sample ", sequence.index(), ": ",
                                                   s.tokens.size(), " tokens but ",
                                                   s.logprobs.size(), " logprobs"));
  }
  const std::optional<FinishReason> reason = ParseFinishReason(sequence.finish_reason());
  if (!reason) {
    return absl::InvalidArgumentError(absl::StrCat("sample ", sequence.index(),
                                                   ": unknown finish_reason \"",
                                                   sequence.finish_reason(), "\""));
  }
  s.finish_reason = *reason;
  return s;
}

bool ForEachWeightChunk(const WeightSet& weights, bool replace_newer,
                        const std::function<bool(const lightrl::v1::WeightChunk&)>& emit,
                        size_t chunk_bytes) {
  lightrl::v1::WeightChunk chunk;
  auto* header = chunk.mutable_header();
  header->set_version(weights.version);
  header->set_dtype(DTypeName(weights.dtype));
  header->set_model_config_json(weights.model_config_json);
  header->set_replace_newer(replace_newer);
  header->set_batch_invariant(weights.batch_invariant);
  uint32_t crc = 0;
  for (const auto& t : weights.tensors) {
    auto* info = header->add_tensors();
    info->set_name(t.name);
    info->mutable_shape()->Add(t.shape.begin(), t.shape.end());
    crc = Crc32cExtend(crc, t.data.data(), t.data.size());
  }
  header->set_crc32c(crc);
  if (!emit(chunk)) return false;
  for (size_t i = 0; i < weights.tensors.size(); ++i) {
    const std::string& data = weights.tensors[i].data;
    for (size_t offset = 0; offset < data.size(); offset += chunk_bytes) {
      chunk.Clear();
      chunk.set_tensor_index(static_cast<int32_t>(i));
      chunk.set_offset(static_cast<int64_t>(offset));
      chunk.set_data(data.substr(offset, std::min(chunk_bytes, data.size() - offset)));
      if (!emit(chunk)) return false;
    }
  }
  return true;
}

absl::Status WeightAssembler::CheckAgainstExpected(const lightrl::v1::WeightHeader& h) const {
  if (expected_.empty()) return absl::OkStatus();
  const size_t declared = static_cast<size_t>(h.tensors_size());
  for (size_t i = 0; i < std::min(declared, expected_.size()); ++i) {
    const auto& info = h.tensors(static_cast<int>(i));
    const std::vector<int64_t> shape(info.shape().begin(), info.shape().end());
    if (info.name() != expected_[i].name || shape != expected_[i].shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "weight header: tensor ", i, " is '", info.name(), "' ", ShapeString(shape),
          "; the served model has '", expected_[i].name, "' ", ShapeString(expected_[i].shape)));
    }
  }
  if (declared > expected_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight header: tensor ", expected_.size(), " '", h.tensors(static_cast<int>(expected_.size())).name(),
        "' is not in the served model (", expected_.size(), " tensors)"));
  }
  if (declared < expected_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("weight header: lacks the served model's tensor '",
                                                   expected_[declared].name, "'"));
  }
  return absl::OkStatus();
}

absl::Status WeightAssembler::Add(const lightrl::v1::WeightChunk& chunk) {
  const int64_t n = num_chunks_++;
  if (chunk.has_header()) {
    if (have_header_) {
      return absl::InvalidArgumentError(absl::StrCat("weight chunk ", n, ": a second header"));
    }
    const auto& h = chunk.header();
    auto dtype = ParseDType(h.dtype());
    if (!dtype.ok() || (*dtype != DType::kF32 && *dtype != DType::kBF16)) {
      return absl::InvalidArgumentError(
          absl::StrCat("weight header: dtype must be F32 or BF16, got \"", h.dtype(), "\""));
    }
    if (h.version() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("weight header: version ", h.version(), " < 0"));
    }
    set_.version = h.version();
    set_.dtype = *dtype;
    set_.model_config_json = h.model_config_json();
    replace_newer_ = h.replace_newer();
    set_.batch_invariant = h.batch_invariant();
    crc32c_ = h.crc32c();
    RETURN_IF_ERROR(CheckAgainstExpected(h));
    int64_t total = 0;
    for (int i = 0; i < h.tensors_size(); ++i) {
      const auto& info = h.tensors(i);
      int64_t numel = 1;
      for (int64_t d : info.shape()) {
        if (d < 0 || (d > 0 && numel > (int64_t{1} << 40) / d)) {
          return absl::InvalidArgumentError(absl::StrCat("weight header: tensor '", info.name(),
                                                         "' has a bad shape"));
        }
        numel *= d;
      }
      const int64_t bytes = numel * static_cast<int64_t>(DTypeSize(*dtype));
      total += bytes;
      if (total > max_total_bytes_) {
        return absl::InvalidArgumentError(absl::StrCat(
            "weight header: tensors exceed the budget of ", max_total_bytes_, " bytes (max_weight_bytes) at '",
            info.name(), "' ", ShapeString(std::vector<int64_t>(info.shape().begin(), info.shape().end()))));
      }
      PolicyModel::WeightTensor t;
      t.name = info.name();
      t.shape.assign(info.shape().begin(), info.shape().end());
      set_.tensors.push_back(std::move(t));
      bytes_.push_back(bytes);
    }
    filled_.assign(set_.tensors.size(), 0);
    have_header_ = true;
    if (!chunk.data().empty()) {
      return absl::InvalidArgumentError("weight chunk 0: the header chunk carries data");
    }
    return absl::OkStatus();
  }
  if (!have_header_) {
    return absl::InvalidArgumentError(absl::StrCat("weight chunk ", n, ": data before the header"));
  }
  const int32_t index = chunk.tensor_index();
  if (index < 0 || index >= static_cast<int32_t>(set_.tensors.size())) {
    return absl::InvalidArgumentError(absl::StrCat("weight chunk ", n, ": tensor_index ", index,
                                                   " outside [0, ", set_.tensors.size(), ")"));
  }
  auto& t = set_.tensors[index];
  const int64_t size = bytes_[index];
  const int64_t len = static_cast<int64_t>(chunk.data().size());
  if (chunk.offset() != filled_[index] || chunk.offset() + len > size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight chunk ", n, ": tensor '", t.name, "' bytes [", chunk.offset(), ", ",
        chunk.offset() + len, ") do not continue at byte ", filled_[index], " of ", size));
  }
  // The tensor's memory once its bytes start to arrive.
  if (t.data.size() != static_cast<size_t>(size)) t.data.resize(static_cast<size_t>(size));
  std::copy(chunk.data().begin(), chunk.data().end(), t.data.begin() + chunk.offset());
  filled_[index] += len;
  return absl::OkStatus();
}

absl::StatusOr<WeightSet> WeightAssembler::Finish() {
  if (!have_header_) return absl::InvalidArgumentError("weight stream: no header");
  uint32_t crc = 0;
  for (size_t i = 0; i < set_.tensors.size(); ++i) {
    const auto& t = set_.tensors[i];
    if (filled_[i] != bytes_[i]) {
      return absl::InvalidArgumentError(absl::StrCat("weight stream: tensor '", t.name, "' has ",
                                                     filled_[i], " of ", bytes_[i], " bytes"));
    }
    crc = Crc32cExtend(crc, t.data.data(), t.data.size());
  }
  if (crc != crc32c_) {
    return absl::DataLossError(absl::StrCat("weight stream: CRC-32C ", crc,
                                            " does not match the header's ", crc32c_));
  }
  return std::move(set_);
}

}  // namespace lightrl
