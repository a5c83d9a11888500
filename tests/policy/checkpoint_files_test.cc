// The files that make a checkpoint usable on its own: tokenizer.json copied byte for byte,
// tokenizer_config.json naming the end token, generation_config.json read back as written,
// the default end ids, and what `lightrl convert` carries over.
#include "policy/checkpoint_files.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>
#include <vector>

#include "common/file_util.h"
#include "common/json.h"

namespace lightrl {
namespace {

const std::string kToyTokenizer = std::string(LIGHTRL_SOURCE_DIR) + "/examples/toy/tokenizer.json";

std::string MakeTempDir() {
  std::string pattern = JoinPath(testing::TempDir(), "checkpoint_files_test.XXXXXX");
  char* made = ::mkdtemp(pattern.data());
  EXPECT_NE(made, nullptr);
  return pattern;
}

Json ReadJson(const std::string& path) {
  auto text = ReadFile(path);
  EXPECT_TRUE(text.ok()) << text.status();
  auto json = Json::Parse(*text);
  EXPECT_TRUE(json.ok()) << path << ": " << json.status();
  return *json;
}

Tokenizer ToyTokenizer() {
  auto t = Tokenizer::FromFile(kToyTokenizer);
  EXPECT_TRUE(t.ok()) << t.status();
  return *t;
}

TEST(CheckpointFilesTest, WritesTokenizerAndGenerationConfig) {
  const std::string dir = MakeTempDir();
  const Tokenizer tokenizer = ToyTokenizer();
  GenerationConfigFile g;
  g.eos_token_ids = {256};
  g.max_new_tokens = 64;
  g.temperature = 0.7;
  g.top_p = 0.9;
  g.top_k = 0;
  g.stop_strings = {"\n\n"};
  ASSERT_TRUE(WriteGenerationFiles(dir, kToyTokenizer, tokenizer, g, 512).ok());

  EXPECT_EQ(*ReadFile(JoinPath(dir, "tokenizer.json")), *ReadFile(kToyTokenizer));
  const Json config = ReadJson(JoinPath(dir, "tokenizer_config.json"));
  ASSERT_NE(config.find("eos_token"), nullptr);
  EXPECT_EQ(config.find("eos_token")->as_string(), "<|endoftext|>");
  EXPECT_EQ(config.find("bos_token"), nullptr);  // the toy model has none
  EXPECT_EQ(config.find("tokenizer_class")->as_string(), "PreTrainedTokenizerFast");
  EXPECT_EQ(config.find("model_max_length")->as_int(), 512);

  const Json raw = ReadJson(JoinPath(dir, "generation_config.json"));
  EXPECT_EQ(raw.find("eos_token_id")->as_int(), 256);
  EXPECT_TRUE(raw.find("do_sample")->as_bool());
  // transformers' default top_k is 50: "no filter" must be written out.
  ASSERT_NE(raw.find("top_k"), nullptr);
  EXPECT_EQ(raw.find("top_k")->as_int(), 0);

  auto read = ReadGenerationConfig(dir);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(read->has_value());
  const GenerationConfigFile& back = **read;
  EXPECT_EQ(back.eos_token_ids, std::vector<int64_t>{256});
  EXPECT_FALSE(back.bos_token_id.has_value());
  EXPECT_EQ(back.max_new_tokens, 64);
  EXPECT_DOUBLE_EQ(*back.temperature, 0.7);
  EXPECT_DOUBLE_EQ(*back.top_p, 0.9);
  EXPECT_EQ(back.top_k, 0);
  EXPECT_EQ(back.stop_strings, std::vector<std::string>{"\n\n"});
}

TEST(CheckpointFilesTest, GreedyIsDoSampleFalse) {
  const std::string dir = MakeTempDir();
  GenerationConfigFile g;
  g.bos_token_id = 1;
  g.eos_token_ids = {256, 2};
  g.temperature = 0;
  g.top_p = 0.5;
  ASSERT_TRUE(WriteGenerationFiles(dir, kToyTokenizer, ToyTokenizer(), g, 0).ok());
  const Json raw = ReadJson(JoinPath(dir, "generation_config.json"));
  EXPECT_FALSE(raw.find("do_sample")->as_bool());
  EXPECT_EQ(raw.find("temperature"), nullptr);
  EXPECT_EQ(raw.find("top_p"), nullptr);
  EXPECT_EQ(raw.find("bos_token_id")->as_int(), 1);
  EXPECT_EQ(raw.find("eos_token_id")->Dump(), "[256,2]");
  auto back = ReadGenerationConfig(dir);
  ASSERT_TRUE(back.ok() && back->has_value());
  EXPECT_EQ((*back)->temperature, 0.0);
  EXPECT_EQ((*back)->eos_token_ids, (std::vector<int64_t>{256, 2}));

  const Json config = ReadJson(JoinPath(dir, "tokenizer_config.json"));
  EXPECT_EQ(config.find("eos_token")->as_string(), "<|endoftext|>");
  // Id 1 is the byte-level token for byte 0x01.
  EXPECT_EQ(config.find("bos_token")->as_string(), ToyTokenizer().IdToToken(1));
  EXPECT_EQ(config.find("model_max_length"), nullptr);
}

TEST(CheckpointFilesTest, KeepsTheTokenizerConfigBesideTheTokenizer) {
  const std::string src = MakeTempDir();
  ASSERT_TRUE(WriteFileAtomic(JoinPath(src, "tokenizer.json"), *ReadFile(kToyTokenizer)).ok());
  ASSERT_TRUE(WriteFileAtomic(JoinPath(src, "tokenizer_config.json"),
                              R"({"chat_template": "{{ x }}", "eos_token": "<|im_end|>"})")
                  .ok());
  const std::string dir = MakeTempDir();
  GenerationConfigFile g;
  g.eos_token_ids = {256};
  ASSERT_TRUE(WriteGenerationFiles(dir, src, ToyTokenizer(), g, 0).ok());
  const Json config = ReadJson(JoinPath(dir, "tokenizer_config.json"));
  EXPECT_EQ(config.find("chat_template")->as_string(), "{{ x }}");
  EXPECT_EQ(config.find("eos_token")->as_string(), "<|im_end|>");
}

TEST(CheckpointFilesTest, NoGenerationConfigIsNotAnError) {
  auto read = ReadGenerationConfig(MakeTempDir());
  ASSERT_TRUE(read.ok());
  EXPECT_FALSE(read->has_value());
}

TEST(CheckpointFilesTest, WrongTypesNameFileAndKey) {
  const std::string dir = MakeTempDir();
  const std::string path = JoinPath(dir, "generation_config.json");
  ASSERT_TRUE(WriteFileAtomic(path, R"({"eos_token_id": "x"})").ok());
  auto read = ReadGenerationConfig(dir);
  ASSERT_FALSE(read.ok());
  EXPECT_NE(read.status().message().find(path + ": eos_token_id must be"), std::string::npos)
      << read.status();
  ASSERT_TRUE(WriteFileAtomic(path, R"({"do_sample": true, "top_k": 1.5})").ok());
  read = ReadGenerationConfig(dir);
  ASSERT_FALSE(read.ok());
  EXPECT_NE(read.status().message().find("top_k must be an integer"), std::string::npos);
  // transformers' own keys beside ours are fine.
  ASSERT_TRUE(WriteFileAtomic(path, R"({"eos_token_id": 3, "pad_token_id": 0,
                                        "transformers_version": "4.57.0"})")
                  .ok());
  read = ReadGenerationConfig(dir);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ((*read)->eos_token_ids, std::vector<int64_t>{3});
  EXPECT_FALSE((*read)->temperature.has_value());  // no do_sample: the reader's default
}

TEST(CheckpointFilesTest, DefaultEndTokenIds) {
  const Tokenizer tokenizer = ToyTokenizer();
  ModelConfig config;
  EXPECT_EQ(DefaultEndTokenIds(config, nullptr), std::vector<int64_t>{});
  EXPECT_EQ(DefaultEndTokenIds(config, &tokenizer), std::vector<int64_t>{256});
  config.eos_token_ids = {7, 256};
  EXPECT_EQ(DefaultEndTokenIds(config, &tokenizer), (std::vector<int64_t>{7, 256}));
}

TEST(CheckpointFilesTest, CopyCarriesWhatIsThere) {
  const std::string from = MakeTempDir();
  const std::string to = MakeTempDir();
  GenerationConfigFile g;
  g.eos_token_ids = {256};
  ASSERT_TRUE(WriteGenerationFiles(from, kToyTokenizer, ToyTokenizer(), g, 0).ok());
  auto copied = CopyGenerationFiles(from, to);
  ASSERT_TRUE(copied.ok()) << copied.status();
  EXPECT_EQ(*copied, (std::vector<std::string>{"tokenizer.json", "tokenizer_config.json",
                                               "generation_config.json"}));
  for (const std::string& name : *copied) {
    EXPECT_EQ(*ReadFile(JoinPath(to, name)), *ReadFile(JoinPath(from, name))) << name;
  }
}

}  // namespace
}  // namespace lightrl
