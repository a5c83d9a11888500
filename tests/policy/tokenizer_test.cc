// Tokenizer behaviour on small tokenizer.json files written here: BPE merge order,
// pre-tokenizer boundaries, added/special tokens, decoding, and load-time errors. Exact
// parity with HuggingFace `tokenizers` is tests/python/test_tokenizer_parity.py's job.
#include "policy/tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/json.h"

namespace lightrl {
namespace {

// GPT-2's byte alphabet, from its definition: printable Latin-1 bytes stand for
// themselves, every other byte for U+0100 + (its rank among the non-printable bytes).
std::string ByteChar(int b) {
  auto printable = [](int x) {
    return (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174;
  };
  int cp = b;
  if (!printable(b)) {
    cp = 256;
    for (int x = 0; x < b; ++x) cp += printable(x) ? 0 : 1;
  }
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

std::string Space() { return ByteChar(' '); }     // "Ġ"
std::string Newline() { return ByteChar('\n'); }  // "Ċ"

constexpr const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3})"
    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string Quote(absl::string_view s) {
  std::string out;
  AppendJsonString(out, s);
  return out;
}

struct AddedSpec {
  std::string content;
  bool special = true;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

// A tokenizer.json: the 256 byte characters (ids 0..255, in byte order), then one token
// per merge, then the added tokens (ids continue after the vocabulary, as HF requires).
struct Spec {
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<std::string> extra_vocab;  // tokens no merge produces
  std::vector<AddedSpec> added;
  bool merges_as_strings = false;
  bool ignore_merges = false;
  std::string pre_tokenizer =
      R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})";

  std::vector<std::string> VocabTokens() const {
    std::vector<std::string> tokens;
    for (int b = 0; b < 256; ++b) tokens.push_back(ByteChar(b));
    for (const auto& [left, right] : merges) tokens.push_back(left + right);
    for (const std::string& t : extra_vocab) tokens.push_back(t);
    return tokens;
  }

  std::string ToJson() const {
    std::vector<std::string> vocab;
    std::vector<std::string> tokens = VocabTokens();
    for (size_t i = 0; i < tokens.size(); ++i)
      vocab.push_back(absl::StrCat(Quote(tokens[i]), ":", i));
    std::vector<std::string> merge_list;
    for (const auto& [left, right] : merges) {
      merge_list.push_back(merges_as_strings
                               ? Quote(left + " " + right)
                               : absl::StrCat("[", Quote(left), ",", Quote(right), "]"));
    }
    std::vector<std::string> added_list;
    for (size_t i = 0; i < added.size(); ++i) {
      const AddedSpec& a = added[i];
      added_list.push_back(absl::StrCat(
          R"({"id":)", tokens.size() + i, R"(,"content":)", Quote(a.content), R"(,"single_word":)",
          a.single_word ? "true" : "false", R"(,"lstrip":)", a.lstrip ? "true" : "false",
          R"(,"rstrip":)", a.rstrip ? "true" : "false", R"(,"normalized":)",
          a.special ? "false" : "true", R"(,"special":)", a.special ? "true" : "false", "}"));
    }
    return absl::StrCat(
        R"({"version":"1.0","truncation":null,"padding":null,"added_tokens":[)",
        absl::StrJoin(added_list, ","), R"(],"normalizer":null,"pre_tokenizer":)", pre_tokenizer,
        R"(,"post_processor":{"type":"ByteLevel","add_prefix_space":false,)",
        R"("trim_offsets":false,"use_regex":true},)",
        R"("decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,)",
        R"("use_regex":true},)", R"("model":{"type":"BPE","dropout":null,"unk_token":null,)",
        R"("continuing_subword_prefix":null,)",
        R"("end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":)",
        ignore_merges ? "true" : "false", R"(,"vocab":{)", absl::StrJoin(vocab, ","),
        R"(},"merges":[)", absl::StrJoin(merge_list, ","), "]}}");
  }
};

