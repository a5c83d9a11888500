// Plans the engine's steps over its sequence memory. Owns the waiting queue (fresh prompt
// groups and preempted sequences), the running batch, and the lightning-state slots and KV
// pages (indices) they hold; decides each step which sequences decode, which are admitted
// and prefilled, and which are preempted. Torch-free and model-free: it sees token counts,
// never tokens, logits or tensors (the step runner owns those).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "inference_engine/kv_cache.h"

namespace lightrl {

struct SchedulerOptions {
  int64_t max_num_seqs = 64;          // sequences running at once, and the state slots
  int64_t max_prefill_tokens = 8192;  // tokens prefilled per step (the first admission always)
  int64_t num_pages = 1;              // KV pages of the softmax layers
  int64_t page_size = 64;             // tokens per KV page
  absl::Status Validate() const;
};

using SeqId = int64_t;

enum class SeqState { kWaiting, kRunning, kPreempted };

// What the scheduler knows of one sample being generated.
struct SeqInfo {
  int64_t group = 0;              // the caller's id of the prompt group (request)
  int64_t sample = 0;             // index within the group
  int64_t num_tokens_prompt = 0;
  int64_t num_tokens = 0;         // prompt + generated
  int64_t slot = -1;              // lightning-state slot while running
  PageTable pages;                // KV pages while running
  SeqState state = SeqState::kWaiting;
};

// One admission: a fresh group, prefilled once through its leader and forked into the
// others, or one preempted sequence resumed by re-prefill of all its tokens but the last
// (which it feeds at its next decode).
struct Admission {
  std::vector<SeqId> seqs;  // leader first; one sequence when resumed
  bool resumed = false;
  int64_t num_tokens_prefill = 0;
};

// A sequence that ran alone and still found no page for its next token: it left the running
// batch with its slot and pages freed; its group can never fit this cache.
struct OutOfPages {
  SeqId seq = 0;
  int64_t group = 0;
  int64_t num_tokens = 0;
};

struct StepPlan {
  std::vector<SeqId> decode;      // the running batch, in order; each feeds its last token
  std::vector<Admission> admit;   // prefilled after the decode; they decode from next step
  std::vector<SeqId> preempted;   // in the order preempted (youngest first)
  std::vector<OutOfPages> out_of_pages;
  int64_t num_tokens_prefill = 0;
};

class Scheduler {
 public:
  explicit Scheduler(const SchedulerOptions& options);

  const SchedulerOptions& options() const { return options_; }
  const PagedKvCache& kv_cache() const { return kv_; }
  int64_t num_free_slots() const { return slots_.num_free(); }
  bool has_work() const { return !waiting_.empty() || !running_.empty(); }
  // The running batch in order: the decode batch and the age order preemption follows.
  const std::vector<SeqId>& running() const { return running_; }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  // Valid until the sequence finishes or is dropped.
  const SeqInfo& sequence(SeqId id) const;

  // Queues a group of `n` samples of one prompt behind everything waiting.
  void AddGroup(int64_t group, int64_t n, int64_t num_tokens_prompt);

  // Plans one step, and holds to it: first every running sequence gets a page for the token
  // it feeds, oldest first; when pages run out the youngest running sequence is preempted
  // (freed, and queued at the front of the waiting queue) until the rest fit. A step that
  // preempted admits nothing: the room it made belongs to the running batch. Otherwise
  // waiting entries are admitted in queue order while the running batch stays within
  // max_num_seqs and free slots, the step's prefill within max_prefill_tokens (the first
  // admission is exempt) and each admitted sequence gets pages for its prefill plus one
  // token; the first entry that does not fit stops admission. Admitted sequences join the
  // end of the running batch.
  StepPlan Schedule();

  // The running sequence took one more token.
  void AppendToken(SeqId id);
  // Ends a running sequence, freeing its slot and pages.
  void Finish(SeqId id);
  // Drops every sequence of each group `dropped` names (finished or cancelled requests):
  // running ones free their slots and pages in batch order, waiting ones leave the queue.
  // Returns the dropped ids.
  std::vector<SeqId> Drop(const std::function<bool(int64_t group)>& dropped);
  // Drops everything (after a failed step), freeing every slot and page.
  void Clear();

 private:
  struct Waiting {
    int64_t group = 0;
    int64_t n = 0;
    int64_t num_tokens_prompt = 0;
    SeqId resumed = -1;  // a preempted sequence, else a fresh group
  };
  void Release(SeqInfo& s);
  SeqInfo& at(SeqId id);

  SchedulerOptions options_;
  IndexPool slots_;
  PagedKvCache kv_;
  std::deque<Waiting> waiting_;
  std::vector<SeqId> running_;
  std::unordered_map<SeqId, SeqInfo> seqs_;
  SeqId next_id_ = 0;
};

}  // namespace lightrl
