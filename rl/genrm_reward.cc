#include "rl/genrm_reward.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "inference_engine/engine.h"
#include "inference_engine/sampling_params.h"
#include "policy/checkpoint_files.h"
#include "policy/model_config.h"
#include "policy/policy_model.h"
#include "policy/tokenizer.h"

namespace lightrl {
namespace {

absl::Status Invalid(absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("genrm: ", message));
}

// Walks a template: literal text to `literal`, each placeholder's name to `placeholder`.
absl::Status WalkTemplate(absl::string_view t,
                          const std::function<void(absl::string_view)>& literal,
                          const std::function<absl::Status(absl::string_view)>& placeholder) {
  size_t i = 0;
  while (i < t.size()) {
    const char c = t[i];
    if ((c == '{' || c == '}') && i + 1 < t.size() && t[i + 1] == c) {
      literal(t.substr(i, 1));
      i += 2;
      continue;
    }
    if (c == '}') {
      return Invalid(absl::StrCat("template: a lone \"}\" at byte ", i, " (write \"}}\" for a brace)"));
    }
    if (c != '{') {
      const size_t next = t.find_first_of("{}", i);
      const size_t end = next == absl::string_view::npos ? t.size() : next;
      literal(t.substr(i, end - i));
      i = end;
      continue;
    }
    const size_t close = t.find('}', i);
    if (close == absl::string_view::npos) {
      return Invalid(absl::StrCat("template: a \"{\" at byte ", i,
                                  " is not closed (write \"{{\" for a brace)"));
    }
    RETURN_IF_ERROR(placeholder(t.substr(i + 1, close - i - 1)));
    i = close + 1;
  }
  return absl::OkStatus();
}

const std::string* Field(absl::string_view name, const RewardInput& input) {
  if (name == "prompt") return &input.prompt;
  if (name == "response") return &input.response;
  if (name == "reference") return &input.ground_truth;
  return nullptr;
}

absl::Status UnknownPlaceholder(absl::string_view name) {
  return Invalid(absl::StrCat("template: unknown placeholder {", name.substr(0, 64),
                              "}; use {prompt}, {response} and {reference} ({{ and }} for braces)"));
}

uint64_t Fnv1a(absl::string_view text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

bool IsWordByte(unsigned char c) { return std::isalnum(c) != 0 || c == '_'; }

// The first position of `word` in `text` (both lower-case) standing as a whole word.
size_t FindWord(absl::string_view text, absl::string_view word) {
  if (word.empty()) return absl::string_view::npos;
  for (size_t at = text.find(word); at != absl::string_view::npos; at = text.find(word, at + 1)) {
    const bool starts = at == 0 || !IsWordByte(static_cast<unsigned char>(text[at - 1]));
    const size_t end = at + word.size();
    const bool ends = end == text.size() || !IsWordByte(static_cast<unsigned char>(text[end]));
    if (starts && ends) return at;
  }
  return absl::string_view::npos;
}

// `text` cut to at most `limit` bytes on a UTF-8 character boundary.
absl::string_view CutUtf8(absl::string_view text, size_t limit) {
  if (text.size() <= limit) return text;
  size_t end = limit;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  return text.substr(0, end);
}

class GenrmRewardFunction final : public RewardFunction {
 public:
  static absl::StatusOr<std::unique_ptr<GenrmRewardFunction>> Load(const GenrmOptions& options) {
    auto f = std::unique_ptr<GenrmRewardFunction>(new GenrmRewardFunction(options));
    const std::string& dir = options.model;
    auto where = [&dir](const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat("genrm: model ", dir, ": ", s.message()));
    };
    PolicyOptions popts;
    popts.device = options.device;
    popts.dtype = options.dtype;
    absl::StatusOr<Tokenizer> tokenizer = Tokenizer::FromFile(dir);
    if (!tokenizer.ok()) return where(tokenizer.status());
    f->tokenizer_.emplace(*std::move(tokenizer));
    absl::StatusOr<std::unique_ptr<PolicyModel>> policy = PolicyModel::Load(dir, popts);
    if (!policy.ok()) return where(policy.status());
    f->policy_ = *std::move(policy);
    absl::StatusOr<std::optional<GenerationConfigFile>> generation = ReadGenerationConfig(dir);
    if (!generation.ok()) return where(generation.status());
    if (generation->has_value() && !(*generation)->eos_token_ids.empty()) {
      f->stop_ids_ = (*generation)->eos_token_ids;
    } else {
      f->stop_ids_ = DefaultEndTokenIds(f->policy_->config(), &*f->tokenizer_);
    }
    EngineOptions eopts;
    eopts.max_num_seqs = options.max_batch * options.votes;
    eopts.kv_cache_bytes = options.kv_cache_mb << 20;
    absl::StatusOr<std::unique_ptr<Engine>> engine =
        Engine::Create(f->policy_.get(), eopts, &*f->tokenizer_);
    if (!engine.ok()) return where(engine.status());
    f->engine_ = *std::move(engine);
    f->batcher_ = std::thread([raw = f.get()] { raw->RunBatcher(); });
    return f;
  }

  ~GenrmRewardFunction() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    changed_.notify_all();
    if (batcher_.joinable()) batcher_.join();
  }