absl::StatusOr<Tokenizer> Load(const std::string& json_text) {
  absl::StatusOr<Json> json = Json::Parse(json_text);
  if (!json.ok()) return json.status();
  return Tokenizer::FromJson(*json, "test/tokenizer.json");
}

Tokenizer MustLoad(const Spec& spec) {
  absl::StatusOr<Tokenizer> tokenizer = Load(spec.ToJson());
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return *std::move(tokenizer);
}

int32_t Id(const Tokenizer& tokenizer, const std::string& token) {
  std::optional<int32_t> id = tokenizer.TokenToId(token);
  EXPECT_TRUE(id.has_value()) << "no token " << token;
  return id.value_or(-1);
}

std::vector<int32_t> Ids(const Tokenizer& tokenizer, const std::vector<std::string>& tokens) {
  std::vector<int32_t> ids;
  for (const std::string& t : tokens) ids.push_back(Id(tokenizer, t));
  return ids;
}

std::vector<int32_t> MustEncode(const Tokenizer& tokenizer, absl::string_view text,
                                bool parse_special = true) {
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(text, parse_special);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

std::string MustDecode(const Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                       bool skip_special = false) {
  absl::StatusOr<std::string> text = tokenizer.Decode(ids, skip_special);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : std::string();
}

Spec HelloWorldSpec() {
  Spec spec;
  spec.merges = {{"h", "e"},
                 {"l", "l"},
                 {"ll", "o"},
                 {"he", "llo"},
                 {Space(), "w"},
                 {"o", "r"},
                 {Space() + "w", "or"},
                 {"l", "d"},
                 {Space() + "wor", "ld"}};
  spec.added = {{"<|im_start|>"}, {"<|im_end|>"}, {"<think>", /*special=*/false}};
  return spec;
}

TEST(TokenizerTest, MergesWordsAndDecodesBack) {
  Tokenizer tokenizer = MustLoad(HelloWorldSpec());
  EXPECT_EQ(MustEncode(tokenizer, "hello world!"),
            Ids(tokenizer, {"hello", Space() + "world", "!"}));
  // "hel" stops at "he"+"l": "l l" needs a second l, and no rule joins "he" and "l".
  EXPECT_EQ(MustEncode(tokenizer, "hel"), Ids(tokenizer, {"he", "l"}));
  EXPECT_TRUE(MustEncode(tokenizer, "").empty());
  for (const char* text :
       {"hello world!", "  two  spaces\n\nand\ttabs ", "naïve café 東京 🙂",
        "e\xCC\x81 and \xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D", "x = f(3.14) + 42;"}) {
    EXPECT_EQ(MustDecode(tokenizer, MustEncode(tokenizer, text)), text);
  }
}

TEST(TokenizerTest, LowestRankMergesFirst) {
  Spec bc_first;
  bc_first.merges = {{"b", "c"}, {"a", "b"}};
  Spec ab_first;
  ab_first.merges = {{"a", "b"}, {"b", "c"}};
  Tokenizer t1 = MustLoad(bc_first);
  Tokenizer t2 = MustLoad(ab_first);
  EXPECT_EQ(MustEncode(t1, "abc"), Ids(t1, {"a", "bc"}));
  EXPECT_EQ(MustEncode(t2, "abc"), Ids(t2, {"ab", "c"}));
  // Among equal pairs the leftmost merges first: "aaa" -> "aa" + "a".
  Spec aa;
  aa.merges = {{"a", "a"}};
  Tokenizer t3 = MustLoad(aa);
  EXPECT_EQ(MustEncode(t3, "aaa"), Ids(t3, {"aa", "a"}));
}

TEST(TokenizerTest, StringAndPairMergesAgree) {
  Spec pairs = HelloWorldSpec();
  Spec strings = HelloWorldSpec();
  strings.merges_as_strings = true;
  Tokenizer a = MustLoad(pairs);
  Tokenizer b = MustLoad(strings);
  const std::string text = "hello world, hello\nworld";
  EXPECT_EQ(MustEncode(a, text), MustEncode(b, text));
}

TEST(TokenizerTest, IgnoreMergesTakesWholeVocabWords) {
  Spec spec;
  spec.extra_vocab = {"hello"};  // no merge path reaches it
  Tokenizer plain = MustLoad(spec);
  spec.ignore_merges = true;
  Tokenizer ignoring = MustLoad(spec);
  EXPECT_EQ(MustEncode(plain, "hello"), Ids(plain, {"h", "e", "l", "l", "o"}));
  EXPECT_EQ(MustEncode(ignoring, "hello"), Ids(ignoring, {"hello"}));
}

TEST(TokenizerTest, SpecialTokensAreSingleIds) {
  Tokenizer tokenizer = MustLoad(HelloWorldSpec());
  const int32_t start = Id(tokenizer, "<|im_start|>");
  const int32_t end = Id(tokenizer, "<|im_end|>");
  EXPECT_TRUE(tokenizer.IsSpecial(start));
  EXPECT_FALSE(tokenizer.IsSpecial(Id(tokenizer, "<think>")));
  const std::string text = "<|im_start|>hello world<|im_end|>";
  std::vector<int32_t> expected = {start};
  for (int32_t id : MustEncode(tokenizer, "hello world")) expected.push_back(id);
  expected.push_back(end);
  EXPECT_EQ(MustEncode(tokenizer, text), expected);
  EXPECT_EQ(MustDecode(tokenizer, expected), text);
  EXPECT_EQ(MustDecode(tokenizer, expected, /*skip_special=*/true), "hello world");

  // Without parse_special the markers are plain text; non-special added tokens still match.
  std::vector<int32_t> as_text = MustEncode(tokenizer, text, /*parse_special=*/false);
  for (int32_t id : as_text) EXPECT_FALSE(tokenizer.IsSpecial(id));
  EXPECT_EQ(MustDecode(tokenizer, as_text), text);
  std::vector<int32_t> think = MustEncode(tokenizer, "<think>", /*parse_special=*/false);
  EXPECT_EQ(think, std::vector<int32_t>{Id(tokenizer, "<think>")});
}

TEST(TokenizerTest, LongestAddedTokenWins) {
  Spec spec;
  spec.added = {{"<a>"}, {"<a><b>"}};
  Tokenizer tokenizer = MustLoad(spec);
  EXPECT_EQ(MustEncode(tokenizer, "<a><b><a>"), Ids(tokenizer, {"<a><b>", "<a>"}));
}

TEST(TokenizerTest, LstripAndRstripSwallowWhitespace) {
  Spec spec;
  spec.added = {{"<L>", true, /*lstrip=*/true}, {"<R>", true, false, /*rstrip=*/true}};
  Tokenizer tokenizer = MustLoad(spec);
  auto concat = [](std::vector<std::vector<int32_t>> parts) {
    std::vector<int32_t> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  };
  const int32_t l = Id(tokenizer, "<L>");
  const int32_t r = Id(tokenizer, "<R>");
  EXPECT_EQ(MustEncode(tokenizer, "a \t<L> b"),
            concat({MustEncode(tokenizer, "a"), {l}, MustEncode(tokenizer, " b")}));
  EXPECT_EQ(MustEncode(tokenizer, "a <R>  \n b"),
            concat({MustEncode(tokenizer, "a "), {r}, MustEncode(tokenizer, "b")}));
}

TEST(TokenizerTest, SingleWordTokensNeedWordBoundaries) {
  Spec spec;
  spec.added = {{"cat", /*special=*/false, false, false, /*single_word=*/true}};
  Tokenizer tokenizer = MustLoad(spec);
  const int32_t cat = Id(tokenizer, "cat");
  std::vector<int32_t> alone = MustEncode(tokenizer, "a cat.");
  EXPECT_NE(std::find(alone.begin(), alone.end(), cat), alone.end());
  std::vector<int32_t> inside = MustEncode(tokenizer, "concatenate");
  EXPECT_EQ(std::find(inside.begin(), inside.end(), cat), inside.end());
}

TEST(TokenizerTest, Gpt2PatternKeepsLastSpaceForNextWord) {
  Spec spec;
  spec.merges = {{Space(), Space()}, {Newline(), Newline()}};
  Tokenizer tokenizer = MustLoad(spec);
  // "  b": the run gives up its last space to " b", so the two spaces never meet.
  EXPECT_EQ(MustEncode(tokenizer, "a  b"), Ids(tokenizer, {"a", Space(), Space(), "b"}));
  // At the end of the text the run stays whole.
  EXPECT_EQ(MustEncode(tokenizer, "a  "), Ids(tokenizer, {"a", Space() + Space()}));
  // Line breaks are white space like any other here: "\n\nb" is "\n" (\s+(?!\S)), "\n".
  EXPECT_EQ(MustEncode(tokenizer, "a\n\nb"), Ids(tokenizer, {"a", Newline(), Newline(), "b"}));
  EXPECT_EQ(MustEncode(tokenizer, "a\n\n"), Ids(tokenizer, {"a", Newline() + Newline()}));
}

TEST(TokenizerTest, Gpt2RegexAsSplitStepMatchesByteLevelRegex) {
  Spec builtin = HelloWorldSpec();
  builtin.merges.push_back({Space(), Space()});
  Spec split = builtin;
  split.pre_tokenizer =
      absl::StrCat(R"({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":)",
                   Quote(kGpt2Regex), R"(},"behavior":"Isolated","invert":false},)",
                   R"({"type":"ByteLevel","add_prefix_space":false,"use_regex":false}]})");
  Tokenizer a = MustLoad(builtin);
  Tokenizer b = MustLoad(split);
  for (const char* text : {"hello   world", "it's 2024\n\n  hello!", "  "}) {
    EXPECT_EQ(MustEncode(a, text), MustEncode(b, text)) << text;
  }
}

