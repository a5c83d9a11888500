#include "rl/async_rollouts.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace lightrl {
namespace {

uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

absl::Status AsyncRolloutOptions::Validate() const {
  if (prompts_per_step < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompts_per_step must be >= 1, got ", prompts_per_step));
  }
  if (versions_per_step < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("versions_per_step must be >= 1, got ", versions_per_step));
  }
  if (max_staleness < versions_per_step) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_staleness must be >= versions_per_step (", versions_per_step,
        "): groups generated during a step are that many versions old when trained, got ",
        max_staleness));
  }
  if (max_regenerations < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_regenerations must be >= 0, got ", max_regenerations));
  }
  if (max_concurrent_scoring < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_concurrent_scoring must be >= 1, got ", max_concurrent_scoring));
  }
  return absl::OkStatus();
}

AsyncRollouts::AsyncRollouts(const AsyncRolloutOptions& options, const Dataset* dataset,
                             DatasetPosition start, int64_t published_version,
                             AsyncRequestFn make_request, AsyncGenerateFn generate,
                             AsyncScoreFn score)
    : options_(options),
      dataset_(dataset),
      make_request_(std::move(make_request)),
      generate_(std::move(generate)),
      score_(std::move(score)),
      cursor_(start),
      published_(published_version) {
  if (!score_) return;
  for (int64_t i = 0; i < options_.max_concurrent_scoring; ++i) {
    scorers_.emplace_back([this] { RunScorer(); });
  }
}

AsyncRollouts::~AsyncRollouts() {
  std::map<std::thread::id, std::thread> calls;
  {
    std::lock_guard<std::mutex> lock(mu_);
    calls.swap(calls_);
    finished_.clear();
  }
  for (auto& [id, thread] : calls) thread.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  changed_.notify_all();
  for (std::thread& thread : scorers_) thread.join();
}

void AsyncRollouts::Publish(int64_t version) {
  std::lock_guard<std::mutex> lock(mu_);
  published_ = version;
}

DatasetPosition AsyncRollouts::consumed_position() const {
  std::lock_guard<std::mutex> lock(mu_);
  return slots_.empty() ? cursor_ : slots_.front()->drawn_at;
}

AsyncRolloutStats AsyncRollouts::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  AsyncRolloutStats s = stats_;
  s.in_flight = s.ready_ahead = 0;
  s.scoring = 0;
  for (const auto& slot : slots_) {
    if (slot->in_flight) ++s.in_flight;
    if (slot->scoring) ++s.scoring;
    if (slot->ready) ++s.ready_ahead;
  }
  return s;
}

void AsyncRollouts::JoinFinishedLocked() {
  for (const std::thread::id& id : finished_) {
    auto it = calls_.find(id);
    if (it == calls_.end()) continue;
    it->second.join();
    calls_.erase(it);
  }
  finished_.clear();
}

void AsyncRollouts::LaunchLocked(int64_t taking) {
  JoinFinishedLocked();
  std::vector<std::shared_ptr<Slot>> batch;
  for (const auto& slot : slots_) {
    if (!slot->stale) continue;
    slot->stale = false;
    batch.push_back(slot);
  }
  // A Take of more than the window still gets its groups.
  const int64_t limit = std::min(std::max(options_.window(), taking), demand_);
  while (static_cast<int64_t>(slots_.size()) < limit) {
    auto slot = std::make_shared<Slot>();
    slot->drawn_at = cursor_;
    slot->example = dataset_->Next(1, options_.seed, options_.shuffle, cursor_)[0];
    slot->draw_index = static_cast<uint64_t>(cursor_.epoch * dataset_->size() + cursor_.index - 1);
    slots_.push_back(slot);
    batch.push_back(std::move(slot));
  }
  if (batch.empty()) return;
  for (const auto& slot : batch) {
    slot->in_flight = true;
    slot->ready = false;
    slot->min_version = published_;
    ++slot->generations;
  }
  std::thread thread([this, batch, min_version = published_] { RunCall(batch, min_version); });
  const std::thread::id id = thread.get_id();
  calls_.emplace(id, std::move(thread));
}

