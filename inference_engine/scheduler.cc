#include "inference_engine/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace lightrl {

absl::Status SchedulerOptions::Validate() const {
  if (max_num_seqs < 1 || max_prefill_tokens < 1 || num_pages < 1 || page_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheduler: max_num_seqs, max_prefill_tokens, num_pages and page_size must be >= 1, got ",
        max_num_seqs, ", ", max_prefill_tokens, ", ", num_pages, ", ", page_size));
  }
  return absl::OkStatus();
}

Scheduler::Scheduler(const SchedulerOptions& options)
    : options_(options), slots_(options.max_num_seqs), kv_(options.num_pages, options.page_size) {}

const SeqInfo& Scheduler::sequence(SeqId id) const { return seqs_.at(id); }
SeqInfo& Scheduler::at(SeqId id) { return seqs_.at(id); }

void Scheduler::AddGroup(int64_t group, int64_t n, int64_t num_tokens_prompt) {
  waiting_.push_back({group, n, num_tokens_prompt, -1});
}

void Scheduler::Release(SeqInfo& s) {
  kv_.Release(s.pages);
  if (s.slot >= 0) slots_.Free(s.slot);
  s.slot = -1;
}

StepPlan Scheduler::Schedule() {
  StepPlan plan;
  for (size_t i = 0; i < running_.size();) {
    SeqInfo& s = at(running_[i]);
    if (kv_.Reserve(s.pages, s.num_tokens)) {
      ++i;
      continue;
    }
    if (running_.size() == 1) {
      Release(s);
      plan.out_of_pages.push_back({running_[0], s.group, s.num_tokens});
      seqs_.erase(running_[0]);
      running_.clear();
      break;
    }
    const SeqId victim = running_.back();
    running_.pop_back();
    SeqInfo& v = at(victim);
    Release(v);
    v.state = SeqState::kPreempted;
    plan.preempted.push_back(victim);
    waiting_.push_front({v.group, 1, v.num_tokens_prompt, victim});
  }
  plan.decode = running_;

  int64_t admitted_seqs = 0;
  while (plan.preempted.empty() && !waiting_.empty()) {
    const Waiting& w = waiting_.front();
    const bool resumed = w.resumed >= 0;
    const int64_t len = resumed ? at(w.resumed).num_tokens - 1 : w.num_tokens_prompt;
    const int64_t in_flight = static_cast<int64_t>(running_.size()) + admitted_seqs;
    if (in_flight + w.n > options_.max_num_seqs || slots_.num_free() < w.n) break;
    if (!plan.admit.empty() && plan.num_tokens_prefill + len > options_.max_prefill_tokens) break;
    if (kv_.PagesFor(len + 1) * w.n > kv_.num_free_pages()) break;
    Admission a;
    a.resumed = resumed;
    a.num_tokens_prefill = len;
    if (resumed) {
      a.seqs.push_back(w.resumed);
    } else {
      for (int64_t k = 0; k < w.n; ++k) {
        const SeqId id = next_id_++;
        SeqInfo& s = seqs_[id];
        s.group = w.group;
        s.sample = k;
        s.num_tokens_prompt = w.num_tokens_prompt;
        s.num_tokens = w.num_tokens_prompt;
        a.seqs.push_back(id);
      }
    }
    for (SeqId id : a.seqs) {
      SeqInfo& s = at(id);
      s.slot = slots_.Allocate();
      kv_.Reserve(s.pages, len + 1);
      s.state = SeqState::kRunning;
    }
    admitted_seqs += static_cast<int64_t>(a.seqs.size());
    plan.num_tokens_prefill += len;
    plan.admit.push_back(std::move(a));
    waiting_.pop_front();
  }
  for (const Admission& a : plan.admit) running_.insert(running_.end(), a.seqs.begin(), a.seqs.end());
  return plan;
}

void Scheduler::AppendToken(SeqId id) { ++at(id).num_tokens; }

void Scheduler::Finish(SeqId id) {
  Release(at(id));
  running_.erase(std::find(running_.begin(), running_.end(), id));
  seqs_.erase(id);
}

std::vector<SeqId> Scheduler::Drop(const std::function<bool(int64_t group)>& dropped) {
  std::vector<SeqId> ids;
  std::vector<SeqId> kept;
  for (SeqId id : running_) {
    SeqInfo& s = at(id);
    if (!dropped(s.group)) {
      kept.push_back(id);
      continue;
    }
    Release(s);
    seqs_.erase(id);
    ids.push_back(id);
  }
  running_ = std::move(kept);
  std::deque<Waiting> waiting;
  for (const Waiting& w : waiting_) {
    if (!dropped(w.group)) {
      waiting.push_back(w);
    } else if (w.resumed >= 0) {
      seqs_.erase(w.resumed);
      ids.push_back(w.resumed);
    }
  }
  waiting_ = std::move(waiting);
  return ids;
}

void Scheduler::Clear() {
  for (SeqId id : running_) Release(at(id));
  running_.clear();
  waiting_.clear();
  seqs_.clear();
}

}  // namespace lightrl
