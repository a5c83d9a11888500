// The genrm reward kind: its template and parser, its options through the registry, and
// a judge model end to end on CPU, in process, behind a reward server on loopback and as
// `lightrl reward-worker --kind genrm --model DIR`. The judge is a tiny model built here
// whose final norm is zero, so every logit is 0 and greedy decoding writes token 0; the
// tokenizer built beside it gives id 0 the text the test wants the judge to write.
#include "rl/genrm_reward.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/safetensors.h"
#include "policy/model_config.h"
#include "policy/policy_model.h"
#include "reward/reward_client.h"
#include "reward/reward_registry.h"
#include "reward/reward_service.h"

extern char** environ;

namespace lightrl {
namespace {

constexpr char kConfig[] = R"({
  "vocab_size": 257, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
  "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
  "num_local_experts": 2, "num_experts_per_tok": 1, "max_position_embeddings": 2048,
  "block_size": 64, "layer_types": ["linear_attention", "full_attention"],
  "full_attn_alpha_factor": 2.0, "linear_attn_alpha_factor": 2.0, "mlp_alpha_factor": 2.0,
  "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
  "router_aux_loss_coef": 0.001, "tie_word_embeddings": false, "hidden_act": "silu"})";

// A judge checkpoint in `dir` that writes `text` (one byte) at every greedy step: the toy
// byte-level tokenizer with that byte's token and id 0 swapped, and a model whose final
// norm weight is zero.
void WriteJudge(const std::string& dir, char text) {
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(WriteFileAtomic(JoinPath(dir, "config.json"), kConfig).ok());
  auto config = ModelConfig::FromFile(JoinPath(dir, "config.json"));
  ASSERT_TRUE(config.ok()) << config.status();
  auto model = PolicyModel::Create(*config, /*seed=*/3);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_TRUE((*model)->Save(dir).ok());

  // Zero the final norm, keeping every other tensor's bytes.
  const std::string weights = JoinPath(dir, "model.safetensors");
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<TensorData> tensors;
  {
    auto file = SafetensorsFile::Open(weights);
    ASSERT_TRUE(file.ok()) << file.status();
    bool found = false;
    for (const TensorInfo& t : (*file)->tensors()) {
      bytes.emplace_back(t.data, t.data + t.nbytes);
      if (t.name == "model.norm.weight") {
        std::fill(bytes.back().begin(), bytes.back().end(), 0);
        found = true;
      }
      tensors.push_back({t.name, t.dtype, t.shape, nullptr, t.nbytes});
    }
    ASSERT_TRUE(found) << "no model.norm.weight in " << weights;
  }
  for (size_t i = 0; i < tensors.size(); ++i) tensors[i].data = bytes[i].data();
  ASSERT_TRUE(WriteSafetensors(weights, tensors).ok());
  std::filesystem::remove(JoinPath(dir, "model.safetensors.index.json"));

  auto toy = ReadFile(JoinPath(LIGHTRL_SOURCE_DIR, "examples/toy/tokenizer.json"));
  ASSERT_TRUE(toy.ok()) << toy.status();
  auto json = Json::Parse(*toy);
  ASSERT_TRUE(json.ok());
  Json bpe = *json->find("model");
  Json vocab = *bpe.find("vocab");
  std::string zero_key;
  for (const auto& [key, id] : vocab.as_object()) {
    if (id.as_int() == 0) zero_key = key;
  }
  const std::string key(1, text);
  ASSERT_NE(vocab.find(key), nullptr) << key;
  const int64_t id = vocab.find(key)->as_int();
  vocab.set(key, Json(int64_t{0}));
  vocab.set(zero_key, Json(id));
  bpe.set("vocab", std::move(vocab));
  json->set("model", std::move(bpe));
  ASSERT_TRUE(WriteFileAtomic(JoinPath(dir, "tokenizer.json"), json->Dump()).ok());
}

RewardInput Item(int i) {
  RewardInput in;
  in.prompt = absl::StrCat("What is ", i, " + 1?");
  in.response = absl::StrCat(i + 1);
  in.ground_truth = absl::StrCat(i + 1);
  return in;
}

