#include "inference_engine/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <utility>

namespace lightrl {
namespace {

SchedulerOptions Options(int64_t max_num_seqs, int64_t num_pages, int64_t page_size = 4,
                         int64_t max_prefill_tokens = 8192) {
  SchedulerOptions o;
  o.max_num_seqs = max_num_seqs;
  o.num_pages = num_pages;
  o.page_size = page_size;
  o.max_prefill_tokens = max_prefill_tokens;
  EXPECT_TRUE(o.Validate().ok());
  return o;
}

std::vector<SeqId> AdmittedIds(const StepPlan& plan) {
  std::vector<SeqId> ids;
  for (const auto& a : plan.admit) ids.insert(ids.end(), a.seqs.begin(), a.seqs.end());
  return ids;
}

TEST(SchedulerTest, AdmitsGroupsInOrderUpToTheSlots) {
  Scheduler s(Options(5, 100));
  s.AddGroup(0, 2, 3);
  s.AddGroup(1, 2, 3);
  s.AddGroup(2, 2, 3);  // would make 6 > 5
  s.AddGroup(3, 1, 3);  // would fit, but admission is in order
  StepPlan plan = s.Schedule();
  ASSERT_EQ(plan.admit.size(), 2u);
  EXPECT_TRUE(plan.decode.empty());
  EXPECT_EQ(plan.admit[0].seqs.size(), 2u);
  EXPECT_EQ(s.sequence(plan.admit[0].seqs[0]).group, 0);
  EXPECT_EQ(s.sequence(plan.admit[0].seqs[1]).sample, 1);
  EXPECT_EQ(s.sequence(plan.admit[1].seqs[0]).group, 1);
  EXPECT_EQ(plan.num_tokens_prefill, 6);
  EXPECT_EQ(s.running(), AdmittedIds(plan));
  EXPECT_EQ(s.num_free_slots(), 1);
  EXPECT_EQ(s.num_waiting(), 2);
  // Each sequence holds pages for its prompt and the token it samples from it.
  for (SeqId id : s.running()) EXPECT_EQ(s.sequence(id).pages.pages.size(), 1u);
  // Next step: the admitted decode; group 2 still does not fit.
  for (SeqId id : s.running()) s.AppendToken(id);
  plan = s.Schedule();
  EXPECT_EQ(plan.decode.size(), 4u);
  EXPECT_TRUE(plan.admit.empty());
}

TEST(SchedulerTest, AdmitsUpToThePagesAndThePrefillBudget) {
  // Prompts of 7 tokens need 2 pages of 4 (prompt + 1).
  Scheduler s(Options(64, 5));
  for (int g = 0; g < 4; ++g) s.AddGroup(g, 1, 7);
  StepPlan plan = s.Schedule();
  EXPECT_EQ(plan.admit.size(), 2u);
  EXPECT_EQ(s.kv_cache().num_free_pages(), 1);

  // The first admission always fits the prefill budget; later ones must stay within it.
  Scheduler b(Options(64, 100, 4, 10));
  b.AddGroup(0, 1, 30);
  b.AddGroup(1, 1, 1);
  plan = b.Schedule();
  ASSERT_EQ(plan.admit.size(), 1u);
  EXPECT_EQ(plan.num_tokens_prefill, 30);
  plan = b.Schedule();
  ASSERT_EQ(plan.admit.size(), 1u);
  Scheduler c(Options(64, 100, 4, 10));
  for (int g = 0; g < 4; ++g) c.AddGroup(g, 1, 4);
  plan = c.Schedule();
  EXPECT_EQ(plan.admit.size(), 2u);
  EXPECT_EQ(plan.num_tokens_prefill, 8);
}

TEST(SchedulerTest, PreemptsTheYoungestAndResumesItFirst) {
  // 3 sequences of 3-token prompts, 1 page each; 4 pages in all.
  Scheduler s(Options(8, 4));
  for (int g = 0; g < 3; ++g) s.AddGroup(g, 1, 3);
  StepPlan plan = s.Schedule();
  const std::vector<SeqId> ids = AdmittedIds(plan);
  ASSERT_EQ(ids.size(), 3u);
  for (SeqId id : ids) s.AppendToken(id);  // 4 tokens each: still one page
  plan = s.Schedule();
  EXPECT_EQ(plan.decode, ids);
  EXPECT_TRUE(plan.preempted.empty());
  for (SeqId id : ids) s.AppendToken(id);  // 5 tokens: each needs a second page, 1 is free
  s.AddGroup(3, 1, 1);
  plan = s.Schedule();
  // The oldest takes the free page; the youngest is preempted to give the middle one its.
  EXPECT_EQ(plan.preempted, std::vector<SeqId>{ids[2]});
  EXPECT_EQ(plan.decode, (std::vector<SeqId>{ids[0], ids[1]}));
  EXPECT_TRUE(plan.admit.empty()) << "a step that preempted admits nothing";
  EXPECT_EQ(s.sequence(ids[2]).state, SeqState::kPreempted);
  EXPECT_EQ(s.sequence(ids[2]).slot, -1);
  EXPECT_TRUE(s.sequence(ids[2]).pages.pages.empty());
  EXPECT_EQ(s.kv_cache().num_free_pages(), 0);
  // Once the oldest finishes, the preempted one comes back before group 3, re-prefilling
  // all its tokens but the last.
  for (SeqId id : plan.decode) s.AppendToken(id);
  s.Finish(ids[0]);
  plan = s.Schedule();
  EXPECT_EQ(plan.decode, std::vector<SeqId>{ids[1]});
  ASSERT_GE(plan.admit.size(), 1u);
  EXPECT_TRUE(plan.admit[0].resumed);
  EXPECT_EQ(plan.admit[0].seqs, std::vector<SeqId>{ids[2]});
  EXPECT_EQ(plan.admit[0].num_tokens_prefill, 4);
  EXPECT_EQ(s.sequence(ids[2]).state, SeqState::kRunning);
  EXPECT_EQ(s.sequence(ids[2]).pages.pages.size(), 2u);
}

TEST(SchedulerTest, ASequenceAloneOutOfPagesLeaves) {
  Scheduler s(Options(4, 2));
  s.AddGroup(7, 1, 6);
  StepPlan plan = s.Schedule();
  const SeqId id = plan.admit.at(0).seqs.at(0);
  for (int t = 0; t < 2; ++t) s.AppendToken(id);  // 8 tokens: the 2 pages hold them
  plan = s.Schedule();
  EXPECT_TRUE(plan.out_of_pages.empty());
  s.AppendToken(id);
  plan = s.Schedule();
  ASSERT_EQ(plan.out_of_pages.size(), 1u);
  EXPECT_EQ(plan.out_of_pages[0].seq, id);
  EXPECT_EQ(plan.out_of_pages[0].group, 7);
  EXPECT_EQ(plan.out_of_pages[0].num_tokens, 9);
  EXPECT_TRUE(plan.decode.empty());
  EXPECT_FALSE(s.has_work());
  EXPECT_EQ(s.kv_cache().num_free_pages(), 2);
  EXPECT_EQ(s.num_free_slots(), 4);
}

TEST(SchedulerTest, DroppingAGroupFreesItsSlotsAndPagesAndItsWaitingEntries) {
  Scheduler s(Options(4, 6));
  s.AddGroup(0, 3, 3);
  s.AddGroup(1, 2, 3);
  s.AddGroup(2, 1, 3);
  StepPlan plan = s.Schedule();
  ASSERT_EQ(plan.admit.size(), 1u);
  EXPECT_EQ(s.num_free_slots(), 1);
  auto dropped = s.Drop([](int64_t g) { return g == 0 || g == 2; });
  EXPECT_EQ(dropped, plan.admit[0].seqs);
  EXPECT_EQ(s.num_free_slots(), 4);
  EXPECT_EQ(s.kv_cache().num_free_pages(), 6);
  EXPECT_EQ(s.num_waiting(), 1);
  plan = s.Schedule();
  ASSERT_EQ(plan.admit.size(), 1u);
  EXPECT_EQ(s.sequence(plan.admit[0].seqs[0]).group, 1);
  EXPECT_FALSE(s.Schedule().admit.size());
  // Finishing releases capacity too.
  for (SeqId id : std::vector<SeqId>(s.running())) s.Finish(id);
  EXPECT_FALSE(s.has_work());
  EXPECT_EQ(s.num_free_slots(), 4);
  EXPECT_EQ(s.kv_cache().num_free_pages(), 6);
}

// The policy Generate ran as one loop before the scheduler existed, transcribed: the
// oracle of the scheduler's plans (sequences named by (group, sample)).
class ReferencePlanner {
 public:
  using Key = std::pair<int64_t, int64_t>;
  struct Seq {
    Key key;
    int64_t num_tokens = 0;
    int64_t slot = -1;
    PageTable pages;
  };
  struct Plan {
    std::vector<Key> decode, preempted, out_of_pages;
    std::vector<std::vector<Key>> admit;
  };
  explicit ReferencePlanner(const SchedulerOptions& o)
      : o_(o), slots_(o.max_num_seqs), kv_(o.num_pages, o.page_size) {}

