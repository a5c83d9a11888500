#include "reward/reward_router.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <deque>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "reward/reward_client.h"
#include "reward/reward_registry.h"

namespace lightrl {
namespace {

// Items per remote Score call; the protocol's limit (reward.proto, kMaxScoreBatchItems in
// reward_service.h, which this torch- and gRPC-free file does not include).
constexpr size_t kMaxItemsPerCall = 4096;

// Smallest max_request_bytes: room for a few ordinary items per call.
constexpr int64_t kMinRequestBytes = int64_t{64} << 10;

// Protobuf framing of a length-delimited field at most: a tag byte and a 5-byte length.
constexpr int64_t kFieldOverhead = 6;

// An upper bound on the bytes item `input` adds to a ScoreRequest under an id of
// `id_bytes`: its four string fields and each metadata entry (a nested key and value),
// all framed, and the item's own framing.
int64_t ScoreItemWireBytes(const RewardInput& input, size_t id_bytes) {
  int64_t bytes = kFieldOverhead + 4 * kFieldOverhead;
  bytes += static_cast<int64_t>(id_bytes + input.prompt.size() + input.response.size() +
                                input.ground_truth.size());
  for (const auto& [key, value] : input.metadata) {
    bytes += 3 * kFieldOverhead + static_cast<int64_t>(key.size() + value.size());
  }
  return bytes;
}

// Errors that the same request will meet again, on any attempt.
bool IsPermanent(absl::StatusCode code) {
  return code == absl::StatusCode::kInvalidArgument ||
         code == absl::StatusCode::kUnauthenticated ||
         code == absl::StatusCode::kPermissionDenied ||
         code == absl::StatusCode::kUnimplemented;
}

std::string Describe(const RewardRouterEntry& entry) {
  if (!entry.address.empty()) return absl::StrCat("reward server ", entry.address);
  if (!entry.kind.empty()) return absl::StrCat("in-process kind \"", entry.kind, "\"");
  return "in-process function";
}

std::string EntryPrefix(const RewardRouterEntry& entry) {
  return absl::StrCat("reward router: entry \"", entry.name, "\" (", Describe(entry), ")");
}

absl::Status CheckFinite(const RewardRouterEntry& entry, size_t item, const RewardResult& r) {
  if (!std::isfinite(r.score)) {
    return absl::InternalError(absl::StrCat(EntryPrefix(entry), ": non-finite score ", r.score,
                                            " for item ", item));
  }
  for (const auto& [name, value] : r.components) {
    if (!std::isfinite(value)) {
      return absl::InternalError(absl::StrCat(EntryPrefix(entry), ": non-finite component \"",
                                              name, "\" ", value, " for item ", item));
    }
  }
  return absl::OkStatus();
}

}  // namespace

// Runs in-process scoring off the callers' threads so that the slices of several
// entries and callers overlap.
class RewardRouter::LocalPool {
 public:
  explicit LocalPool(int num_threads) {
    for (int i = 0; i < num_threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~LocalPool() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    for (std::thread& thread : threads_) thread.join();
  }
  void Schedule(std::function<void()> task) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(task));
  }

 private:
  void Run() {
    while (true) {
      std::function<void()> task;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](LocalPool* self) { return self->stopping_ || !self->queue_.empty(); }, this));
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

struct RewardRouter::Entry {
  RewardRouterEntry config;
  std::shared_ptr<RewardFunction> function;  // in-process entries
  std::unique_ptr<RewardClient> client;      // remote entries
};