Json Options(const std::string& model, const std::string& extra_json = "{}") {
  auto json = Json::Parse(extra_json);
  EXPECT_TRUE(json.ok());
  json->set("model", Json(model));
  return *json;
}

class GenrmTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    RegisterGenrmRewardKind();
    std::string tmpl = JoinPath(::testing::TempDir(), "genrm_test.XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = new std::string(tmpl);
    WriteJudge(JoinPath(*dir_, "seven"), '7');
    WriteJudge(JoinPath(*dir_, "yes"), 'y');
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }
  static std::string Judge(const std::string& name) { return JoinPath(*dir_, name); }
  static std::string* dir_;
};
std::string* GenrmTest::dir_ = nullptr;

TEST(GenrmTemplateTest, FillsThePlaceholdersOnceAndKeepsEscapedBraces) {
  RewardInput in;
  in.prompt = "Q {response}";
  in.response = "A";
  in.ground_truth = "R";
  auto text = FillGenrmTemplate("{{json}}: {prompt} / {response} / {reference}", in);
  ASSERT_TRUE(text.ok()) << text.status();
  // The prompt's own "{response}" is text, not a placeholder.
  EXPECT_EQ(*text, "{json}: Q {response} / A / R");
}

TEST(GenrmTemplateTest, BadTemplatesAreErrorsNamingWhatIsWrong) {
  EXPECT_NE(CheckGenrmTemplate("{prompt} {answer}").message().find("unknown placeholder {answer}"),
            std::string::npos);
  EXPECT_NE(CheckGenrmTemplate("{response} {prompt").message().find("a \"{\" at byte 11 is not closed"),
            std::string::npos);
  EXPECT_NE(CheckGenrmTemplate("{response} }").message().find("a lone \"}\" at byte 11"),
            std::string::npos);
  EXPECT_NE(CheckGenrmTemplate("{prompt} only").message().find("must contain {response}"),
            std::string::npos);
  EXPECT_TRUE(CheckGenrmTemplate("{response}").ok());
}

TEST(GenrmParseTest, VerdictIsTheFirstWholeWord) {
  GenrmOptions o;
  EXPECT_EQ(ParseGenrmVote("Yes, it is right.", o), 1.0);
  EXPECT_EQ(ParseGenrmVote("No. Yes would be wrong", o), 0.0);
  EXPECT_EQ(ParseGenrmVote("I know it: nothing else, yes", o), 1.0);  // not "no" in "know"
  EXPECT_EQ(ParseGenrmVote("unclear", o), std::nullopt);
  EXPECT_EQ(ParseGenrmVote("", o), std::nullopt);
  // Only the first kMaxGenrmParseBytes are read.
  EXPECT_EQ(ParseGenrmVote(std::string(kMaxGenrmParseBytes, ' ') + "yes", o), std::nullopt);
  o.positive = "CORRECT";
  o.negative = "incorrect";
  EXPECT_EQ(ParseGenrmVote("incorrect", o), 0.0);
  EXPECT_EQ(ParseGenrmVote("correct", o), 1.0);
}

TEST(GenrmParseTest, ScoreIsTheFirstNumberInRange) {
  GenrmOptions o;
  o.parse = "score";
  o.max_score = 10;
  EXPECT_EQ(ParseGenrmVote("Score: 7/10", o), 0.7);
  EXPECT_EQ(ParseGenrmVote("8.5", o), 0.85);
  EXPECT_EQ(ParseGenrmVote("10", o), 1.0);
  EXPECT_EQ(ParseGenrmVote("11", o), std::nullopt);
  EXPECT_EQ(ParseGenrmVote("-3", o), std::nullopt);
  EXPECT_EQ(ParseGenrmVote("none", o), std::nullopt);
  EXPECT_EQ(ParseGenrmVote(std::string(40, '1'), o), std::nullopt);
}