TEST(TokenizerTest, AddPrefixSpaceAppliesToEveryPieceAfterAddedTokens) {
  Spec spec = HelloWorldSpec();
  spec.pre_tokenizer = R"({"type":"ByteLevel","add_prefix_space":true,"use_regex":true})";
  Tokenizer tokenizer = MustLoad(spec);
  EXPECT_EQ(MustEncode(tokenizer, "world"), Ids(tokenizer, {Space() + "world"}));
  EXPECT_EQ(MustEncode(tokenizer, "<|im_start|>world"),
            Ids(tokenizer, {"<|im_start|>", Space() + "world"}));
}

TEST(TokenizerTest, Llama3SplitLimitsDigitRunsAndFoldsContractions) {
  Spec spec;
  const std::string long_s = ByteChar(0xC5) + ByteChar(0xBF);  // U+017F as byte characters
  spec.merges = {{"S", "a"},
                 {"3", "4"},
                 {"1", "2"},
                 {"12", "3"},
                 {"4", "5"},
                 {"'", "S"},
                 {Newline(), Newline()},
                 {ByteChar(0xC5), ByteChar(0xBF)},
                 {long_s, "a"},
                 {"'", long_s}};
  spec.pre_tokenizer = absl::StrCat(
      R"({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":)",
      Quote(kLlama3Regex), R"(},"behavior":"Isolated","invert":false},)",
      R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})");
  Tokenizer tokenizer = MustLoad(spec);
  // As one word "3 4" (rank 0) would merge first; \p{N}{1,3} cuts before the 4.
  EXPECT_EQ(MustEncode(tokenizer, "12345"), Ids(tokenizer, {"123", "45"}));
  // (?i:'s) makes "'S" a piece of its own: "S a" (rank 0) would win inside "'Sa".
  EXPECT_EQ(MustEncode(tokenizer, "'Sa"), Ids(tokenizer, {"'S", "a"}));
  // Case folding is Unicode's: long s (U+017F) folds to 's', so "'\u017F" is a contraction.
  EXPECT_EQ(MustEncode(tokenizer,
                       "'\xC5\xBF"
                       "a"),
            Ids(tokenizer, {"'" + long_s, "a"}));
  // \s*[\r\n]+ keeps a run of line breaks together, unlike the GPT-2 pattern.
  EXPECT_EQ(MustEncode(tokenizer, "a\n\nb"), Ids(tokenizer, {"a", Newline() + Newline(), "b"}));
  const std::string text = "Don't STOP\r\n\r\n  believing 2024!!\n\tok";
  EXPECT_EQ(MustDecode(tokenizer, MustEncode(tokenizer, text)), text);
}