absl::Status RewardRouterOptions::Validate() const {
  if (entries.empty()) return absl::InvalidArgumentError("reward router: no entries");
  std::set<std::string> names;
  for (size_t i = 0; i < entries.size(); ++i) {
    const RewardRouterEntry& e = entries[i];
    const std::string where = absl::StrCat("reward router: entries[", i, "] (\"", e.name, "\")");
    if (e.name.empty() || e.name.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": name must be non-empty and without '/'"));
    }
    if (!names.insert(e.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": name repeats an earlier entry's"));
    }
    if (!std::isfinite(e.weight)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": weight must be finite, got ", e.weight));
    }
    const int num_sources = !e.kind.empty() + !e.address.empty() + (e.function != nullptr);
    if (num_sources != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": set exactly one of kind, address and function, got ", num_sources));
    }
    if (e.address.empty() && (!e.auth_token.empty() || !e.reward_kind.empty())) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": auth_token and reward_kind apply to remote entries only"));
    }
  }
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("reward router: timeout must be > 0, got ",
                                                   absl::FormatDuration(timeout)));
  }
  if (max_attempts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("reward router: max_attempts must be >= 1, got ", max_attempts));
  }
  if (initial_backoff < absl::ZeroDuration() || max_backoff < absl::ZeroDuration() ||
      !(backoff_multiplier >= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reward router: backoff must be >= 0 with multiplier >= 1, got initial ",
        absl::FormatDuration(initial_backoff), ", max ", absl::FormatDuration(max_backoff),
        ", multiplier ", backoff_multiplier));
  }
  if (max_request_bytes < kMinRequestBytes || max_request_bytes > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reward router: max_request_bytes must be in [", kMinRequestBytes, ", ",
        std::numeric_limits<int>::max(), "], got ", max_request_bytes));
  }
  if (server_wait < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("reward router: server_wait must be >= 0, got ",
                                                   absl::FormatDuration(server_wait)));
  }
  if (max_concurrent_calls_per_entry < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("reward router: max_concurrent_calls_per_entry must be >= 1, got ",
                     max_concurrent_calls_per_entry));
  }
  if (num_local_threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reward router: num_local_threads must be >= 1, got ", num_local_threads));
  }
  return absl::OkStatus();
}

RewardRouter::RewardRouter(const RewardRouterOptions& options) : options_(options) {}

RewardRouter::~RewardRouter() = default;

absl::StatusOr<std::unique_ptr<RewardRouter>> RewardRouter::Create(
    const RewardRouterOptions& options) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  std::unique_ptr<RewardRouter> router(new RewardRouter(options));
  bool any_local = false;
  for (const RewardRouterEntry& config : options.entries) {
    auto entry = std::make_unique<Entry>();
    entry->config = config;
    if (config.function != nullptr) {
      entry->function = config.function;
    } else if (!config.kind.empty()) {
      absl::StatusOr<RewardFunctionPtr> function =
          MakeRewardFunction(config.kind, config.options);
      if (!function.ok()) {
        return absl::Status(function.status().code(),
                            absl::StrCat("reward router: entry \"", config.name, "\": ",
                                         function.status().message()));
      }
      entry->function = *std::move(function);
    } else {
      RewardClientOptions client_options;
      client_options.address = config.address;
      client_options.auth_token = config.auth_token;
      client_options.tls = config.tls;
      client_options.deadline = options.timeout;
      // The router retries, so that it can retry server errors the client passes on and
      // name the entry in the final error.
      client_options.max_attempts = 1;
      client_options.max_concurrent_calls = options.max_concurrent_calls_per_entry;
      absl::StatusOr<std::unique_ptr<RewardClient>> client = RewardClient::Create(client_options);
      if (!client.ok()) {
        return absl::Status(client.status().code(),
                            absl::StrCat("reward router: entry \"", config.name, "\": ",
                                         client.status().message()));
      }
      entry->client = *std::move(client);
    }
    any_local |= entry->function != nullptr;
    router->entries_.push_back(std::move(entry));
  }
  if (any_local) router->pool_ = std::make_unique<LocalPool>(options.num_local_threads);
  return router;
}

namespace {

// While `entry`'s server has been UNAVAILABLE since `down_since` (`last` its latest
// status): OK to retry it, or why the wait ends: check_server's verdict, or UNAVAILABLE
// once server_wait has passed.
absl::Status WaitForServer(const RewardRouterOptions& options, const RewardRouterEntry& entry,
                           absl::Time down_since, const absl::Status& last) {
  if (options.check_server) {
    absl::Status verdict = options.check_server(entry.address);
    if (!verdict.ok()) {
      return absl::Status(verdict.code(),
                          absl::StrCat(EntryPrefix(entry), ": ", verdict.message()));
    }
  }
  if (absl::Now() - down_since < options.server_wait) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(
      EntryPrefix(entry), ": the server did not come back within server_wait = ",
      absl::FormatDuration(options.server_wait), "; last status ",
      absl::StatusCodeToString(last.code()), ": ", last.message()));
}