void AsyncRollouts::RunCall(std::vector<std::shared_ptr<Slot>> slots, int64_t min_version) {
  // Slot fields other than the flags change only while the slot is not in flight, so this
  // thread reads them without the lock.
  std::vector<absl::StatusOr<GenerationRequest>> requests;
  std::vector<GenerationRequest> sent;
  std::vector<size_t> slot_of;  // sent index -> slots index
  for (size_t i = 0; i < slots.size(); ++i) {
    const Slot& slot = *slots[i];
    requests.push_back(make_request_(*slot.example,
                                     Mix(Mix(options_.seed, slot.draw_index),
                                         static_cast<uint64_t>(slot.generations))));
    if (requests.back().ok()) {
      sent.push_back(*requests.back());
      slot_of.push_back(i);
    }
  }
  std::vector<bool> done(slots.size(), false);
  // Files one finished group: queued for scoring at once, or ready. Caller holds mu_.
  auto finish = [&](size_t i, GroupGeneration g) {
    Slot& slot = *slots[i];
    done[i] = true;
    if (!requests[i].ok()) {
      g.status = requests[i].status();
    } else {
      slot.request = *std::move(requests[i]);
    }
    // A group is generated by one call on one worker, so it has one version; that version
    // must be one the call allowed.
    if (g.status.ok() && g.weight_version < min_version) {
      g.status = absl::InternalError(absl::StrCat(
          "group ", slot.request.id, ": generated by weight version ", g.weight_version,
          ", older than the ", min_version, " it was asked for"));
    }
    const bool score = score_ && g.status.ok();
    slot.generation = std::move(g);
    slot.in_flight = false;
    if (score) {
      // Scored before it is ready; a failed generation is ready at once to fail its Take.
      slot.scoring = true;
      to_score_.push_back(slots[i]);
    } else {
      slot.ready = true;
    }
    changed_.notify_all();
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < slots.size(); ++i) {
      if (!requests[i].ok()) finish(i, GroupGeneration{});
    }
  }
  if (!sent.empty()) {
    // Each group is scored as soon as it is back, while the call's others still generate.
    generate_(sent, min_version, [&](size_t index, GroupGeneration g) {
      std::lock_guard<std::mutex> lock(mu_);
      if (index >= slot_of.size() || done[slot_of[index]]) return;
      finish(slot_of[index], std::move(g));
    });
  }

  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < slots.size(); ++i) {
    if (done[i]) continue;
    GroupGeneration g;
    g.status = absl::InternalError(absl::StrCat(
        "group ", requests[i]->id, ": the rollout source finished the call without it"));
    finish(i, std::move(g));
  }
  finished_.push_back(std::this_thread::get_id());
  changed_.notify_all();
}

void AsyncRollouts::RunScorer() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    changed_.wait(lock, [&] { return stopping_ || !to_score_.empty(); });
    if (stopping_) return;
    std::shared_ptr<Slot> slot = std::move(to_score_.front());
    to_score_.pop_front();
    lock.unlock();
    // While scoring, only this thread touches the slot's example, generation and scores.
    absl::StatusOr<GroupScores> scores = score_(*slot->example, slot->request, slot->generation);
    if (scores.ok() && (scores->rewards.size() != slot->generation.samples.size() ||
                        scores->texts.size() != scores->rewards.size())) {
      scores = absl::InternalError(absl::StrCat(
          "scoring returned ", scores->rewards.size(), " rewards and ", scores->texts.size(), " texts",
          " for ", slot->generation.samples.size(), " samples"));
    }
    lock.lock();
    if (scores.ok()) {
      slot->scores = *std::move(scores);
    } else {
      slot->generation.status = absl::Status(
          scores.status().code(),
          absl::StrCat("group ", slot->request.id, ": scoring failed: ", scores.status().message()));
    }
    slot->scoring = false;
    slot->ready = true;
    changed_.notify_all();
  }
}

absl::StatusOr<std::vector<AsyncGroup>> AsyncRollouts::Take(int64_t n, int64_t learner_version,
                                                            int64_t later) {
  std::unique_lock<std::mutex> lock(mu_);
  demand_ = n + later;
  LaunchLocked(n);
  const int64_t oldest = learner_version - options_.max_staleness;
  while (true) {
    changed_.wait(lock, [&] {
      for (int64_t i = 0; i < n; ++i) {
        if (!slots_[i]->ready) return false;
      }
      return true;
    });
    bool any_stale = false;
    for (int64_t i = 0; i < n; ++i) {
      Slot& slot = *slots_[i];
      if (!slot.generation.status.ok()) return slot.generation.status;
      if (slot.generation.weight_version >= oldest) continue;
      if (slot.generations > options_.max_regenerations) {
        return absl::AbortedError(absl::StrCat(
            "group ", slot.request.id, ": generated ", slot.generations,
            " times, each time too stale (last by weight version ", slot.generation.weight_version,
            ", learner at ", learner_version, ", max_staleness ", options_.max_staleness, ")"));
      }
      slot.ready = false;
      slot.stale = true;
      ++stats_.stale_requeued;
      any_stale = true;
    }
    if (!any_stale) break;
    LaunchLocked(n);
  }
  std::vector<AsyncGroup> out;
  for (int64_t i = 0; i < n; ++i) {
    std::shared_ptr<Slot> slot = std::move(slots_.front());
    slots_.pop_front();
    const int64_t staleness = learner_version - slot->generation.weight_version;
    stats_.staleness_sum += staleness;
    stats_.staleness_max = std::max(stats_.staleness_max, staleness);
    ++stats_.groups_taken;
    AsyncGroup g;
    g.example = slot->example;
    g.request = std::move(slot->request);
    g.generation = std::move(slot->generation);
    g.generations = slot->generations;
    g.scored = static_cast<bool>(score_);
    g.scores = std::move(slot->scores);
    out.push_back(std::move(g));
  }
  // The following steps' groups start now, before the trainer trains on these.
  demand_ = later;
  LaunchLocked(0);
  return out;
}

}  // namespace lightrl