TEST(TokenizerTest, SplitBehaviours) {
  auto tokenizer_with = [](const std::string& behavior, bool invert) {
    Spec spec;
    spec.merges = {{"a", "-"}, {"-", "b"}, {"a", "b"}};
    spec.pre_tokenizer = absl::StrCat(
        R"({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"String":"-"},)",
        R"("behavior":")", behavior, R"(","invert":)", invert ? "true" : "false",
        R"(},{"type":"ByteLevel","add_prefix_space":false,"use_regex":false}]})");
    return MustLoad(spec);
  };
  Tokenizer removed = tokenizer_with("Removed", false);
  EXPECT_EQ(MustEncode(removed, "a-b"), Ids(removed, {"a", "b"}));
  Tokenizer isolated = tokenizer_with("Isolated", false);
  EXPECT_EQ(MustEncode(isolated, "a-b"), Ids(isolated, {"a", "-", "b"}));
  Tokenizer previous = tokenizer_with("MergedWithPrevious", false);
  EXPECT_EQ(MustEncode(previous, "a-b"), Ids(previous, {"a-", "b"}));
  Tokenizer next = tokenizer_with("MergedWithNext", false);
  EXPECT_EQ(MustEncode(next, "a-b"), Ids(next, {"a", "-b"}));
  // Inverted, the text between dashes is the delimiter and the dashes are kept.
  Tokenizer inverted = tokenizer_with("Removed", true);
  EXPECT_EQ(MustEncode(inverted, "a-b"), Ids(inverted, {"-"}));
}