TEST(GenrmOptionsTest, TheRegistryChecksTheOptions) {
  RegisterGenrmRewardKind();
  ASSERT_NE(FindRewardKind("genrm"), nullptr);
  EXPECT_EQ(FindRewardKind("genrm")->parallel_items, kMaxGenrmBatch);
  auto missing = ResolveRewardOptions("genrm", Json(), "reward.options.genrm");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("reward.options.genrm: genrm: model is required"),
            std::string::npos)
      << missing.status();
  auto greedy_votes = ResolveRewardOptions("genrm", Options("/m", R"({"votes": 3})"));
  ASSERT_FALSE(greedy_votes.ok());
  EXPECT_NE(greedy_votes.status().message().find("votes 3 need temperature > 0"), std::string::npos);
  auto unknown = ResolveRewardOptions("genrm", Options("/m", R"({"vote": 3})"));
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("vote is not a known option of reward kind genrm"),
            std::string::npos)
      << unknown.status();
  auto bad_template = ResolveRewardOptions("genrm", Options("/m", R"({"template": "{x}"})"));
  ASSERT_FALSE(bad_template.ok());
  EXPECT_NE(bad_template.status().message().find("unknown placeholder {x}"), std::string::npos);
  auto ok = ResolveRewardOptions("genrm", Options("/m"));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->find("parse")->as_string(), "verdict");
}

TEST_F(GenrmTest, AMissingModelFolderIsAnErrorNamingIt) {
  auto f = MakeRewardFunction("genrm", Options(Judge("absent")));
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find(absl::StrCat("genrm: model ", Judge("absent"))), std::string::npos)
      << f.status();
}

TEST_F(GenrmTest, AGreedyJudgeScoresFromItsVerdictWithItsTextAsTheNote) {
  auto score = MakeRewardFunction("genrm", Options(Judge("seven"),
                                                   R"({"parse": "score", "max_new_tokens": 1})"));
  ASSERT_TRUE(score.ok()) << score.status();
  auto r = (*score)->Score(Item(1));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_DOUBLE_EQ(r->score, 0.7);
  EXPECT_EQ(r->note, "7");
  EXPECT_EQ(r->components,
            (std::vector<std::pair<std::string, double>>{{"judge", 0.7}, {"parsed_votes", 1.0}}));

  // Three tokens "777" are one number past the scale: unparsed.
  auto past = MakeRewardFunction("genrm", Options(Judge("seven"),
                                                  R"({"parse": "score", "max_new_tokens": 3,
                                                      "unparsed_score": 0.25})"));
  ASSERT_TRUE(past.ok()) << past.status();
  r = (*past)->Score(Item(1));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_DOUBLE_EQ(r->score, 0.25);
  EXPECT_EQ(r->note, "777");
  EXPECT_EQ(r->components[1].second, 0.0);

  auto verdict = MakeRewardFunction("genrm", Options(Judge("yes"), R"({"positive": "y",
                                                                      "negative": "n",
                                                                      "max_new_tokens": 1})"));
  ASSERT_TRUE(verdict.ok()) << verdict.status();
  r = (*verdict)->Score(Item(2));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_DOUBLE_EQ(r->score, 1.0);
  EXPECT_EQ(r->note, "y");
}

TEST_F(GenrmTest, SampledVotesDependOnTheItemNotOnTheBatchItIsJudgedIn) {
  // All logits are 0: a sampled vote is a uniform draw, a function of the seed and item.
  const std::string options = R"({"parse": "score", "temperature": 1.0, "votes": 5,
                                   "max_new_tokens": 2, "seed": 9, "max_batch": 8})";
  auto alone = MakeRewardFunction("genrm", Options(Judge("seven"), options));
  ASSERT_TRUE(alone.ok()) << alone.status();
  std::vector<RewardResult> one_by_one;
  for (int i = 0; i < 8; ++i) {
    auto r = (*alone)->Score(Item(i));
    ASSERT_TRUE(r.ok()) << r.status();
    one_by_one.push_back(*r);
  }
  auto batched = MakeRewardFunction("genrm", Options(Judge("seven"), options));
  ASSERT_TRUE(batched.ok());
  std::vector<absl::StatusOr<RewardResult>> together(8, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] { together[i] = (*batched)->Score(Item(7 - i)); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(together[7 - i].ok()) << together[7 - i].status();
    EXPECT_EQ(together[7 - i]->score, one_by_one[i].score) << i;
    EXPECT_EQ(together[7 - i]->note, one_by_one[i].note) << i;
  }
  // Different items drew different votes.
  bool differ = false;
  for (int i = 1; i < 8; ++i) differ |= one_by_one[i].note != one_by_one[0].note;
  EXPECT_TRUE(differ);
}