// Scores items [begin, end) of `inputs` on `client` into `out`, retrying as
// RewardRouter::ScoreBatch describes. Gives up early once `cancelled` is set (another
// part of the batch failed); the result is then CANCELLED and not reported.
absl::Status ScoreRemoteChunk(const RewardRouterOptions& options, const RewardRouterEntry& entry,
                              RewardClient& client, const std::vector<RewardInput>& inputs,
                              size_t begin, size_t end, const std::atomic<bool>& cancelled,
                              std::vector<RewardResult>& out) {
  std::vector<RewardRequestItem> items(end - begin);
  for (size_t i = begin; i < end; ++i) {
    items[i - begin].id = absl::StrCat(i);
    items[i - begin].input = inputs[i];
  }
  absl::Duration backoff = options.initial_backoff;
  absl::Status last;
  int attempt = 0;
  std::optional<absl::Time> down_since;  // of the server's current UNAVAILABLE streak
  while (attempt < options.max_attempts) {
    if (cancelled.load()) return absl::CancelledError();
    ++attempt;
    absl::StatusOr<std::vector<RewardResponseItem>> results =
        client.Score(items, entry.reward_kind);
    if (results.ok()) {
      for (size_t i = begin; i < end; ++i) {
        RewardResult& r = out[i];
        r = std::move((*results)[i - begin].result);
        if (absl::Status status = CheckFinite(entry, i, r); !status.ok()) return status;
      }
      return absl::OkStatus();
    }
    last = results.status();
    if (IsPermanent(last.code())) break;
    if (last.code() == absl::StatusCode::kUnavailable && options.server_wait > absl::ZeroDuration()) {
      if (!down_since.has_value()) down_since = absl::Now();
      if (absl::Status wait = WaitForServer(options, entry, *down_since, last); !wait.ok()) {
        return wait;
      }
      --attempt;  // a server that is down and coming back spends no attempt
    } else {
      down_since.reset();
    }
    if (attempt < options.max_attempts) {
      absl::SleepFor(backoff);
      backoff = std::min(options.max_backoff, backoff * options.backoff_multiplier);
    }
  }
  return absl::Status(
      last.code(), absl::StrCat(EntryPrefix(entry), ": items ", begin, "..", end - 1,
                                " failed after ", attempt, " attempt(s) of at most ",
                                absl::FormatDuration(options.timeout), " each; last status ",
                                absl::StatusCodeToString(last.code()), ": ", last.message()));
}

struct ItemRange {
  size_t begin, end;
};

// Splits `inputs` into the remote calls of `entry`: each ends at kMaxItemsPerCall items or
// before the item that would take the request past `max_request_bytes`. An item too big
// for any request is RESOURCE_EXHAUSTED.
absl::StatusOr<std::vector<ItemRange>> SplitIntoCalls(const RewardRouterEntry& entry,
                                                      const std::vector<RewardInput>& inputs,
                                                      int64_t max_request_bytes) {
  const int64_t request_overhead = kFieldOverhead + static_cast<int64_t>(entry.reward_kind.size());
  std::vector<ItemRange> calls;
  size_t begin = 0;
  int64_t bytes = request_overhead;
  for (size_t i = 0; i < inputs.size(); ++i) {
    // Ids are the items' indices in the batch (ScoreRemoteChunk).
    const int64_t item_bytes = ScoreItemWireBytes(inputs[i], absl::StrCat(i).size());
    if (request_overhead + item_bytes > max_request_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          EntryPrefix(entry), ": item ", i, " takes up to ", item_bytes,
          " bytes on the wire, more than max_request_bytes (", max_request_bytes,
          ") allows in one Score request; not sent"));
    }
    if (i > begin && (i - begin == kMaxItemsPerCall || bytes + item_bytes > max_request_bytes)) {
      calls.push_back({begin, i});
      begin = i;
      bytes = request_overhead;
    }
    bytes += item_bytes;
  }
  calls.push_back({begin, inputs.size()});
  return calls;
}

