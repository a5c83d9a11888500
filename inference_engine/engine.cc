#include "inference_engine/engine.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "inference_engine/kv_cache.h"
#include "inference_engine/model_runner.h"
#include "inference_engine/sampler.h"
#include "policy/minimax_model.h"

namespace lightrl {

absl::Status EngineOptions::Validate() const {
  if (max_num_seqs < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_num_seqs must be >= 1, got ", max_num_seqs));
  }
  if (max_prefill_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_prefill_tokens must be >= 1, got ", max_prefill_tokens));
  }
  if (page_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("page_size must be >= 1, got ", page_size));
  }
  if (kv_cache_bytes < 0 || max_model_len < 0) {
    return absl::InvalidArgumentError("kv_cache_bytes and max_model_len must be >= 0");
  }
  return absl::OkStatus();
}

namespace {

// One sample being generated.
struct Sequence {
  size_t request = 0;
  int64_t sample = 0;
  std::vector<int32_t> tokens;  // prompt followed by what was generated
  int64_t prompt_len = 0;
  std::vector<float> logprobs;
  int64_t slot = -1;
  PageTable pages;
  std::mt19937_64 rng;
  int64_t confident_run = 0;
  bool finished = false;
  FinishReason reason = FinishReason::kLength;
  int64_t generated() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
};

// Waiting work: a fresh prompt group (prefilled once, forked into n samples) or one
// preempted sample to re-prefill from its tokens so far.
struct Pending {
  size_t request = 0;
  std::unique_ptr<Sequence> resumed;
};

uint64_t MixSeed(uint64_t seed, uint64_t sample) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (sample + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Samples every row. A batch the sampler throws on is sampled again row by row (a row's
// sample does not depend on its batch), so an error stays with its row. A row also fails
// when its logprob is not finite: the model gave NaN or infinite logits for that sequence.
std::vector<absl::Status> SampleRows(const torch::Tensor& logits,
                                     const std::vector<SamplerRow>& rows, SampledTokens* out) {
  std::vector<absl::Status> status(rows.size());
  try {
    *out = SampleTokens(logits, rows);
  } catch (const c10::Error&) {
    out->tokens.assign(rows.size(), 0);
    out->logprobs.assign(rows.size(), 0.0f);
    for (size_t r = 0; r < rows.size(); ++r) {
      try {
        SampledTokens one = SampleTokens(logits.narrow(0, static_cast<int64_t>(r), 1), {rows[r]});
        out->tokens[r] = one.tokens[0];
        out->logprobs[r] = one.logprobs[0];
      } catch (const c10::Error& e) {
        status[r] = absl::InternalError(absl::StrCat("sampling failed: ", e.what_without_backtrace()));
      }
    }
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    if (status[r].ok() && !std::isfinite(out->logprobs[r])) {
      status[r] = absl::InternalError(absl::StrCat("the model gave non-finite logits (token ",
                                                   out->tokens[r], " sampled with logprob ",
                                                   out->logprobs[r], ")"));
    }
  }
  return status;
}

}  // namespace

struct Engine::Impl {
  PolicyModel* policy = nullptr;
  const Tokenizer* tokenizer = nullptr;
  EngineOptions options;
  int64_t max_model_len = 0;
  std::unique_ptr<ModelRunner> runner;
  std::unique_ptr<PagedKvCache> kv;
  std::unique_ptr<IndexPool> slots;
  EngineStats stats;

  absl::Status CheckRequest(const GenerationRequest& r) const;
  bool Finish(Sequence& s, const SamplingParams& p) const;
};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;
const EngineStats& Engine::stats() const { return impl_->stats; }

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(PolicyModel* policy,
                                                       const EngineOptions& options,
                                                       const Tokenizer* tokenizer) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->policy = policy;
  impl->tokenizer = tokenizer;
  impl->options = options;
  const ModelConfig& c = policy->config();
  impl->max_model_len = options.max_model_len > 0 ? options.max_model_len : c.max_position_embeddings;
  auto& module = policy->module();
  const auto dtype = module->lm_head->weight.scalar_type();
  const int64_t page_bytes = std::max<int64_t>(1, ModelRunner::PageBytes(c, options.page_size, dtype));
  // Without softmax layers pages cost nothing; keep enough to address max_model_len.
  int64_t num_pages = ModelRunner::PageBytes(c, options.page_size, dtype) == 0
                          ? (impl->max_model_len + options.page_size - 1) / options.page_size
                          : options.kv_cache_bytes / page_bytes;
  if (num_pages < 1) {
    return absl::InvalidArgumentError(absl::StrCat("kv_cache_bytes ", options.kv_cache_bytes,
                                                   " holds no KV page of ", page_bytes, " bytes"));
  }
  try {
    ModelRunnerOptions runner;
    runner.num_slots = options.max_num_seqs;
    runner.num_pages = num_pages;
    runner.page_size = options.page_size;
    runner.max_model_len = impl->max_model_len;
    runner.cuda_graphs = options.cuda_graphs;
    runner.prefill_stream = options.prefill_stream;
    impl->runner = std::make_unique<ModelRunner>(module, runner);
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("allocating the engine's state and KV pools: ", e.what_without_backtrace()));
  }
  impl->kv = std::make_unique<PagedKvCache>(num_pages, options.page_size);
  impl->slots = std::make_unique<IndexPool>(options.max_num_seqs);
  impl->stats.num_pages = num_pages;
  impl->stats.num_slots = options.max_num_seqs;
  impl->stats.slot_bytes = ModelRunner::SlotBytes(c);
  impl->stats.page_bytes = ModelRunner::PageBytes(c, options.page_size, dtype);
  impl->stats.page_size = options.page_size;
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

absl::Status Engine::Impl::CheckRequest(const GenerationRequest& r) const {
  const std::string who = absl::StrCat("request \"", r.id, "\"");
  if (auto st = r.params.Validate(); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": ", st.message()));
  }
  if (r.prompt.empty()) return absl::InvalidArgumentError(absl::StrCat(who, ": prompt is empty"));
  RETURN_IF_ERROR(CheckTokenIds(r.prompt, policy->config().vocab_size, absl::StrCat(who, ": prompt")));
  const int64_t len = static_cast<int64_t>(r.prompt.size());
  if (len + 1 > max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": prompt of ", len,
                                                   " tokens leaves no room under max_model_len ",
                                                   max_model_len));
  }
  if (r.params.n > options.max_num_seqs) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": n = ", r.params.n,
                                                   " exceeds max_num_seqs ", options.max_num_seqs));
  }
  if (kv->PagesFor(len + 1) * r.params.n > stats.num_pages) {
    return absl::ResourceExhaustedError(
        absl::StrCat(who, ": prompt of ", len, " tokens x n = ", r.params.n,
                     " needs more KV pages than the engine has (", stats.num_pages, ")"));
  }
  for (int64_t id : r.params.stop_token_ids) {
    if (id < 0 || id >= policy->config().vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": stop token id ", id,
                                                     " is outside the vocabulary"));
    }
  }
  if (!r.params.stop_strings.empty() && tokenizer == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": stop_strings need a tokenizer"));
  }
  return absl::OkStatus();
}