  void AddGroup(int64_t group, int64_t n, int64_t len) { waiting_.push_back({group, n, len, nullptr}); }
  Plan Step() {
    Plan plan;
    bool preempted = false;
    for (size_t i = 0; i < active_.size();) {
      Seq& s = *active_[i];
      if (kv_.Reserve(s.pages, s.num_tokens)) {
        ++i;
        continue;
      }
      if (active_.size() == 1) {
        plan.out_of_pages.push_back(s.key);
        Release(s);
        active_.clear();
        break;
      }
      std::unique_ptr<Seq> victim = std::move(active_.back());
      active_.pop_back();
      Release(*victim);
      preempted = true;
      plan.preempted.push_back(victim->key);
      waiting_.push_front({victim->key.first, 1, 0, std::move(victim)});
    }
    for (auto& s : active_) plan.decode.push_back(s->key);
    std::vector<std::unique_ptr<Seq>> admitted;
    int64_t prefill_tokens = 0;
    size_t groups = 0;
    while (!preempted && !waiting_.empty()) {
      Pending& w = waiting_.front();
      const int64_t n = w.resumed ? 1 : w.n;
      const int64_t len = w.resumed ? w.resumed->num_tokens - 1 : w.len;
      const int64_t in_flight = static_cast<int64_t>(active_.size() + admitted.size());
      if (in_flight + n > o_.max_num_seqs || slots_.num_free() < n) break;
      if (groups > 0 && prefill_tokens + len > o_.max_prefill_tokens) break;
      if (kv_.PagesFor(len + 1) * n > kv_.num_free_pages()) break;
      std::vector<std::unique_ptr<Seq>> group;
      if (w.resumed) {
        group.push_back(std::move(w.resumed));
      } else {
        for (int64_t k = 0; k < n; ++k) {
          auto s = std::make_unique<Seq>();
          s->key = {w.group, k};
          s->num_tokens = len;
          group.push_back(std::move(s));
        }
      }
      plan.admit.emplace_back();
      for (auto& s : group) {
        s->slot = slots_.Allocate();
        kv_.Reserve(s->pages, len + 1);
        plan.admit.back().push_back(s->key);
        admitted.push_back(std::move(s));
      }
      prefill_tokens += len;
      ++groups;
      waiting_.pop_front();
    }
    for (auto& s : admitted) active_.push_back(std::move(s));
    return plan;
  }
  Seq* Find(Key key) {
    for (auto& s : active_) {
      if (s->key == key) return s.get();
    }
    return nullptr;
  }
  void Finish(Key key) {
    for (auto& s : active_) {
      if (s->key == key) {
        Release(*s);
        s.reset();
      }
    }
    active_.erase(std::remove(active_.begin(), active_.end(), nullptr), active_.end());
  }
  void Drop(const std::set<int64_t>& groups) {
    for (auto& s : active_) {
      if (groups.count(s->key.first)) {
        Release(*s);
        s.reset();
      }
    }
    active_.erase(std::remove(active_.begin(), active_.end(), nullptr), active_.end());
    waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(),
                                  [&](const Pending& w) { return groups.count(w.group) > 0; }),
                   waiting_.end());
  }