TEST(TokenizerTest, DecodeReplacesCutCharactersAndRejectsBadIds) {
  Tokenizer tokenizer = MustLoad(HelloWorldSpec());
  std::vector<int32_t> ids = MustEncode(tokenizer, "é");  // two byte tokens
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(MustDecode(tokenizer, {ids[0]}), "\xEF\xBF\xBD");
  EXPECT_EQ(MustDecode(tokenizer, {ids[1], ids[0], ids[1]}),
            "\xEF\xBF\xBD"
            "é");

  const int32_t size = tokenizer.vocab_size();
  absl::StatusOr<std::string> bad = tokenizer.Decode(std::vector<int32_t>{1, size});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find(absl::StrCat("id ", size)), std::string::npos)
      << bad.status();
  EXPECT_NE(bad.status().message().find(absl::StrCat("vocab size ", size)), std::string::npos)
      << bad.status();
  EXPECT_FALSE(tokenizer.Decode(std::vector<int32_t>{-1}).ok());
}

TEST(TokenizerTest, VocabularyLookups) {
  Spec spec = HelloWorldSpec();
  Tokenizer tokenizer = MustLoad(spec);
  const int32_t expected_size = static_cast<int32_t>(spec.VocabTokens().size() + spec.added.size());
  EXPECT_EQ(tokenizer.vocab_size(), expected_size);
  EXPECT_EQ(tokenizer.IdToToken(Id(tokenizer, "<|im_end|>")), "<|im_end|>");
  EXPECT_EQ(tokenizer.IdToToken(Id(tokenizer, "hello")), "hello");
  EXPECT_EQ(tokenizer.IdToToken(expected_size), "");
  EXPECT_FALSE(tokenizer.TokenToId("not a token").has_value());
}