// Decides whether the last appended token ends the sequence.
bool Engine::Impl::Finish(Sequence& s, const SamplingParams& p) const {
  const int32_t last = s.tokens.back();
  const double prob = std::exp(static_cast<double>(s.logprobs.back()));
  s.confident_run = prob > p.early_stop_prob ? s.confident_run + 1 : 0;
  if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), last) != p.stop_token_ids.end()) {
    s.reason = FinishReason::kStop;
    return true;
  }
  if (!p.stop_strings.empty() && tokenizer != nullptr) {
    // Only the tail can hold a stop string that was not there a token ago.
    const int64_t n = std::min<int64_t>(s.generated(), 64);
    std::vector<int32_t> tail(s.tokens.end() - n, s.tokens.end());
    auto text = tokenizer->Decode(tail);
    if (text.ok()) {
      for (const auto& stop : p.stop_strings) {
        if (text->find(stop) != std::string::npos) {
          s.reason = FinishReason::kStop;
          return true;
        }
      }
    }
  }
  if (p.early_stop_window > 0 && s.confident_run >= p.early_stop_window) {
    s.reason = FinishReason::kEarlyStop;
    return true;
  }
  if (s.generated() >= p.max_new_tokens ||
      static_cast<int64_t>(s.tokens.size()) >= max_model_len) {
    s.reason = FinishReason::kLength;
    return true;
  }
  return false;
}

