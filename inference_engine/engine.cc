#include "inference_engine/engine.h"

#include <algorithm>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "inference_engine/model_runner.h"
#include "inference_engine/scheduler.h"
#include "inference_engine/step_runner.h"
#include "policy/expert_parallel.h"
#include "policy/minimax_model.h"
#include "policy/vocab_parallel.h"

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

// One Generate call's requests and what becomes of them: results, failures (bad input,
// failed rows, cancellation, no room), the samples in flight and the progress reported.
struct Generation {
  explicit Generation(const std::vector<GenerationRequest>& requests)
      : requests(requests), results(requests.size()), samples_left(requests.size(), 0),
        failed(requests.size(), 0) {
    progress.requests_total = static_cast<int64_t>(requests.size());
  }
  // The first failure of a request is its result; its sequences leave at the end of the step.
  void Fail(size_t request, absl::Status status) {
    if (failed[request]) return;
    failed[request] = 1;
    results[request].status = std::move(status);
    results[request].samples.clear();
    ++progress.requests_done;
  }
  void FailWithId(size_t request, const absl::Status& status) {
    Fail(request, absl::Status(status.code(), absl::StrCat("request \"", requests[request].id,
                                                           "\": ", status.message())));
  }
  // A sequence that left the running batch: its sample is done unless its request failed.
  void Complete(SeqId id, const SeqInfo& info) {
    auto it = samples.find(id);
    if (!failed[info.group]) {
      GeneratedSample& out = results[info.group].samples[info.sample];
      SampleState& s = it->second;
      out.tokens.assign(s.tokens.begin() + s.prompt_len, s.tokens.end());
      out.logprobs = std::move(s.logprobs);
      out.finish_reason = s.reason;
      if (--samples_left[info.group] == 0) ++progress.requests_done;
    }
    samples.erase(it);
  }
  // Which requests' cancelled flags are raised, as seen here.
  std::vector<char> CancelledFlags() const {
    std::vector<char> flags(requests.size(), 0);
    for (size_t i = 0; i < requests.size(); ++i) {
      flags[i] = requests[i].cancelled != nullptr && requests[i].cancelled->load();
    }
    return flags;
  }
  // Ends the requests whose `cancelled` flag is set.
  void CheckCancelled(const std::vector<char>& cancelled) {
    for (size_t i = 0; i < requests.size(); ++i) {
      if (!failed[i] && cancelled[i]) {
        Fail(i, absl::CancelledError(absl::StrCat("request \"", requests[i].id, "\" was cancelled")));
      }
    }
  }

  const std::vector<GenerationRequest>& requests;
  std::vector<GenerationResult> results;
  std::vector<int64_t> samples_left;
  std::vector<char> failed;
  std::unordered_map<SeqId, SampleState> samples;
  EngineProgress progress;
};

// The policy's shard and the instance's comms must describe the same split; the kernel
// path does not run sharded yet.
absl::Status CheckParallel(const ShardCoords& shard, const EngineParallel& parallel,
                           bool kernel_path) {
  ExpertParallelComm* ep = parallel.expert_parallel;
  if ((shard.expert_tp > 1 && shard.tp > 1) ||
      (shard.ep > 1 && shard.tp > 1 && shard.ep % shard.tp != 0)) {
    return absl::UnimplementedError(absl::StrCat(
        "engine: the policy is the shard ", shard.ToString(), "; the engine shards attention "
        "and the vocabulary over TP and the experts over EP, the EP group made of whole TP "
        "groups when both (ep a multiple of tp: over the same ranks, or attention "
        "data-parallel over ep / tp TP groups), and the experts over EP x expert-TP without "
        "TP"));
  }
  const bool experts_match =
      ep == nullptr ? shard.ep * shard.expert_tp == 1
                    : ep->ep_size() == shard.ep && ep->expert_tp_size() == shard.expert_tp &&
                          ep->world_size() == ep->ep_size() * ep->expert_tp_size() &&
                          ep->ep_rank() == shard.ep_rank &&
                          ep->expert_tp_rank() == shard.expert_tp_rank;
  if (!experts_match) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine: the policy holds the experts of ", shard.ToString(),
        ", but EngineParallel.expert_parallel is ",
        ep != nullptr ? absl::StrCat("EP rank ", ep->ep_rank(), " of ", ep->ep_size(),
                                     ", expert-TP rank ", ep->expert_tp_rank(), " of ",
                                     ep->expert_tp_size(), " in ", ep->world_size(), " ranks")
                      : std::string("not set")));
  }
  if (shard.ep * shard.expert_tp > 1 && kernel_path) {
    return absl::UnimplementedError(absl::StrCat(
        "engine: the CUDA kernel path (bf16 weights on CUDA) does not run a policy with its "
        "experts sharded (", shard.ToString(), ") yet; the torch path does (FP32 weights)"));
  }
  TensorParallelComm* tp = parallel.tensor_parallel;
  const int64_t group = tp != nullptr ? tp->tp_size() : 1;
  if (group != shard.tp) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine: the policy is TP shard ", shard.tp_rank, " of ", shard.tp,
        ", but EngineParallel.tensor_parallel is ",
        tp != nullptr ? absl::StrCat("a group of ", group) : std::string("not set")));
  }
  if (tp != nullptr && tp->tp_rank() != shard.tp_rank) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine: the policy is TP shard ", shard.tp_rank, " of ", shard.tp,
        ", but this rank is rank ", tp->tp_rank(), " of EngineParallel.tensor_parallel"));
  }
  if (shard.tp > 1 && kernel_path) {
    return absl::UnimplementedError(absl::StrCat(
        "engine: the CUDA kernel path (bf16 weights on CUDA) does not run a policy sharded "
        "over TP (tp ", shard.tp, ") yet; the torch path does (FP32 weights)"));
  }
  return absl::OkStatus();
}