TEST(TokenizerTest, RejectsInvalidUtf8AndUnencodableBytes) {
  Tokenizer tokenizer = MustLoad(HelloWorldSpec());
  absl::StatusOr<std::vector<int32_t>> bad = tokenizer.Encode("ok \xC3(");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("UTF-8"), std::string::npos) << bad.status();

  // Without the byte characters of "é" and without unk_token, "é" cannot be encoded.
  std::string json = Spec().ToJson();
  for (int b : {0xC3, 0xA9}) {
    const std::string entry = absl::StrCat(Quote(ByteChar(b)), ":", b, ",");
    json.replace(json.find(entry), entry.size(), "");
  }
  absl::StatusOr<Tokenizer> partial = Load(json);
  ASSERT_TRUE(partial.ok()) << partial.status();
  absl::StatusOr<std::vector<int32_t>> unencodable = partial->Encode("café");
  ASSERT_FALSE(unencodable.ok());
  EXPECT_NE(unencodable.status().message().find("unk_token"), std::string::npos);
}

TEST(TokenizerTest, LongTextEncodesQuickly) {
  Spec spec = HelloWorldSpec();
  spec.merges.push_back({"a", "a"});
  spec.merges.push_back({"aa", "aa"});
  Tokenizer tokenizer = MustLoad(spec);
  std::mt19937 rng(7);
  const std::vector<std::string> words = {"hello", " world", "\n", "  ",
                                          "東京",  "🙂",   "42", "!?"};
  std::string text;
  while (text.size() < 100 * 1024) text += words[rng() % words.size()];
  text += std::string(50 * 1024, 'a');  // one 50 KB word: the merge loop must not be quadratic
  text += std::string(20 * 1024, ' ');
  const auto begin = std::chrono::steady_clock::now();
  std::vector<int32_t> ids = MustEncode(tokenizer, text);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  EXPECT_LT(seconds, 1.0);
  EXPECT_EQ(MustDecode(tokenizer, ids), text);
  std::vector<int32_t> run = MustEncode(tokenizer, std::string(4 * 1000 + 2, 'a'));
  EXPECT_EQ(run.size(), 1001u);  // 1000 "aaaa" then one "aa"
  EXPECT_EQ(run.back(), Id(tokenizer, "aa"));
}

// --- load errors name the field ---------------------------------------------------------

void ExpectLoadError(const std::string& json_text, const std::vector<std::string>& fragments) {
  absl::StatusOr<Tokenizer> tokenizer = Load(json_text);
  ASSERT_FALSE(tokenizer.ok()) << "loaded: " << json_text.substr(0, 200);
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(tokenizer.status().message());
  EXPECT_EQ(message.rfind("test/tokenizer.json: ", 0), 0u) << message;
  for (const std::string& fragment : fragments) {
    EXPECT_NE(message.find(fragment), std::string::npos)
        << "\"" << fragment << "\" not in: " << message;
  }
}