absl::Status ScoreLocalSlice(const RewardRouterEntry& entry, RewardFunction& function,
                             const std::vector<RewardInput>& inputs, size_t begin, size_t end,
                             const std::atomic<bool>& cancelled, std::vector<RewardResult>& out) {
  for (size_t i = begin; i < end; ++i) {
    if (cancelled.load()) return absl::CancelledError();
    absl::StatusOr<RewardResult> r = function.Score(inputs[i]);
    if (!r.ok()) {
      return absl::Status(r.status().code(), absl::StrCat(EntryPrefix(entry), ": item ", i,
                                                          ": ", r.status().message()));
    }
    if (absl::Status status = CheckFinite(entry, i, *r); !status.ok()) return status;
    out[i] = *std::move(r);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<RewardResult>> RewardRouter::ScoreBatch(
    const std::vector<RewardInput>& inputs) {
  absl::StatusOr<RoutedScores> scores = ScoreBatchByEntry(inputs);
  if (!scores.ok()) return scores.status();
  return std::move(scores->combined);
}

absl::StatusOr<RoutedScores> RewardRouter::ScoreBatchByEntry(const std::vector<RewardInput>& inputs) {
  const size_t n = inputs.size();
  const size_t num_entries = entries_.size();
  if (n == 0) return RoutedScores{{}, std::vector<std::vector<RewardResult>>(num_entries)};
  // scores[e][i]: entry e's result for input i. Every task writes its own range and its
  // own status slot, so joining the tasks is the only synchronisation needed.
  std::vector<std::vector<RewardResult>> scores(num_entries, std::vector<RewardResult>(n));
  std::atomic<bool> cancelled{false};

  struct Task {
    size_t entry, begin, end;
    absl::Status status;
  };
  std::deque<Task> tasks;  // stable addresses while the tasks run
  const size_t local_threads = static_cast<size_t>(options_.num_local_threads);
  // A few slices per thread, so one slow slice does not hold the rest of an entry back.
  const size_t local_slice = std::max<size_t>(1, (n + 4 * local_threads - 1) / (4 * local_threads));
  for (size_t e = 0; e < num_entries; ++e) {
    if (entries_[e]->client == nullptr) {
      for (size_t begin = 0; begin < n; begin += local_slice) {
        tasks.push_back(Task{e, begin, std::min(n, begin + local_slice), absl::OkStatus()});
      }
      continue;
    }
    absl::StatusOr<std::vector<ItemRange>> calls =
        SplitIntoCalls(entries_[e]->config, inputs, options_.max_request_bytes);
    if (!calls.ok()) return calls.status();
    for (const ItemRange& call : *calls) {
      tasks.push_back(Task{e, call.begin, call.end, absl::OkStatus()});
    }
  }

  size_t num_local_tasks = 0;
  for (const Task& task : tasks) num_local_tasks += entries_[task.entry]->client == nullptr;
  absl::BlockingCounter local_done(static_cast<int>(num_local_tasks));
  std::vector<std::thread> remote_threads;
  for (Task& task : tasks) {
    Entry& entry = *entries_[task.entry];
    std::vector<RewardResult>& out = scores[task.entry];
    if (entry.client != nullptr) {
      // A thread per in-flight call: remote calls block on the network, and the client's
      // own limit caps how many of them reach the server at once.
      remote_threads.emplace_back([this, &task, &entry, &inputs, &cancelled, &out] {
        task.status = ScoreRemoteChunk(options_, entry.config, *entry.client, inputs, task.begin,
                                       task.end, cancelled, out);
        if (!task.status.ok()) cancelled.store(true);
      });
    } else {
      pool_->Schedule([&task, &entry, &inputs, &cancelled, &out, &local_done] {
        task.status =
            ScoreLocalSlice(entry.config, *entry.function, inputs, task.begin, task.end,
                            cancelled, out);
        if (!task.status.ok()) cancelled.store(true);
        local_done.DecrementCount();
      });
    }
  }
  for (std::thread& thread : remote_threads) thread.join();
  local_done.Wait();

  // The first real failure in entry order; CANCELLED tasks only stopped because of it.
  for (const Task& task : tasks) {
    if (!task.status.ok() && task.status.code() != absl::StatusCode::kCancelled) {
      return task.status;
    }
  }
  for (const Task& task : tasks) {
    if (!task.status.ok()) return task.status;
  }

  std::vector<RewardResult> results(n);
  for (size_t i = 0; i < n; ++i) {
    RewardResult& r = results[i];
    for (size_t e = 0; e < num_entries; ++e) {
      const RewardRouterEntry& config = entries_[e]->config;
      const double part = config.weight * scores[e][i].score;
      r.score += part;
      r.components.emplace_back(config.name, part);
    }
    for (size_t e = 0; e < num_entries; ++e) {
      const RewardRouterEntry& config = entries_[e]->config;
      for (auto& [name, value] : scores[e][i].components) {
        r.components.emplace_back(absl::StrCat(config.name, "/", name), value);
      }
    }
    if (!std::isfinite(r.score)) {
      return absl::InternalError(absl::StrCat("reward router: the weighted sum for item ", i,
                                              " is not finite (", r.score,
                                              "); check the entries' weights"));
    }
  }
  return RoutedScores{std::move(results), std::move(scores)};
}

}  // namespace lightrl