  std::string Kind() const override { return "genrm"; }

  absl::StatusOr<RewardResult> Score(const RewardInput& input) override {
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(options_.timeout_s));
    ASSIGN_OR_RETURN(std::string text, FillGenrmTemplate(options_.prompt_template, input));
    auto pending = std::make_shared<Pending>();
    GenerationRequest& request = pending->request;
    request.id = "judge";
    ASSIGN_OR_RETURN(request.prompt, tokenizer_->Encode(text, /*parse_special=*/false));
    if (static_cast<int64_t>(request.prompt.size()) > options_.max_prompt_tokens) {
      return Invalid(absl::StrCat("the judge prompt is ", request.prompt.size(),
                                  " tokens, more than max_prompt_tokens (",
                                  options_.max_prompt_tokens, ")"));
    }
    SamplingParams& p = request.params;
    p.temperature = options_.temperature;
    p.top_p = options_.top_p;
    p.top_k = options_.top_k;
    p.max_new_tokens = options_.max_new_tokens;
    p.n = options_.votes;
    p.seed = static_cast<uint64_t>(options_.seed) ^ Fnv1a(text);
    p.stop_token_ids = stop_ids_;
    p.early_stop_window = 0;
    auto cancelled = std::make_shared<std::atomic<bool>>(false);
    request.cancelled = cancelled;
    std::unique_lock<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("genrm: the judge is shutting down");
    queue_.push_back(pending);
    changed_.notify_all();
    const bool in_time = changed_.wait_until(lock, deadline, [&] { return pending->done; });
    if (!in_time) {
      // The engine drops it at its next step (or at once, if still queued).
      cancelled->store(true);
      changed_.wait(lock, [&] { return pending->done; });
      return absl::DeadlineExceededError(absl::StrCat(
          "genrm: judging took longer than timeout_s (", options_.timeout_s, " s)"));
    }
    lock.unlock();
    if (!pending->result.status.ok()) {
      return absl::Status(pending->result.status.code(),
                          absl::StrCat("genrm: the judge failed: ", pending->result.status.message()));
    }
    return Verdict(pending->result);
  }

 private:
  struct Pending {
    GenerationRequest request;
    bool done = false;  // under mu_
    GenerationResult result;
  };

  explicit GenrmRewardFunction(const GenrmOptions& options) : options_(options) {}

  RewardResult Verdict(const GenerationResult& result) const {
    double sum = 0;
    int64_t parsed = 0;
    std::string note;
    for (size_t k = 0; k < result.samples.size(); ++k) {
      std::vector<int32_t> known;
      for (int32_t id : result.samples[k].tokens) {
        if (id >= 0 && id < tokenizer_->vocab_size()) known.push_back(id);
      }
      absl::StatusOr<std::string> text = tokenizer_->Decode(known, /*skip_special=*/true);
      const std::string vote_text = text.ok() ? *std::move(text) : std::string();
      const std::optional<double> vote = ParseGenrmVote(vote_text, options_);
      sum += vote.value_or(options_.unparsed_score);
      parsed += vote.has_value() ? 1 : 0;
      if (k > 0) note += "\n---\n";
      note += vote_text;
    }
    const double n = static_cast<double>(std::max<size_t>(result.samples.size(), 1));
    RewardResult r;
    r.score = sum / n;
    r.components = {{"judge", r.score}, {"parsed_votes", static_cast<double>(parsed) / n}};
    r.note = std::string(CutUtf8(note, kMaxGenrmNoteBytes));
    return r;
  }

  void RunBatcher() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) break;
      std::vector<std::shared_ptr<Pending>> batch;
      while (!queue_.empty() && static_cast<int64_t>(batch.size()) < options_.max_batch) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      std::vector<GenerationRequest> requests;
      for (const auto& p : batch) requests.push_back(p->request);
      lock.unlock();
      // Items that came while this batch runs form the next one.
      std::vector<GenerationResult> results = engine_->Generate(requests);
      lock.lock();
      for (size_t i = 0; i < batch.size(); ++i) {
        if (i < results.size()) {
          batch[i]->result = std::move(results[i]);
        } else {
          batch[i]->result.status = absl::InternalError("the engine returned too few results");
        }
        batch[i]->done = true;
      }
      changed_.notify_all();
    }
    for (const auto& p : queue_) {
      p->result.status = absl::UnavailableError("the judge is shutting down");
      p->done = true;
    }
    queue_.clear();
    changed_.notify_all();
  }

  const GenrmOptions options_;
  std::optional<Tokenizer> tokenizer_;
  std::unique_ptr<PolicyModel> policy_;
  std::unique_ptr<Engine> engine_;  // after policy_: destroyed before it
  std::vector<int64_t> stop_ids_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::deque<std::shared_ptr<Pending>> queue_;
  bool stopping_ = false;
  std::thread batcher_;  // last: joined in the destructor before the members go
};

}  // namespace