std::string Replace(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

TEST(TokenizerErrorsTest, MissingModel) {
  ExpectLoadError(R"({"version":"1.0","pre_tokenizer":{"type":"ByteLevel"}})",
                  {"model is missing"});
}

TEST(TokenizerErrorsTest, UnknownModelType) {
  const std::string json = Replace(Spec().ToJson(), R"("type":"BPE")", R"("type":"WordPiece")");
  ExpectLoadError(json, {R"(model.type must be "BPE", got "WordPiece")"});
}

TEST(TokenizerErrorsTest, BadMergeEntries) {
  Spec spec;
  spec.merges = {{"a", "b"}};
  spec.merges_as_strings = true;
  const std::string json = spec.ToJson();
  ExpectLoadError(Replace(json, R"("a b")", R"("a b c")"), {"model.merges[0]", "\"a b c\""});
  ExpectLoadError(Replace(json, R"("a b")", "42"), {"model.merges[0]", "number 42"});
  ExpectLoadError(Replace(json, R"("a b")", R"(["a"])"), {"model.merges[0]"});
  ExpectLoadError(Replace(json, R"("a b")", R"("a zz")"),
                  {"model.merges[0]", "\"zz\"", "not in model.vocab"});
  ExpectLoadError(Replace(json, R"("a b")", R"("a c")"),
                  {"model.merges[0]", "\"ac\"", "not in model.vocab"});
}

TEST(TokenizerErrorsTest, BadVocab) {
  const std::string json = Spec().ToJson();
  ExpectLoadError(Replace(json, R"("a":97)", R"("a":-3)"), {R"(model.vocab["a"])", "-3"});
  ExpectLoadError(Replace(json, R"("vocab":{)", R"("vocabulary":{)"), {"model.vocab is missing"});
  ExpectLoadError(Replace(json, R"("b":98)", R"("b":97)"),
                  {"model.vocab", "id 97", "\"a\"", "\"b\""});
}

TEST(TokenizerErrorsTest, UnsupportedPipelineParts) {
  const std::string json = Spec().ToJson();
  ExpectLoadError(Replace(json, R"("normalizer":null)", R"("normalizer":{"type":"NFC"})"),
                  {"normalizer", "\"NFC\"", "not supported"});
  ExpectLoadError(Replace(json, R"("byte_fallback":false)", R"("byte_fallback":true)"),
                  {"model.byte_fallback"});
  ExpectLoadError(
      Replace(json, R"("decoder":{"type":"ByteLevel")", R"("decoder":{"type":"Metaspace")"),
      {"decoder.type", "Metaspace"});
  Spec other_regex;
  other_regex.pre_tokenizer =
      R"({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\w+"},)"
      R"("behavior":"Isolated","invert":false},{"type":"ByteLevel","use_regex":false}]})";
  ExpectLoadError(other_regex.ToJson(), {"pre_tokenizer.pretokenizers[0].pattern.Regex",
                                         "not a supported regex", "\\w+"});
  Spec digits;
  digits.pre_tokenizer =
      R"({"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},)"
      R"({"type":"ByteLevel"}]})";
  ExpectLoadError(digits.ToJson(), {"pre_tokenizer.pretokenizers[0].type", "\"Digits\""});
  Spec no_byte_level;
  no_byte_level.pre_tokenizer =
      R"({"type":"Split","pattern":{"String":" "},"behavior":"Removed","invert":false})";
  ExpectLoadError(no_byte_level.ToJson(), {"pre_tokenizer", "ByteLevel"});
}

TEST(TokenizerErrorsTest, AddedTokenIdsMustMatchHuggingFaceNumbering) {
  Spec spec;
  spec.added = {{"<|end|>"}};
  const std::string json = spec.ToJson();
  ExpectLoadError(Replace(json, R"({"id":256,)", R"({"id":300,)"),
                  {"added_tokens[0].id", "300", "256"});
}

TEST(TokenizerFileTest, ReadsFileOrDirectoryAndNamesBadFiles) {
  const std::string dir = ::testing::TempDir() + "tokenizer_test_dir";
  std::remove((dir + "/tokenizer.json").c_str());
  ASSERT_TRUE(MakeDirs(dir).ok()) << dir;
  const std::string path = dir + "/tokenizer.json";
  std::ofstream(path) << HelloWorldSpec().ToJson();
  for (const std::string& source : {path, dir}) {
    absl::StatusOr<Tokenizer> tokenizer = Tokenizer::FromFile(source);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    EXPECT_EQ(MustEncode(*tokenizer, "hello"), Ids(*tokenizer, {"hello"}));
  }
  std::ofstream(path) << R"({"model": )";
  absl::StatusOr<Tokenizer> truncated = Tokenizer::FromFile(path);
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(truncated.status().message().find(path), std::string::npos) << truncated.status();
  EXPECT_FALSE(Tokenizer::FromFile(dir + "/missing.json").ok());
}

}  // namespace
}  // namespace lightrl