// Per-index (lowest, highest) of `values` over an instance's ranks: a collective of its TP
// group, or of its EP group; `values` themselves without either.
std::pair<std::vector<int64_t>, std::vector<int64_t>> RangeOverInstance(
    TensorParallelComm* tp, ExpertParallelComm* ep, const std::vector<int64_t>& values) {
  std::vector<int64_t> lo = values, hi = values;
  if (tp != nullptr) {
    auto h = torch::tensor(std::vector<double>(values.begin(), values.end()), torch::kFloat64);
    auto neg_lo = -h;
    tp->AllReduce(h, TensorParallelComm::Op::kMax);
    tp->AllReduce(neg_lo, TensorParallelComm::Op::kMax);
    for (size_t i = 0; i < values.size(); ++i) {
      hi[i] = static_cast<int64_t>(h[i].item<double>());
      lo[i] = static_cast<int64_t>(-neg_lo[i].item<double>());
    }
  } else if (ep != nullptr) {
    const auto all = ep->AllGather(torch::tensor(values, torch::kInt64));  // [world, n]
    const auto low = std::get<0>(all.min(0)), high = std::get<0>(all.max(0));
    for (size_t i = 0; i < values.size(); ++i) {
      lo[i] = low[static_cast<int64_t>(i)].item<int64_t>();
      hi[i] = high[static_cast<int64_t>(i)].item<int64_t>();
    }
  }
  return {lo, hi};
}