absl::Status GenrmOptions::Validate() const {
  if (model.empty()) {
    return Invalid("model is required: a checkpoint folder (config.json, safetensors, tokenizer.json)");
  }
  RETURN_IF_ERROR(CheckGenrmTemplate(prompt_template));
  if (parse != "verdict" && parse != "score") {
    return Invalid(absl::StrCat("parse must be \"verdict\" or \"score\", got \"", parse, "\""));
  }
  if (parse == "verdict") {
    if (positive.empty() || negative.empty() || absl::AsciiStrToLower(positive) == absl::AsciiStrToLower(negative)) {
      return Invalid(absl::StrCat("positive and negative must be two different non-empty words, got \"",
                                  positive, "\" and \"", negative, "\""));
    }
  }
  if (!(max_score > 0) || !std::isfinite(max_score)) {
    return Invalid(absl::StrCat("max_score must be a finite number > 0, got ", max_score));
  }
  if (!(unparsed_score >= 0 && unparsed_score <= 1)) {
    return Invalid(absl::StrCat("unparsed_score must be in [0, 1], got ", unparsed_score));
  }
  if (votes < 1 || votes > 64) return Invalid(absl::StrCat("votes must be in [1, 64], got ", votes));
  if (votes > 1 && temperature == 0) {
    return Invalid(absl::StrCat("votes ", votes, " need temperature > 0: greedy votes are all the same"));
  }
  if (max_new_tokens < 1) {
    return Invalid(absl::StrCat("max_new_tokens must be >= 1, got ", max_new_tokens));
  }
  if (max_prompt_tokens < 1) {
    return Invalid(absl::StrCat("max_prompt_tokens must be >= 1, got ", max_prompt_tokens));
  }
  if (!(timeout_s > 0) || !std::isfinite(timeout_s)) {
    return Invalid(absl::StrCat("timeout_s must be > 0, got ", timeout_s));
  }
  if (max_batch < 1 || max_batch > kMaxGenrmBatch) {
    return Invalid(absl::StrCat("max_batch must be in [1, ", kMaxGenrmBatch, "], got ", max_batch));
  }
  if (kv_cache_mb < 1) return Invalid(absl::StrCat("kv_cache_mb must be >= 1, got ", kv_cache_mb));
  SamplingParams p;
  p.temperature = temperature;
  p.top_p = top_p;
  p.top_k = top_k;
  p.max_new_tokens = max_new_tokens;
  if (absl::Status s = p.Validate(); !s.ok()) return Invalid(s.message());
  PolicyOptions popts;
  popts.device = device;
  popts.dtype = dtype;
  if (absl::Status s = popts.Validate(); !s.ok()) return Invalid(s.message());
  return absl::OkStatus();
}

absl::Status CheckGenrmTemplate(absl::string_view prompt_template) {
  bool has_response = false;
  RETURN_IF_ERROR(WalkTemplate(
      prompt_template, [](absl::string_view) {},
      [&](absl::string_view name) {
        if (Field(name, RewardInput()) == nullptr) return UnknownPlaceholder(name);
        if (name == "response") has_response = true;
        return absl::OkStatus();
      }));
  if (!has_response) return Invalid("template must contain {response}");
  return absl::OkStatus();
}