std::vector<GenerationResult> Engine::Generate(
    const std::vector<GenerationRequest>& requests,
    const std::function<void(const EngineProgress&)>& on_progress) {
  Impl& m = *impl_;
  std::vector<GenerationResult> results(requests.size());
  std::vector<int64_t> samples_left(requests.size(), 0);
  // Failed or cancelled: the request's sequences leave at the end of the step.
  std::vector<char> failed(requests.size(), 0);
  std::deque<Pending> waiting;
  EngineProgress progress;
  progress.requests_total = static_cast<int64_t>(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    results[i].id = requests[i].id;
    results[i].status = m.CheckRequest(requests[i]);
    if (!results[i].status.ok()) {
      failed[i] = 1;
      ++progress.requests_done;
      continue;
    }
    results[i].samples.resize(requests[i].params.n);
    samples_left[i] = requests[i].params.n;
    waiting.push_back({i, nullptr});
  }
  std::vector<std::unique_ptr<Sequence>> active;

  auto release = [&](Sequence& s) {
    m.kv->Release(s.pages);
    if (s.slot >= 0) m.slots->Free(s.slot);
    s.slot = -1;
  };
  auto complete = [&](std::unique_ptr<Sequence> s) {
    release(*s);
    if (failed[s->request]) return;
    GeneratedSample& out = results[s->request].samples[s->sample];
    out.tokens.assign(s->tokens.begin() + s->prompt_len, s->tokens.end());
    out.logprobs = std::move(s->logprobs);
    out.finish_reason = s->reason;
    if (--samples_left[s->request] == 0) ++progress.requests_done;
  };
  auto fail_request = [&](size_t request, absl::Status status) {
    if (failed[request]) return;
    failed[request] = 1;
    results[request].status = std::move(status);
    results[request].samples.clear();
    ++progress.requests_done;
  };
  auto request_error = [&](size_t request, const absl::Status& status) {
    return absl::Status(status.code(),
                        absl::StrCat("request \"", requests[request].id, "\": ", status.message()));
  };
  // Ends cancelled requests and frees the slots and pages of every failed one.
  auto drop_failed = [&] {
    for (size_t i = 0; i < requests.size(); ++i) {
      if (!failed[i] && requests[i].cancelled != nullptr && requests[i].cancelled->load()) {
        fail_request(i, absl::CancelledError(
                            absl::StrCat("request \"", requests[i].id, "\" was cancelled")));
      }
    }
    for (auto& s : active) {
      if (failed[s->request]) {
        release(*s);
        s.reset();
      }
    }
    active.erase(std::remove(active.begin(), active.end(), nullptr), active.end());
    waiting.erase(std::remove_if(waiting.begin(), waiting.end(),
                                 [&](const Pending& w) { return failed[w.request] != 0; }),
                  waiting.end());
  };

  try {
    drop_failed();
    while (!waiting.empty() || !active.empty()) {
      // One step: room for the running batch (preempting when pages run out), admission
      // of waiting requests into what is left, the running batch's decode step, the new
      // sequences' prefill, then the sampling of both. The decode is queued first and the
      // prefill right after it, nothing in between; the CUDA backend runs the prefill on a
      // stream of its own (ModelRunner::Prefill), so the two overlap on the device. That is
      // safe because the new sequences hold slots and pages outside the decode batch, and
      // they join the running batch only at the next step, whose decode the caller's stream
      // runs after its wait on the prefill. The CPU backend runs the same calls in the same
      // order on one thread.
      bool preempted = false;
      // Each active sequence needs room for the token it is about to feed; when pages run
      // out, the youngest sequence is preempted and later resumed by re-prefill.
      for (size_t i = 0; i < active.size();) {
        Sequence& s = *active[i];
        if (m.kv->Reserve(s.pages, static_cast<int64_t>(s.tokens.size()))) {
          ++i;
          continue;
        }
        if (active.size() == 1) {
          // Alone and still out of pages: the request cannot fit this engine.
          fail_request(s.request, absl::ResourceExhaustedError(absl::StrCat(
                                      "request \"", requests[s.request].id, "\": ",
                                      s.tokens.size(), " tokens exceed the KV cache")));
          release(s);
          active.clear();
          break;
        }
        std::unique_ptr<Sequence> victim = std::move(active.back());
        active.pop_back();
        release(*victim);
        ++m.stats.preemptions;
        ++progress.preemptions;
        preempted = true;
        waiting.push_front({victim->request, std::move(victim)});
      }

      // Admit: fresh groups need n slots and pages for their prompt; resumed samples one.
      std::vector<std::unique_ptr<Sequence>> admitted;  // prefill leaders and resumed
      std::vector<std::vector<std::unique_ptr<Sequence>>> followers;
      int64_t prefill_tokens = 0;
      // Not in a step that had to preempt: the room it made is the running batch's.
      while (!preempted && !waiting.empty()) {
        Pending& w = waiting.front();
        const GenerationRequest& req = requests[w.request];
        const int64_t n = w.resumed ? 1 : req.params.n;
        const int64_t len = w.resumed ? static_cast<int64_t>(w.resumed->tokens.size()) - 1
                                      : static_cast<int64_t>(req.prompt.size());
        const int64_t in_flight = static_cast<int64_t>(active.size() + admitted.size()) +
                                  static_cast<int64_t>([&] {
                                    size_t f = 0;
                                    for (auto& g : followers) f += g.size();
                                    return f;
                                  }());
        if (in_flight + n > m.options.max_num_seqs || m.slots->num_free() < n) break;
        if (!admitted.empty() && prefill_tokens + len > m.options.max_prefill_tokens) break;
        if (m.kv->PagesFor(len + 1) * n > m.kv->num_free_pages()) break;
        std::vector<std::unique_ptr<Sequence>> group;
        if (w.resumed) {
          group.push_back(std::move(w.resumed));
        } else {
          for (int64_t k = 0; k < n; ++k) {
            auto s = std::make_unique<Sequence>();
            s->request = w.request;
            s->sample = k;
            s->tokens = req.prompt;
            s->prompt_len = len;
            s->rng.seed(MixSeed(req.params.seed, static_cast<uint64_t>(k)));
            group.push_back(std::move(s));
          }
        }
        for (auto& s : group) {
          s->slot = m.slots->Allocate();
          m.kv->Reserve(s->pages, len + 1);
        }
        prefill_tokens += len;
        admitted.push_back(std::move(group[0]));
        group.erase(group.begin());
        followers.push_back(std::move(group));
        waiting.pop_front();
      }

      std::vector<RunnerSequence> decode_batch;
      std::vector<SamplerRow> decode_rows;
      for (auto& s : active) {
        const int64_t pos = static_cast<int64_t>(s->tokens.size()) - 1;
        decode_batch.push_back({s->slot, &s->pages, {s->tokens.back()}, pos});
        const SamplingParams& p = requests[s->request].params;
        std::uniform_real_distribution<double> uni(0.0, 1.0);
        decode_rows.push_back({p.temperature, p.top_p, p.top_k, uni(s->rng)});
      }
      torch::Tensor decode_logits;
      // The step's prefill (below) runs beside this decode, after what came before it.
      if (!decode_batch.empty()) decode_logits = m.runner->Decode(decode_batch);
      if (!admitted.empty()) {
        std::vector<RunnerSequence> batch;
        for (auto& s : admitted) {
          const bool resumed = s->generated() > 0;
          std::vector<int32_t> input(s->tokens.begin(), s->tokens.end() - (resumed ? 1 : 0));
          batch.push_back({s->slot, &s->pages, std::move(input), 0});
        }
        auto logits = m.runner->Prefill(batch);
        m.stats.prefill_tokens += prefill_tokens;
        ++m.stats.prefill_steps;
        if (decode_logits.defined() && m.runner->uses_prefill_stream()) {
          ++m.stats.overlapped_prefill_steps;
        }
        // Fresh groups sample their first token from the prompt's logits; resumed samples
        // already hold theirs.
        std::vector<SamplerRow> rows;
        std::vector<Sequence*> targets;
        std::vector<int64_t> logit_rows;
        for (size_t g = 0; g < admitted.size(); ++g) {
          Sequence* lead = admitted[g].get();
          if (lead->generated() > 0) continue;
          const SamplingParams& p = requests[lead->request].params;
          for (auto& f : followers[g]) {
            m.runner->Fork(lead->slot, lead->pages, f->slot, f->pages, lead->prompt_len);
          }
          std::vector<Sequence*> members = {lead};
          for (auto& f : followers[g]) members.push_back(f.get());
          for (Sequence* s : members) {
            std::uniform_real_distribution<double> uni(0.0, 1.0);
            rows.push_back({p.temperature, p.top_p, p.top_k, uni(s->rng)});
            targets.push_back(s);
            logit_rows.push_back(static_cast<int64_t>(g));
          }
        }
        if (!rows.empty()) {
          auto idx = torch::tensor(logit_rows, torch::kInt64).to(logits.device());
          SampledTokens sampled;
          const auto row_status = SampleRows(logits.index_select(0, idx), rows, &sampled);
          for (size_t r = 0; r < targets.size(); ++r) {
            if (!row_status[r].ok()) {
              fail_request(targets[r]->request, request_error(targets[r]->request, row_status[r]));
              continue;
            }
            targets[r]->tokens.push_back(static_cast<int32_t>(sampled.tokens[r]));
            targets[r]->logprobs.push_back(sampled.logprobs[r]);
            m.stats.generated_tokens += 1;
            targets[r]->finished =
                m.Finish(*targets[r], requests[targets[r]->request].params);
          }
        }
      }

      if (decode_logits.defined()) {
        SampledTokens sampled;
        const auto row_status = SampleRows(decode_logits, decode_rows, &sampled);
        ++m.stats.decode_steps;
        for (size_t i = 0; i < active.size(); ++i) {
          Sequence& s = *active[i];
          if (!row_status[i].ok()) {
            fail_request(s.request, request_error(s.request, row_status[i]));
            continue;
          }
          s.tokens.push_back(static_cast<int32_t>(sampled.tokens[i]));
          s.logprobs.push_back(sampled.logprobs[i]);
          ++m.stats.generated_tokens;
          s.finished = m.Finish(s, requests[s.request].params);
        }
      }
      // The new sequences join the running batch for the next step.
      for (size_t g = 0; g < admitted.size(); ++g) {
        active.push_back(std::move(admitted[g]));
        for (auto& f : followers[g]) active.push_back(std::move(f));
      }
      for (auto& s : active) {
        if (s->finished || failed[s->request]) complete(std::move(s));
      }
      active.erase(std::remove(active.begin(), active.end(), nullptr), active.end());
      drop_failed();
      if (on_progress) {
        progress.tokens_generated = m.stats.generated_tokens;
        progress.active_seqs = static_cast<int64_t>(active.size());
        on_progress(progress);
      }
    }
  } catch (const c10::Error& e) {
    for (size_t i = 0; i < results.size(); ++i) {
      if (samples_left[i] > 0 && results[i].status.ok()) {
        results[i].status = absl::InternalError(
            absl::StrCat("engine step failed: ", e.what_without_backtrace()));
        results[i].samples.clear();
      }
    }
  }
  if (on_progress) {
    progress.tokens_generated = m.stats.generated_tokens;
    progress.active_seqs = 0;
    on_progress(progress);
  }
  return results;
}

}  // namespace lightrl