 private:
  struct Pending {
    int64_t group, n, len;
    std::unique_ptr<Seq> resumed;
  };
  void Release(Seq& s) {
    kv_.Release(s.pages);
    if (s.slot >= 0) slots_.Free(s.slot);
    s.slot = -1;
  }
  SchedulerOptions o_;
  IndexPool slots_;
  PagedKvCache kv_;
  std::deque<Pending> waiting_;
  std::vector<std::unique_ptr<Seq>> active_;
};

// Fresh random workloads (groups of random sizes, prompt and output lengths, cancellations,
// caches from roomy to too small for one sequence) run to the end against the reference:
// every step's plan (decode batch, admissions, preemptions, slots and pages) is the
// reference's, the invariants hold after every step, and every sequence finishes.
TEST(SchedulerTest, RandomWorkloadsFollowTheReferencePolicyAndAllFinish) {
  int64_t total_preemptions = 0, total_out_of_pages = 0, total_cancelled = 0;
  for (uint32_t seed = 0; seed < 300; ++seed) {
    std::mt19937 rng(seed);
    auto uniform = [&](int64_t lo, int64_t hi) {
      return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
    };
    const SchedulerOptions o =
        Options(uniform(1, 12), uniform(4, 60), uniform(1, 8), uniform(1, 40));
    Scheduler s(o);
    ReferencePlanner ref(o);
    const int64_t num_groups = uniform(1, 25);
    std::vector<int64_t> group_n(num_groups);
    std::map<std::pair<int64_t, int64_t>, int64_t> target;  // generated tokens to finish at
    std::set<int64_t> failed;                                // out of pages or cancelled
    for (int64_t g = 0; g < num_groups; ++g) {
      int64_t n = uniform(1, std::min<int64_t>(4, o.max_num_seqs));
      int64_t len = uniform(1, 30);
      // The engine refuses requests whose prompt cannot fit the empty cache.
      while ((len + o.page_size) / o.page_size * n > o.num_pages) len = std::max<int64_t>(1, len / 2), n = 1;
      if ((len + o.page_size) / o.page_size * n > o.num_pages) continue;
      group_n[g] = n;
      for (int64_t k = 0; k < n; ++k) target[{g, k}] = uniform(1, 50);
      s.AddGroup(g, n, len);
      ref.AddGroup(g, n, len);
    }
    std::map<SeqId, std::pair<int64_t, int64_t>> key_of;
    std::map<std::pair<int64_t, int64_t>, int64_t> generated;
    int64_t steps = 0;
    while (s.has_work()) {
      ASSERT_LT(++steps, 5000) << "seed " << seed << ": the workload never finishes";
      const StepPlan plan = s.Schedule();
      const auto want = ref.Step();
      for (const auto& a : plan.admit) {
        for (SeqId id : a.seqs) key_of[id] = {s.sequence(id).group, s.sequence(id).sample};
      }
      auto keys = [&](const std::vector<SeqId>& ids) {
        std::vector<std::pair<int64_t, int64_t>> out;
        for (SeqId id : ids) out.push_back(key_of.at(id));
        return out;
      };
      ASSERT_EQ(keys(plan.decode), want.decode) << "seed " << seed << " step " << steps;
      ASSERT_EQ(keys(plan.preempted), want.preempted) << "seed " << seed << " step " << steps;
      std::vector<SeqId> out_of_pages;
      for (const auto& o : plan.out_of_pages) out_of_pages.push_back(o.seq);
      ASSERT_EQ(keys(out_of_pages), want.out_of_pages) << "seed " << seed;
      ASSERT_EQ(plan.admit.size(), want.admit.size()) << "seed " << seed << " step " << steps;
      for (size_t a = 0; a < plan.admit.size(); ++a) {
        ASSERT_EQ(keys(plan.admit[a].seqs), want.admit[a]) << "seed " << seed;
      }
      total_preemptions += static_cast<int64_t>(plan.preempted.size());
      total_out_of_pages += static_cast<int64_t>(plan.out_of_pages.size());

      // Invariants of the plan.
      ASSERT_LE(static_cast<int64_t>(s.running().size()), o.max_num_seqs);
      ASSERT_EQ(s.num_free_slots(), o.max_num_seqs - static_cast<int64_t>(s.running().size()));
      if (!plan.preempted.empty()) {
        ASSERT_TRUE(plan.admit.empty());
      }
      if (plan.admit.size() > 1) {
        ASSERT_LE(plan.num_tokens_prefill, o.max_prefill_tokens);
      }
      std::set<int64_t> slots, pages;
      int64_t pages_held = 0;
      for (SeqId id : s.running()) {
        const SeqInfo& info = s.sequence(id);
        const auto* mirror = ref.Find(key_of.at(id));
        ASSERT_NE(mirror, nullptr);
        ASSERT_EQ(info.slot, mirror->slot);
        ASSERT_EQ(info.pages.pages, mirror->pages.pages);
        ASSERT_EQ(info.state, SeqState::kRunning);
        ASSERT_TRUE(slots.insert(info.slot).second) << "slot " << info.slot << " held twice";
        // Room for the token the sequence feeds at this step (or the one it samples).
        ASSERT_GE(static_cast<int64_t>(info.pages.pages.size()) * o.page_size,
                  std::max(info.num_tokens, info.num_tokens_prompt + 1));
        for (int64_t p : info.pages.pages) ASSERT_TRUE(pages.insert(p).second);
        pages_held += static_cast<int64_t>(info.pages.pages.size());
      }
      ASSERT_EQ(pages_held + s.kv_cache().num_free_pages(), o.num_pages);
      for (SeqId id : plan.preempted) {
        ASSERT_EQ(s.sequence(id).state, SeqState::kPreempted);
        ASSERT_EQ(s.sequence(id).slot, -1);
      }
      for (const auto& o : plan.out_of_pages) failed.insert(o.group);

      // The step: decoded and freshly prefilled sequences take a token each.
      std::vector<SeqId> sampled = plan.decode;
      for (const auto& a : plan.admit) {
        if (!a.resumed) sampled.insert(sampled.end(), a.seqs.begin(), a.seqs.end());
      }
      for (SeqId id : sampled) {
        s.AppendToken(id);
        if (auto* m = ref.Find(key_of.at(id))) ++m->num_tokens;
        ++generated[key_of.at(id)];
      }
      std::vector<SeqId> done;
      for (SeqId id : s.running()) {
        const auto key = key_of.at(id);
        if (generated[key] >= target.at(key) || failed.count(key.first)) done.push_back(id);
      }
      for (SeqId id : done) {
        s.Finish(id);
        ref.Finish(key_of.at(id));
        if (!failed.count(key_of.at(id).first)) target.erase(key_of.at(id));
      }
      if (uniform(0, 40) == 0) {
        const int64_t g = uniform(0, num_groups - 1);
        if (group_n[g] > 0 && failed.insert(g).second) ++total_cancelled;
      }
      s.Drop([&](int64_t g) { return failed.count(g) > 0; });
      ref.Drop(failed);
    }
    for (int64_t g : failed) {
      for (int64_t k = 0; k < group_n[g]; ++k) target.erase({g, k});
    }
    EXPECT_TRUE(target.empty()) << "seed " << seed << ": " << target.size() << " sequences never finished";
    EXPECT_EQ(s.num_free_slots(), o.max_num_seqs);
    EXPECT_EQ(s.kv_cache().num_free_pages(), o.num_pages);
  }
  // The workloads exercise what they are meant to.
  EXPECT_GT(total_preemptions, 100);
  EXPECT_GT(total_cancelled, 20);
  EXPECT_GT(total_out_of_pages, 5);
}

}  // namespace
}  // namespace lightrl