absl::StatusOr<std::string> FillGenrmTemplate(absl::string_view prompt_template,
                                              const RewardInput& input) {
  std::string out;
  RETURN_IF_ERROR(WalkTemplate(
      prompt_template, [&](absl::string_view text) { out.append(text.data(), text.size()); },
      [&](absl::string_view name) {
        const std::string* value = Field(name, input);
        if (value == nullptr) return UnknownPlaceholder(name);
        out += *value;
        return absl::OkStatus();
      }));
  return out;
}

std::optional<double> ParseGenrmVote(absl::string_view text, const GenrmOptions& options) {
  const std::string lower = absl::AsciiStrToLower(CutUtf8(text, kMaxGenrmParseBytes));
  if (options.parse == "verdict") {
    const size_t yes = FindWord(lower, absl::AsciiStrToLower(options.positive));
    const size_t no = FindWord(lower, absl::AsciiStrToLower(options.negative));
    if (yes == absl::string_view::npos && no == absl::string_view::npos) return std::nullopt;
    return yes < no ? 1.0 : 0.0;
  }
  // The first number: digits with an optional fraction, at most 32 bytes of it.
  const size_t start = lower.find_first_of("0123456789");
  if (start == std::string::npos) return std::nullopt;
  if (start > 0 && lower[start - 1] == '-') return std::nullopt;
  size_t end = start;
  while (end < lower.size() && std::isdigit(static_cast<unsigned char>(lower[end]))) ++end;
  if (end + 1 < lower.size() && lower[end] == '.' &&
      std::isdigit(static_cast<unsigned char>(lower[end + 1]))) {
    ++end;
    while (end < lower.size() && std::isdigit(static_cast<unsigned char>(lower[end]))) ++end;
  }
  if (end - start > 32) return std::nullopt;
  double value = 0;
  if (!absl::SimpleAtod(absl::string_view(lower).substr(start, end - start), &value)) {
    return std::nullopt;
  }
  if (!(value >= 0 && value <= options.max_score)) return std::nullopt;
  return value / options.max_score;
}

RewardKind GenrmRewardKind() {
  using O = GenrmOptions;
  RewardKind kind = DefineRewardKind<O>(
      "genrm", "a judge model run by the engine scores the response (generative reward model)",
      {OptionField("model", &O::model, "the judge's checkpoint folder (required)"),
       OptionField("template", &O::prompt_template,
                   "the judge's prompt with {prompt}, {response}, {reference}"),
       OptionField("parse", &O::parse, "\"verdict\" (positive/negative word) or \"score\""),
       OptionField("positive", &O::positive, "verdict word scoring 1"),
       OptionField("negative", &O::negative, "verdict word scoring 0"),
       OptionField("max_score", &O::max_score, "parse score: the top of the judge's scale"),
       OptionField("unparsed_score", &O::unparsed_score, "a vote with no verdict scores this"),
       OptionField("votes", &O::votes, "judgements per item, averaged"),
       OptionField("temperature", &O::temperature, "0 = greedy"),
       OptionField("top_p", &O::top_p, "nucleus mass of sampled votes"),
       OptionField("top_k", &O::top_k, "top-k of sampled votes; 0 = off"),
       OptionField("seed", &O::seed, "seed of sampled votes"),
       OptionField("max_new_tokens", &O::max_new_tokens, "tokens the judge writes per vote"),
       OptionField("max_prompt_tokens", &O::max_prompt_tokens, "tokens of one judge prompt at most"),
       OptionField("timeout_s", &O::timeout_s, "seconds per item, queueing included"),
       OptionField("max_batch", &O::max_batch, "items per engine batch"),
       OptionField("device", &O::device, "cpu or cuda[:N]"),
       OptionField("dtype", &O::dtype, "float32, bfloat16 or float16"),
       OptionField("kv_cache_mb", &O::kv_cache_mb, "MiB for the judge's KV pages")},
      [](const O& options) -> absl::StatusOr<RewardFunctionPtr> {
        ASSIGN_OR_RETURN(std::unique_ptr<GenrmRewardFunction> f, GenrmRewardFunction::Load(options));
        return RewardFunctionPtr(std::move(f));
      });
  kind.parallel_items = kMaxGenrmBatch;
  return kind;
}

void RegisterGenrmRewardKind() { AddRewardKind(GenrmRewardKind()); }

}  // namespace lightrl