TEST_F(GenrmTest, AnItemPastItsTimeoutFailsDeadlineExceeded) {
  auto f = MakeRewardFunction("genrm", Options(Judge("seven"), R"({"timeout_s": 1e-6,
                                                                  "max_new_tokens": 64})"));
  ASSERT_TRUE(f.ok()) << f.status();
  auto r = (*f)->Score(Item(1));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(r.status().message().find("genrm: judging took longer than timeout_s"), std::string::npos);
  // The judge goes on with the next item.
  auto g = MakeRewardFunction("genrm", Options(Judge("seven"), R"({"parse": "score", "max_new_tokens": 1})"));
  ASSERT_TRUE(g.ok());
  EXPECT_TRUE((*g)->Score(Item(2)).ok());
}

TEST_F(GenrmTest, AReplyTooLongForTheJudgeFailsThatItem) {
  auto f = MakeRewardFunction("genrm", Options(Judge("seven"), R"({"max_prompt_tokens": 16})"));
  ASSERT_TRUE(f.ok()) << f.status();
  auto r = (*f)->Score(Item(1));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("more than max_prompt_tokens (16)"), std::string::npos)
      << r.status();
}

std::vector<RewardRequestItem> WireItems(int n) {
  std::vector<RewardRequestItem> items;
  for (int i = 0; i < n; ++i) {
    RewardRequestItem item;
    item.id = absl::StrCat("item-", i);
    const RewardInput in = Item(i);
    item.input = in;
    items.push_back(item);
  }
  return items;
}

void ExpectSevens(const std::string& address, int n) {
  RewardClientOptions co;
  co.address = address;
  co.deadline = absl::Seconds(120);
  auto client = RewardClient::Create(co);
  ASSERT_TRUE(client.ok()) << client.status();
  auto results = (*client)->Score(WireItems(n), "");
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), static_cast<size_t>(n));
  for (const RewardResponseItem& r : *results) {
    EXPECT_DOUBLE_EQ(r.result.score, 0.7) << r.id;
    EXPECT_EQ(r.text, "7") << r.id;  // the judge's text travels as ScoreResult.text
  }
}

TEST_F(GenrmTest, AServerSendsTheJudgesTextAsTheResultsNote) {
  auto f = MakeRewardFunction("genrm", Options(Judge("seven"), R"({"parse": "score", "max_new_tokens": 1})"));
  ASSERT_TRUE(f.ok()) << f.status();
  RewardServerOptions so;
  so.max_parallel_items = FindRewardKind("genrm")->parallel_items;
  auto server = RewardServer::Start(so, *std::move(f));
  ASSERT_TRUE(server.ok()) << server.status();
  ExpectSevens((*server)->address(), 12);
}