// Every rank of an instance must size its pools and plan its steps alike, or their
// collectives stop lining up: the values are compared over its group (a collective).
absl::Status CheckAgreement(TensorParallelComm* tp, ExpertParallelComm* ep,
                            const std::vector<std::string>& names,
                            const std::vector<int64_t>& values) {
  const auto [lo, hi] = RangeOverInstance(tp, ep, values);
  for (size_t i = 0; i < values.size(); ++i) {
    if (hi[i] != lo[i]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "engine: ", names[i], " differs across the ", tp != nullptr ? "TP" : "EP",
          " group (from ", lo[i], " to ", hi[i], "; this rank ", values[i], "): every rank of "
          "an instance needs the same engine options"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

struct Engine::Impl {
  PolicyModel* policy = nullptr;
  const Tokenizer* tokenizer = nullptr;
  EngineOptions options;
  TensorParallelComm* tp = nullptr;  // the instance's TP group; null without TP
  ExpertParallelComm* ep = nullptr;  // the instance's EP group; null without EP
  int64_t max_model_len = 0;
  std::unique_ptr<ModelRunner> runner;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<StepRunner> step_runner;
  EngineStats stats;

  absl::Status CheckRequest(const GenerationRequest& r) const;
  // Records the plan's preemptions and fails the requests it found no room for.
  void Account(const StepPlan& plan, Generation& g);
  // The requests cancelled on any rank of the instance (a collective there), so that
  // every rank drops them at the same step.
  std::vector<char> Cancelled(const Generation& g);
  // Takes the finished sequences and those of failed requests out of the running batch, in
  // batch order, then cancelled requests and every sequence of a failed one.
  void Collect(Generation& g);
};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;
const EngineStats& Engine::stats() const { return impl_->stats; }

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(PolicyModel* policy,
                                                       const EngineOptions& options,
                                                       const Tokenizer* tokenizer,
                                                       const EngineParallel& parallel) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->policy = policy;
  impl->tokenizer = tokenizer;
  impl->options = options;
  const ModelConfig& c = policy->config();
  impl->max_model_len = options.max_model_len > 0 ? options.max_model_len : c.max_position_embeddings;
  auto& module = policy->module();
  const auto dtype = module->lm_head->weight.scalar_type();
  const ShardCoords& shard = module->shard();
  RETURN_IF_ERROR(CheckParallel(shard, parallel,
                                ModelRunner::KernelPath(module->lm_head->weight.device(), dtype,
                                                        c.head_dim,
                                                        /*allow_cuda_kernels=*/!options.batch_invariant)));
  if (shard.tp > 1) impl->tp = parallel.tensor_parallel;
  if (shard.ep > 1) impl->ep = parallel.expert_parallel;
  const int64_t tp = shard.tp;
  const int64_t page_bytes =
      std::max<int64_t>(1, ModelRunner::PageBytes(c, options.page_size, dtype, tp));
  // Without softmax layers pages cost nothing; keep enough to address max_model_len.
  int64_t num_pages = ModelRunner::PageBytes(c, options.page_size, dtype, tp) == 0
                          ? (impl->max_model_len + options.page_size - 1) / options.page_size
                          : options.kv_cache_bytes / page_bytes;
  if (num_pages < 1) {
    return absl::InvalidArgumentError(absl::StrCat("kv_cache_bytes ", options.kv_cache_bytes,
                                                   " holds no KV page of ", page_bytes, " bytes"));
  }
  if (impl->tp != nullptr || impl->ep != nullptr) {
    try {
      RETURN_IF_ERROR(CheckAgreement(
          impl->tp, impl->ep, {"max_num_seqs", "max_prefill_tokens", "page_size", "the KV page count", "max_model_len"},
          {options.max_num_seqs, options.max_prefill_tokens, options.page_size, num_pages,
           impl->max_model_len}));
    } catch (const c10::Error& e) {
      return absl::UnavailableError(absl::StrCat("engine: comparing the options across the instance: ",
                                                 e.what_without_backtrace()));
    }
  }
  try {
    ModelRunnerOptions runner;
    runner.num_slots = options.max_num_seqs;
    runner.num_pages = num_pages;
    runner.page_size = options.page_size;
    runner.max_model_len = impl->max_model_len;
    runner.cuda_graphs = options.cuda_graphs;
    runner.prefill_stream = options.prefill_stream;
    runner.fuse_decode_epilogues = options.fuse_decode_epilogues;
    runner.batch_invariant = options.batch_invariant;
    runner.tensor_parallel = impl->tp;
    runner.expert_parallel = impl->ep;
    impl->runner = std::make_unique<ModelRunner>(module, runner);
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("allocating the engine's state and KV pools: ", e.what_without_backtrace()));
  }
  SchedulerOptions scheduling;
  scheduling.max_num_seqs = options.max_num_seqs;
  scheduling.max_prefill_tokens = options.max_prefill_tokens;
  scheduling.num_pages = num_pages;
  scheduling.page_size = options.page_size;
  impl->scheduler = std::make_unique<Scheduler>(scheduling);
  impl->step_runner = std::make_unique<StepRunner>(impl->runner.get(), tokenizer,
                                                   impl->max_model_len, &impl->stats);
  impl->stats.num_pages = num_pages;
  impl->stats.num_slots = options.max_num_seqs;
  impl->stats.slot_bytes = ModelRunner::SlotBytes(c, tp);
  impl->stats.page_bytes = ModelRunner::PageBytes(c, options.page_size, dtype, tp);
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
  if (scheduler->kv_cache().PagesFor(len + 1) * r.params.n > stats.num_pages) {
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

void Engine::Impl::Account(const StepPlan& plan, Generation& g) {
  stats.preemptions += static_cast<int64_t>(plan.preempted.size());
  g.progress.preemptions += static_cast<int64_t>(plan.preempted.size());
  for (const OutOfPages& o : plan.out_of_pages) {
    // Alone and still out of pages: the request cannot fit this engine.
    const auto request = static_cast<size_t>(o.group);
    g.Fail(request, absl::ResourceExhaustedError(absl::StrCat(
                        "request \"", g.requests[request].id, "\": ", o.num_tokens,
                        " tokens exceed the KV cache")));
    g.samples.erase(o.seq);
  }
}

std::vector<char> Engine::Impl::Cancelled(const Generation& g) {
  std::vector<char> flags = g.CancelledFlags();
  if ((tp == nullptr && ep == nullptr) || flags.empty()) return flags;
  const auto any = RangeOverInstance(tp, ep, std::vector<int64_t>(flags.begin(), flags.end())).second;
  for (size_t i = 0; i < flags.size(); ++i) flags[i] = any[i] > 0;
  return flags;
}

void Engine::Impl::Collect(Generation& g) {
  std::vector<SeqId> done;
  for (SeqId id : scheduler->running()) {
    if (g.samples.at(id).finished || g.failed[scheduler->sequence(id).group]) done.push_back(id);
  }
  for (SeqId id : done) {
    g.Complete(id, scheduler->sequence(id));
    scheduler->Finish(id);
  }
  g.CheckCancelled(Cancelled(g));
  for (SeqId id : scheduler->Drop([&](int64_t group) { return g.failed[group] != 0; })) {
    g.samples.erase(id);
  }
}

std::vector<GenerationResult> Engine::Generate(
    const std::vector<GenerationRequest>& requests,
    const std::function<void(const EngineProgress&)>& on_progress) {
  Impl& m = *impl_;
  Generation g(requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    g.results[i].id = requests[i].id;
    g.results[i].status = m.CheckRequest(requests[i]);
    if (!g.results[i].status.ok()) {
      g.failed[i] = 1;
      ++g.progress.requests_done;
      continue;
    }
    g.results[i].samples.resize(requests[i].params.n);
    g.samples_left[i] = requests[i].params.n;
    m.scheduler->AddGroup(static_cast<int64_t>(i), requests[i].params.n,
                          static_cast<int64_t>(requests[i].prompt.size()));
  }
  auto report = [&](int64_t active_seqs) {
    if (!on_progress) return;
    g.progress.tokens_generated = m.stats.generated_tokens;
    g.progress.active_seqs = active_seqs;
    on_progress(g.progress);
  };
  try {
    m.Collect(g);
    // One step: the scheduler's plan (room for the running batch, preempting when pages run
    // out; admission into what is left), the step runner's decode of the running batch and
    // prefill of the admitted (overlapped on CUDA), sampling and stop checks, then the
    // finished, failed and cancelled leave.
    // Under attention data parallelism (ModelRunner::lockstep) the runners of the instance's
    // other TP groups step with this one: every step they agree on which forwards run, one
    // without tokens of its own runs them idle, and all stop when none has work.
    const bool lockstep = m.runner->lockstep();
    while (true) {
      const bool mine = m.scheduler->has_work();
      StepPlan plan;
      if (mine) {
        plan = m.scheduler->Schedule();
        m.Account(plan, g);
      }
      StepForwards forwards{!plan.decode.empty(), !plan.admit.empty()};
      if (lockstep) {
        const std::vector<int64_t> any =
            m.runner->AnyRank({mine ? 1 : 0, forwards.decode ? 1 : 0, forwards.prefill ? 1 : 0});
        if (any[0] == 0) break;
        forwards = {any[1] != 0, any[2] != 0};
      } else if (!mine) {
        break;
      }
      for (const RowError& e :
           m.step_runner->Run(plan, requests, *m.scheduler, g.samples, forwards)) {
        g.FailWithId(static_cast<size_t>(e.group), e.status);
      }
      m.Collect(g);
      report(static_cast<int64_t>(m.scheduler->running().size()));
    }
  } catch (const c10::Error& e) {
    for (size_t i = 0; i < g.results.size(); ++i) {
      if (g.samples_left[i] > 0 && g.results[i].status.ok()) {
        g.results[i].status = absl::InternalError(
            absl::StrCat("engine step failed: ", e.what_without_backtrace()));
        g.results[i].samples.clear();
      }
    }
  }
  // After a failed step, what was in flight gives its slots and pages back.
  m.scheduler->Clear();
  report(0);
  return std::move(g.results);
}

}  // namespace lightrl