TEST_F(GenrmTest, RewardWorkerServesTheJudgeFromModel) {
  const char* bin = std::getenv("LIGHTRL_BIN");
  if (bin == nullptr) GTEST_SKIP() << "LIGHTRL_BIN is not set";
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  const std::string model = Judge("seven");
  std::vector<std::string> args = {bin, "reward-worker", "--kind", "genrm", "--model", model,
                                   "--options", R"({"parse": "score", "max_new_tokens": 1})"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  ASSERT_EQ(posix_spawn(&pid, bin, &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  std::string line;
  char c;
  while (line.size() < 256 && read(out[0], &c, 1) == 1 && c != '\n') line += c;
  close(out[0]);
  const std::string prefix = "listening on ";
  if (line.rfind(prefix, 0) == 0) ExpectSevens(line.substr(prefix.size()), 6);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_EQ(line.rfind(prefix, 0), 0u) << "reward-worker printed \"" << line << "\"";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

// `lightrl run` in spawn mode with the judge as its reward: the spawned
// `lightrl reward-worker --kind genrm` scores every sample 0.7, and the step logs the
// length-bias watch of the judge's score.
TEST_F(GenrmTest, ARunScoresWithTheJudgeInASpawnedRewardWorker) {
  const char* bin = std::getenv("LIGHTRL_BIN");
  if (bin == nullptr) GTEST_SKIP() << "LIGHTRL_BIN is not set";
  const std::string dir = JoinPath(*dir_, "run");
  std::filesystem::create_directories(dir);
  std::string data;
  for (int i = 0; i < 4; ++i) data += absl::StrCat("{\"prompt\": \"", i, "+1=\", \"answer\": \"", i + 1, "\"}\n");
  ASSERT_TRUE(WriteFileAtomic(JoinPath(dir, "train.jsonl"), data).ok());
  const std::string out = JoinPath(dir, "out");
  Json judge = Options(Judge("seven"), R"({"parse": "score", "max_new_tokens": 1})");
  const std::string config = absl::StrCat(R"({
    "run": {"output_dir": ")", out, R"(", "seed": 5, "steps": 2},
    "model": {"init_config": ")", LIGHTRL_SOURCE_DIR, R"(/configs/models/toy-arithmetic.json",
              "init_seed": 2, "tokenizer": ")", LIGHTRL_SOURCE_DIR, R"(/examples/toy/tokenizer.json"},
    "data": {"train": ")", JoinPath(dir, "train.jsonl"), R"("},
    "rollout": {"group_size": 2, "prompts_per_step": 2, "max_new_tokens": 8, "early_stop_window": 0},
    "algorithm": {"dynamic_sampling": false},
    "reward": {"weights": {"genrm": 1.0}, "options": {"genrm": )", judge.Dump(), R"(}},
    "checkpoint": {"every": 0},
    "logging": {"tensorboard": false, "progress": false},
    "fleet": {"mode": "spawn", "rollout_workers": 1, "spawn_reward_workers": true}})");
  ASSERT_TRUE(WriteFileAtomic(JoinPath(dir, "run.yaml"), config).ok());
  std::vector<std::string> args = {bin, "run", "--config", JoinPath(dir, "run.yaml")};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  const std::string log = JoinPath(dir, "run.log");
  posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  ASSERT_EQ(posix_spawn(&pid, bin, &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  int status = 0;
  waitpid(pid, &status, 0);
  auto log_text = ReadFile(log);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "lightrl run failed:\n" << (log_text.ok() ? log_text->substr(log_text->size() > 3000 ? log_text->size() - 3000 : 0) : "");
  EXPECT_TRUE(std::filesystem::exists(JoinPath(out, "logs/reward-local-genrm.log")));
  auto metrics = ReadFile(JoinPath(out, "metrics.jsonl"));
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  int steps = 0;
  for (absl::string_view line : absl::StrSplit(*metrics, '\n', absl::SkipEmpty())) {
    auto row = Json::Parse(line);
    ASSERT_TRUE(row.ok()) << line;
    const Json* mean = row->find("reward/mean");
    if (mean == nullptr) continue;
    ++steps;
    EXPECT_NEAR(mean->as_double(), 0.7, 1e-9) << line;
    const Json* corr = row->find("reward/genrm/judge/length_corr");
    ASSERT_NE(corr, nullptr) << line;
    EXPECT_EQ(corr->as_double(), 0.0) << line;  // a constant judge
    ASSERT_NE(row->find("reward/length_corr"), nullptr) << line;
  }
  EXPECT_EQ(steps, 2);
}

}  // namespace
}  // namespace lightrl
