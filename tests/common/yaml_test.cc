#include "common/yaml.h"

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace lightrl {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// Deep equality that also tells ints from floats, with the path of the first difference.
::testing::AssertionResult JsonEqual(const Json& a, const Json& b, const std::string& path = "$") {
  if (a.type() != b.type()) {
    return ::testing::AssertionFailure()
           << path << ": " << a.type_name() << " vs " << b.type_name() << " (" << a.Dump()
           << " vs " << b.Dump() << ")";
  }
  switch (a.type()) {
    case Json::Type::kNull: return ::testing::AssertionSuccess();
    case Json::Type::kBool:
      if (a.as_bool() == b.as_bool()) return ::testing::AssertionSuccess();
      return ::testing::AssertionFailure() << path << ": " << a.Dump() << " vs " << b.Dump();
    case Json::Type::kNumber:
      if (a.is_int() != b.is_int()) {
        return ::testing::AssertionFailure() << path << ": int/float kind differs, "
                                             << a.Dump() << " vs " << b.Dump();
      }
      if (a.is_int() ? a.as_int() == b.as_int() : a.as_double() == b.as_double()) {
        return ::testing::AssertionSuccess();
      }
      return ::testing::AssertionFailure() << path << ": " << a.Dump() << " vs " << b.Dump();
    case Json::Type::kString:
      if (a.as_string() == b.as_string()) return ::testing::AssertionSuccess();
      return ::testing::AssertionFailure() << path << ": " << a.Dump() << " vs " << b.Dump();
    case Json::Type::kArray:
      if (a.size() != b.size()) {
        return ::testing::AssertionFailure() << path << ": sizes " << a.size() << " vs "
                                             << b.size();
      }
      for (size_t i = 0; i < a.size(); ++i) {
        auto r = JsonEqual(a.as_array()[i], b.as_array()[i], absl::StrCat(path, "[", i, "]"));
        if (!r) return r;
      }
      return ::testing::AssertionSuccess();
    case Json::Type::kObject:
      if (a.size() != b.size()) {
        return ::testing::AssertionFailure() << path << ": sizes " << a.size() << " vs "
                                             << b.size();
      }
      for (size_t i = 0; i < a.size(); ++i) {
        const auto& [ka, va] = a.as_object()[i];
        const auto& [kb, vb] = b.as_object()[i];
        if (ka != kb) {
          return ::testing::AssertionFailure() << path << ": key " << i << " \"" << ka
                                               << "\" vs \"" << kb << "\"";
        }
        auto r = JsonEqual(va, vb, absl::StrCat(path, ".", ka));
        if (!r) return r;
      }
      return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "unreachable";
}

YamlDocument MustParse(const std::string& text) {
  absl::StatusOr<YamlDocument> doc = ParseYaml(text, "t.yaml");
  EXPECT_TRUE(doc.ok()) << doc.status() << "\n--- text ---\n" << text;
  return doc.ok() ? *std::move(doc) : YamlDocument{};
}

std::string ParseError(const std::string& text) {
  absl::StatusOr<YamlDocument> doc = ParseYaml(text, "t.yaml");
  EXPECT_FALSE(doc.ok()) << "parsed:\n" << text << "\nto " << doc->root.Dump();
  return doc.ok() ? std::string() : std::string(doc.status().message());
}

TEST(YamlTest, NestedBlockMappingsAndSequencesWithLines) {
  YamlDocument doc = MustParse(
      "# a comment line\n"
      "run:\n"
      "  name: toy   # trailing comment\n"
      "  steps: 10\n"
      "\n"
      "data:\n"
      "  files:\n"
      "    - a.jsonl\n"
      "    - b.jsonl\n"
      "  tags:\n"
      "  - x\n"
      "  - y\n"
      "groups:\n"
      "  - name: g1\n"
      "    size: 2\n"
      "  - - 1\n"
      "    - 2\n"
      "  -\n"
      "    deep: true\n");
  EXPECT_EQ(doc.root.Dump(),
            R"({"run":{"name":"toy","steps":10},"data":{"files":["a.jsonl","b.jsonl"],)"
            R"("tags":["x","y"]},"groups":[{"name":"g1","size":2},[1,2],{"deep":true}]})");
  EXPECT_EQ(doc.lines.at("run"), 2);
  EXPECT_EQ(doc.lines.at("run.steps"), 4);
  EXPECT_EQ(doc.lines.at("data.files[1]"), 9);
  EXPECT_EQ(doc.lines.at("data.tags[0]"), 11);
  EXPECT_EQ(doc.lines.at("groups[0]"), 14);
  EXPECT_EQ(doc.lines.at("groups[0].size"), 15);
  EXPECT_EQ(doc.lines.at("groups[1][1]"), 17);
  EXPECT_EQ(doc.lines.at("groups[2].deep"), 19);
  EXPECT_EQ(doc.lines.at(""), 2);
  // Unknown paths fall back to their nearest recorded ancestor.
  EXPECT_EQ(doc.LineOf("run.missing"), 2);
  EXPECT_EQ(doc.LineOf("groups[0].size.x[3]"), 15);
  EXPECT_EQ(doc.Where("data.files[0]"), "t.yaml:8");
  EXPECT_EQ(doc.LineOf("absent.key"), 0);  // no fallback to the root's line
  EXPECT_EQ(doc.Where("absent"), "t.yaml");
  EXPECT_EQ(YamlDocument{}.Where("a.b"), "");
}

TEST(YamlTest, PlainScalarsResolveByCoreSchema) {
  YamlDocument doc = MustParse(
      "i: 42\nneg: -7\npos: +3\nhex: 0x1F\noct: 0o17\nbig: 9223372036854775807\n"
      "f: 1.5\nexp: 1e-3\nexp2: -2.5E+2\nlead: .5\ntrail: 3.\n"
      "t: true\nT: True\nf2: FALSE\nn: null\ntilde: ~\nempty:\n"
      "s: hello world\nyes: yes\nver: 1.2.3\nword: inf\nhash: a#b\nurl: http://x/y\n"
      "dash: -x\n");
  const Json& r = doc.root;
  EXPECT_TRUE(r.find("i")->is_int());
  EXPECT_EQ(r.find("i")->as_int(), 42);
  EXPECT_EQ(r.find("neg")->as_int(), -7);
  EXPECT_EQ(r.find("pos")->as_int(), 3);
  EXPECT_EQ(r.find("hex")->as_int(), 31);
  EXPECT_EQ(r.find("oct")->as_int(), 15);
  EXPECT_EQ(r.find("big")->as_int(), INT64_MAX);
  EXPECT_FALSE(r.find("f")->is_int());
  EXPECT_EQ(r.find("f")->as_double(), 1.5);
  EXPECT_FALSE(r.find("exp")->is_int());
  EXPECT_EQ(r.find("exp")->as_double(), 1e-3);
  EXPECT_EQ(r.find("exp2")->as_double(), -250.0);
  EXPECT_EQ(r.find("lead")->as_double(), 0.5);
  EXPECT_FALSE(r.find("trail")->is_int());
  EXPECT_EQ(r.find("trail")->as_double(), 3.0);
  EXPECT_TRUE(r.find("t")->as_bool());
  EXPECT_TRUE(r.find("T")->as_bool());
  EXPECT_TRUE(r.find("f2")->is_bool());
  EXPECT_FALSE(r.find("f2")->as_bool());
  EXPECT_TRUE(r.find("n")->is_null());
  EXPECT_TRUE(r.find("tilde")->is_null());
  EXPECT_TRUE(r.find("empty")->is_null());
  EXPECT_EQ(r.find("s")->as_string(), "hello world");
  EXPECT_EQ(r.find("yes")->as_string(), "yes");  // YAML 1.2: not a bool
  EXPECT_EQ(r.find("ver")->as_string(), "1.2.3");
  EXPECT_EQ(r.find("word")->as_string(), "inf");
  EXPECT_EQ(r.find("hash")->as_string(), "a#b");
  EXPECT_EQ(r.find("url")->as_string(), "http://x/y");
  EXPECT_EQ(r.find("dash")->as_string(), "-x");
}

TEST(YamlTest, QuotedStringsAndEscapes) {
  YamlDocument doc = MustParse(
      "a: 'it''s # not a comment: really'\n"
      "b: \"tab\\there\\nline \\\"q\\\" \\\\ \\x41\\u00e9\\U0001F600\"\n"
      "c: \"123\"\n"
      "d: ''\n"
      "'quoted key': 1\n"
      "\"key: with colon\": 2\n"
      "e: \"true\"  # stays a string\n");
  const Json& r = doc.root;
  EXPECT_EQ(r.find("a")->as_string(), "it's # not a comment: really");
  EXPECT_EQ(r.find("b")->as_string(),
            "tab\there\nline \"q\" \\ A\xC3\xA9\xF0\x9F\x98\x80");
  EXPECT_EQ(r.find("c")->as_string(), "123");
  EXPECT_EQ(r.find("d")->as_string(), "");
  EXPECT_EQ(r.find("quoted key")->as_int(), 1);
  EXPECT_EQ(r.find("key: with colon")->as_int(), 2);
  EXPECT_EQ(r.find("e")->as_string(), "true");
  EXPECT_EQ(doc.lines.at("key: with colon"), 6);
}

TEST(YamlTest, FlowCollections) {
  YamlDocument doc = MustParse(
      "betas: [0.9, 0.95]\n"
      "empty_list: []\n"
      "empty_map: {}\n"
      "m: {a: 1, 'b c': [x, \"y, z\"], d: {e: null}, f: }\n"
      "multi: [1,\n"
      "        2,   # comment inside\n"
      "        3,]\n"
      "after: ok\n");
  EXPECT_EQ(doc.root.Dump(),
            R"({"betas":[0.9,0.95],"empty_list":[],"empty_map":{},)"
            R"("m":{"a":1,"b c":["x","y, z"],"d":{"e":null},"f":null},"multi":[1,2,3],)"
            R"("after":"ok"})");
  EXPECT_EQ(doc.lines.at("betas[1]"), 1);
  EXPECT_EQ(doc.lines.at("m.d.e"), 4);
  EXPECT_EQ(doc.lines.at("multi[0]"), 5);
  EXPECT_EQ(doc.lines.at("multi[2]"), 7);
  EXPECT_EQ(doc.lines.at("after"), 8);
}

TEST(YamlTest, BlockScalars) {
  YamlDocument doc = MustParse(
      "lit: |\n"
      "  line one\n"
      "    indented # kept\n"
      "\n"
      "  last\n"
      "strip: |-\n"
      "  no newline\n"
      "keep: |+\n"
      "  two newlines\n"
      "\n"
      "folded: >\n"
      "  joined\n"
      "  words\n"
      "\n"
      "  new para\n"
      "    more indented\n"
      "  back\n"
      "explicit: |2\n"
      "    leading spaces\n"
      "  normal\n"
      "list:\n"
      "  - |\n"
      "    in a list\n"
      "  - x\n"
      "empty: |\n"
      "end: 1\n");
  const Json& r = doc.root;
  EXPECT_EQ(r.find("lit")->as_string(), "line one\n  indented # kept\n\nlast\n");
  EXPECT_EQ(r.find("strip")->as_string(), "no newline");
  EXPECT_EQ(r.find("keep")->as_string(), "two newlines\n\n");
  EXPECT_EQ(r.find("folded")->as_string(), "joined words\nnew para\n  more indented\nback\n");
  EXPECT_EQ(r.find("explicit")->as_string(), "  leading spaces\nnormal\n");
  EXPECT_EQ(r.find("list")->Dump(), R"(["in a list\n","x"])");
  EXPECT_EQ(r.find("empty")->as_string(), "");
  EXPECT_EQ(r.find("end")->as_int(), 1);
  EXPECT_EQ(doc.lines.at("end"), 26);

  // Keep chomping at the end of the document: the file's final line break ends the last
  // line, it is not one more empty line; without one the value has none (as the YAML
  // spec and PyYAML read it).
  EXPECT_EQ(MustParse("k: |+\n  x\n\n").root.find("k")->as_string(), "x\n\n");
  EXPECT_EQ(MustParse("k: |+\n  x\n").root.find("k")->as_string(), "x\n");
  EXPECT_EQ(MustParse("k: |+\n  x").root.find("k")->as_string(), "x");
  EXPECT_EQ(MustParse("k: |+\n  x\n\n\n").root.find("k")->as_string(), "x\n\n\n");
}

TEST(YamlTest, DocumentMarkersCrlfAndScalarRoots) {
  EXPECT_EQ(MustParse("---\na: 1\n...\n").root.Dump(), R"({"a":1})");
  EXPECT_EQ(MustParse("--- # start\r\na: 1\r\nb: [x]\r\n").root.Dump(), R"({"a":1,"b":["x"]})");
  EXPECT_EQ(MustParse("\xEF\xBB\xBF" "a: 1\n").root.Dump(), R"({"a":1})");
  EXPECT_TRUE(MustParse("").root.is_null());
  EXPECT_TRUE(MustParse("# only a comment\n\n").root.is_null());
  EXPECT_EQ(MustParse("  7\n").root.as_int(), 7);
  EXPECT_EQ(MustParse("- a\n- b\n").root.Dump(), R"(["a","b"])");
  EXPECT_EQ(MustParse("key:\n  value on next line\n").root.Dump(),
            R"({"key":"value on next line"})");
}

struct ErrorCase {
  const char* text;
  const char* where;  // "t.yaml:line:col: "
  const char* what;
};

TEST(YamlTest, ErrorsNameLineColumnAndCause) {
  const ErrorCase cases[] = {
      {"a: 1\nb: 2\na: 3\n", "t.yaml:3:1: ", "duplicate key \"a\" (first defined on line 1)"},
      {"m: {x: 1, x: 2}\n", "t.yaml:1:11: ", "duplicate key \"x\""},
      {"m:\n  <<: {x: 1}\n  y: 2\n  y: 3\n", "t.yaml:4:3: ", "duplicate key \"y\" (first defined on line 3)"},
      {"a:\n\tb: 1\n", "t.yaml:2:1: ", "tabs are not allowed in indentation"},
      {"a:\n  \tb: 1\n", "t.yaml:2:3: ", "tabs are not allowed in indentation"},
      {"a: 1\nb: *ref\n", "t.yaml:2:4: ", "the referenced anchor is not defined"},
      {"a: [1, *x]\n", "t.yaml:1:8: ", "the referenced anchor is not defined"},
      {"a: &a [1, *a]\n", "t.yaml:1:11: ", "a node cannot include itself"},
      {"a: {x: 1}\nb:\n  <<: 3\n", "t.yaml:3:7: ", "a merge key '<<' takes a mapping or a list of mappings"},
      {"a: !foo 1\n", "t.yaml:1:4: ", "tags (!foo) are not supported"},
      {"a: !!int 1\n", "t.yaml:1:4: ", "tags (!!int) are not supported"},
      {"a: 1\n---\nb: 2\n", "t.yaml:2:1: ", "multiple documents are not supported"},
      {"---\na: 1\n---\nb: 2\n", "t.yaml:3:1: ", "multiple documents are not supported"},
      {"a: \"open\n", "t.yaml:1:4: ", "unterminated quoted string"},
      {"a: 'open\n", "t.yaml:1:4: ", "unterminated quoted string"},
      {"a: \"open\nb: 2\n", "t.yaml:1:4: ", "unterminated quoted string"},
      {"a: 'it''s\nb: 1\n", "t.yaml:1:4: ", "unterminated quoted string"},
      {"a: [1, 2\n", "t.yaml:2:1: ", "end of sequence flow not found (a '[' is not closed"},
      {"a: [1, 2\nb: 3\n", "t.yaml:2:2: ", "end of sequence flow not found"},
      {"a: [\"x\" 1]\n", "t.yaml:1:9: ", "end of sequence flow not found"},
      {"a: {x: 1\n", "t.yaml:2:1: ", "end of map flow not found (a '{' is not closed"},
      {"a: [1] x\n", "t.yaml:1:8: ", "end of map not found (check the indentation)"},
      {"a: \"x\" y\n", "t.yaml:1:8: ", "end of map not found"},
      {"a: 1\n  b: 2\n", "t.yaml:2:4: ", "illegal map value"},
      {"a: b: c\n", "t.yaml:1:5: ", "illegal map value (a 'key: value' where no mapping can start"},
      {"a: x: y\n", "t.yaml:1:5: ", "quote a value that holds ': '"},
      {"a: - 1\n", "t.yaml:1:4: ", "illegal block entry (a '- ' list item where no list can start"},
      {"a: 1\n- b\n", "t.yaml:2:1: ", "end of map not found"},
      {"- a\nb: 1\n", "t.yaml:2:1: ", "unexpected content after the document's top-level"},
      {"a: 1\n...\nb: 2\n", "t.yaml:3:1: ", "unexpected content after the document's top-level"},
      {"a: .inf\n", "t.yaml:1:4: ", "infinite and NaN numbers (.inf) are not supported"},
      {"a: [-.nan]\n", "t.yaml:1:5: ", "infinite and NaN numbers (-.nan) are not supported"},
      {"a: 99999999999999999999\n", "t.yaml:1:4: ", "does not fit in 64 bits"},
      {"a: \"\\q\"\n", "t.yaml:1:7: ", "unknown escape character: q"},
      {"a: \"\\u12\"\n", "t.yaml:", "bad character found while scanning hex number"},
      {"a: \"\\ud800\"\n", "t.yaml:1:11: ", "invalid unicode"},
      {"a: \"\\ud83d\\ude00\"\n", "t.yaml:1:11: ", "invalid unicode"},  // no UTF-16 pairs
      {"a: @x\n", "t.yaml:1:4: ", "unknown token (a character that cannot start a value here"},
      {"a: |x\n  text\n", "t.yaml:1:5: ", "unexpected character in block scalar"},
      {"--- a: 1\n", "t.yaml:1:6: ", "illegal map value"},
      {"a: {[x]: 1}\n", "t.yaml:1:5: ", "collection keys are not supported"},
      {"? [x]\n: 1\n", "t.yaml:1:3: ", "collection keys are not supported"},
      {": 1\n", "t.yaml:1:", "empty mapping key"},
  };
  for (const ErrorCase& c : cases) {
    std::string message = ParseError(c.text);
    EXPECT_THAT(message, StartsWith(c.where)) << "text:\n" << c.text;
    EXPECT_THAT(message, HasSubstr(c.what)) << "text:\n" << c.text;
  }
}

TEST(YamlTest, DeepNestingIsAnErrorNotACrash) {
  std::string text = "a: " + std::string(1000, '[') + std::string(1000, ']') + "\n";
  EXPECT_THAT(ParseError(text), HasSubstr("nesting too deep"));
  std::string block;
  for (int i = 0; i < 400; ++i) block += std::string(i, ' ') + "k:\n";
  EXPECT_THAT(ParseError(block), HasSubstr("nesting too deep"));
}

TEST(YamlTest, AnchorsAliasesAndMergeKeys) {
  YamlDocument doc = MustParse(
      "defaults: &opt\n"          // 1
      "  lr: 1.0e-5\n"            // 2
      "  betas: [0.9, 0.95]\n"    // 3
      "a:\n"                      // 4
      "  <<: *opt\n"              // 5
      "  lr: 2.0e-5\n"            // 6
      "b: *opt\n"                 // 7
      "stops: &s [\"\\n\\n\", x]\n"  // 8
      "c:\n"                      // 9
      "  - *s\n"                  // 10
      "  - &n 7\n"                // 11
      "  - *n\n"                  // 12
      "d:\n"                      // 13
      "  <<: [{p: 1, q: 1}, {q: 2, r: 2}]\n"  // 14
      "  r: 3\n"                  // 15
      "tagged: !!str 123\n"       // 16
      "? explicit\n"              // 17
      ": key\n");                 // 18
  const Json& r = doc.root;
  EXPECT_EQ(r.find("a")->Dump(), R"({"lr":2e-05,"betas":[0.9,0.95]})");
  EXPECT_EQ(r.find("b")->Dump(), R"({"lr":1e-05,"betas":[0.9,0.95]})");
  EXPECT_EQ(r.find("c")->Dump(), R"([["\n\n","x"],7,7])");
  EXPECT_EQ(r.find("d")->Dump(), R"({"p":1,"q":1,"r":3})");
  EXPECT_EQ(r.find("tagged")->as_string(), "123");
  EXPECT_EQ(r.find("explicit")->as_string(), "key");
  // A merged key points at its "<<" line, an overriding one at its own; an alias's
  // contents at the alias.
  EXPECT_EQ(doc.LineOf("a.betas"), 5);
  EXPECT_EQ(doc.LineOf("a.lr"), 6);
  EXPECT_EQ(doc.LineOf("b.lr"), 7);
  EXPECT_EQ(doc.LineOf("c[0]"), 10);
  EXPECT_EQ(doc.LineOf("c[2]"), 12);
  EXPECT_EQ(doc.LineOf("d.r"), 15);
  EXPECT_EQ(doc.LineOf("d.p"), 14);
}

TEST(YamlTest, MultiLineScalars) {
  YamlDocument doc = MustParse(
      "plain: one\n"
      "  two\n"
      "\n"
      "  three\n"
      "double: \"a\n"
      "  b\\\n"
      "  c\"\n"
      "single: 'x\n"
      "\n"
      "  y'\n"
      "list:\n"
      "  - first\n"
      "    continued\n"
      "end: 1\n");
  const Json& r = doc.root;
  EXPECT_EQ(r.find("plain")->as_string(), "one two\nthree");
  EXPECT_EQ(r.find("double")->as_string(), "a bc");
  EXPECT_EQ(r.find("single")->as_string(), "x\ny");
  EXPECT_EQ(r.find("list")->Dump(), R"(["first continued"])");
  EXPECT_EQ(doc.lines.at("end"), 14);
  EXPECT_EQ(doc.lines.at("list[0]"), 12);
}

TEST(YamlTest, HostileInputIsBounded) {
  // Each level names the previous one ten times: 10^9 values once expanded.
  std::string laughs = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n";
  for (int i = 1; i <= 9; ++i) {
    laughs += absl::StrFormat("l%d: &l%d [", i, i);
    for (int k = 0; k < 10; ++k) laughs += absl::StrFormat("%s*l%d", k ? ", " : "", i - 1);
    laughs += "]\n";
  }
  std::string message = ParseError(laughs);
  EXPECT_THAT(message, StartsWith("t.yaml:"));
  EXPECT_THAT(message, HasSubstr("the document expands to more than"));

  // A string named many times is counted by its bytes.
  std::string big = "s: &s \"" + std::string(1 << 20, 'x') + "\"\nl: [";
  for (int k = 0; k < 100; ++k) big += k ? ", *s" : "*s";
  big += "]\n";
  EXPECT_THAT(ParseError(big), HasSubstr("MiB of text"));

  EXPECT_THAT(ParseError("k: " + std::string((16 << 20) + 1, 'x') + "\n"),
              HasSubstr("a YAML file may hold at most 16 MiB"));
}

constexpr char kRealisticConfig[] = R"(# Toy CISPO run on a random tiny hybrid model.
---
run:
  name: toy-arithmetic
  output_dir: runs/toy
  seed: 1234
  steps: 200
  device: "cuda:0"
model:
  init_config: models/tiny-hybrid.json
data:
  train: ../examples/toy/train.jsonl
  prompt_key: prompt
rollout:
  group_size: 8
  temperature: 1.0
  top_p: 1
  stop_strings: ["\n\n", "</answer>"]
  stop_token_ids: [0, 2]
reward:
  kind: arithmetic
  weights: {arithmetic: 1.0, format: 0.1}
  format_pattern: '^<answer>.*</answer>$'
algorithm:
  loss: cispo
  eps_high: 4.0
  overlong:
    filter: false
    soft_buffer: 0
optimizer:
  lr: 1e-6
  betas: [0.9, 0.95]
  eps: 1e-15
notes: >
  Folded text that
  spans lines.
)";

TEST(YamlTest, RealisticConfigRoundTripsThroughDumpYaml) {
  YamlDocument doc = MustParse(kRealisticConfig);
  const Json& r = doc.root;
  EXPECT_EQ(r.find("run")->find("device")->as_string(), "cuda:0");
  EXPECT_EQ(r.find("rollout")->find("stop_strings")->Dump(), R"(["\n\n","</answer>"])");
  EXPECT_EQ(r.find("optimizer")->find("lr")->as_double(), 1e-6);
  EXPECT_EQ(r.find("optimizer")->find("eps")->as_double(), 1e-15);
  EXPECT_EQ(r.find("reward")->find("format_pattern")->as_string(), "^<answer>.*</answer>$");
  EXPECT_EQ(r.find("notes")->as_string(), "Folded text that spans lines.\n");
  EXPECT_EQ(doc.lines.at("rollout.group_size"), 15);
  EXPECT_EQ(doc.lines.at("optimizer.betas[1]"), 32);

  const std::string dumped = DumpYaml(r);
  YamlDocument back = MustParse(dumped);
  EXPECT_TRUE(JsonEqual(r, back.root)) << dumped;
  // Dumping is a fixed point after one round.
  EXPECT_EQ(DumpYaml(back.root), dumped);
}

// --- randomized round trip ---

// UTF-8 code points, for escaping in the emitter.
std::vector<uint32_t> DecodeUtf8(const std::string& s) {
  std::vector<uint32_t> cps;
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    cps.push_back(cp);
    i += n;
  }
  return cps;
}

class RandomYaml {
 public:
  explicit RandomYaml(uint64_t seed) : rng_(seed) {}

  Json RandomValue(int depth) {
    int pick = Uniform(0, depth >= 4 ? 5 : 7);
    switch (pick) {
      case 0: return Json();
      case 1: return Json(Uniform(0, 1) == 1);
      case 2: {
        int64_t v = Uniform(0, 3) == 0 ? static_cast<int64_t>(rng_())
                                       : Uniform(-1000, 1000);
        return Json(v);
      }
      case 3: {
        double v;
        switch (Uniform(0, 3)) {
          case 0: v = std::uniform_real_distribution<double>(-1, 1)(rng_); break;
          case 1: v = std::ldexp(std::uniform_real_distribution<double>(-1, 1)(rng_),
                                 Uniform(-1000, 1000)); break;
          case 2: v = static_cast<double>(Uniform(-50, 50)); break;
          default: v = 1e-3 * Uniform(1, 9); break;
        }
        return Json(v);
      }
      case 4:
      case 5: return Json(RandomString());
      case 6: {
        Json a = Json::MakeArray();
        for (int n = Uniform(0, 4); n > 0; --n) a.push_back(RandomValue(depth + 1));
        return a;
      }
      default: {
        Json o = Json::MakeObject();
        for (int n = Uniform(0, 4); n > 0; --n) {
          std::string key = RandomKey();
          if (!o.contains(key)) o.set(key, RandomValue(depth + 1));
        }
        return o;
      }
    }
  }

  Json RandomRoot() {
    Json o = Json::MakeObject();
    for (int n = Uniform(1, 6); n > 0; --n) {
      std::string key = RandomKey();
      if (!o.contains(key)) o.set(key, RandomValue(0));
    }
    return o;
  }

  // Writes `root` (an object) as block YAML in randomly chosen styles, recording the
  // line of every key and item the way the parser paths them.
  std::string Emit(const Json& root) {
    out_.clear();
    lines_.clear();
    line_ = 1;
    keep_scalar_open_ = false;
    if (Uniform(0, 3) == 0) Newline("--- # start");
    Block(root, 0, "", false);
    return out_;
  }
  const std::map<std::string, int>& lines() const { return lines_; }

 private:
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  std::string RandomString() {
    static const char* const kWhole[] = {"", "true", "False", "null", "~", "123", "-4",
                                         "1e3", ".inf", "- item", "key: value", "#x",
                                         " leading", "trailing ", "a\nb\n", "0x10", "yes"};
    static const char* const kPieces[] = {
        "a", "b", "Zed", "_", " ", "  ", ":", ": ", "#", " #", "'", "\"", "\\", "-", "- ",
        "?", "&", "*", "!", "|", ">", "%", "@", "[", "]", "{", "}", ",", ".", "\xC3\xA9",
        "\xE6\x97\xA5\xE6\x9C\xAC", "\xF0\x9F\x99\x82", "\t", "\n", "1", "0.5", "x y",
        "\x01"};
    if (Uniform(0, 6) == 0) return kWhole[Uniform(0, std::size(kWhole) - 1)];
    std::string s;
    for (int n = Uniform(0, 10); n > 0; --n) s += kPieces[Uniform(0, std::size(kPieces) - 1)];
    return s;
  }

  // Keys avoid '.', '[' and ']', which the line paths use as separators, and "" (the
  // root's path).
  std::string RandomKey() {
    while (true) {
      std::string k = Uniform(0, 2) == 0 ? RandomString()
                                         : std::string(1, static_cast<char>('a' + Uniform(0, 25))) +
                                               std::to_string(Uniform(0, 99));
      if (!k.empty() && k.find_first_of(".[]") == std::string::npos) return k;
    }
  }

  void Newline(const std::string& text = "") {
    out_ += text;
    out_ += '\n';
    ++line_;
  }

  static bool PlainOk(const std::string& s) {
    if (s.empty()) return false;
    if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z'))) return false;
    if (s.back() == ' ') return false;
    for (char c : s) {
      unsigned char u = static_cast<unsigned char>(c);
      if (u < 0x20 || std::string(":#,[]{}\"'\\").find(c) != std::string::npos) return false;
    }
    std::string lower;
    for (char c : s) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return lower != "true" && lower != "false" && lower != "null";
  }

  // Inside [...] and {...} a plain '?' reads as a complex-key indicator (yaml-cpp and
  // PyYAML reject "{a?: 1}"), so flow context quotes such strings.
  static bool FlowPlainOk(const std::string& s) {
    return PlainOk(s) && s.find('?') == std::string::npos;
  }

  std::string DoubleQuoted(const std::string& s) {
    std::string out = "\"";
    for (uint32_t cp : DecodeUtf8(s)) {
      if (cp == '"') out += "\\\"";
      else if (cp == '\\') out += "\\\\";
      else if (cp == '\n') out += "\\n";
      else if (cp == '\t') out += Uniform(0, 1) ? "\\t" : "\t";
      else if (cp < 0x20) out += absl::StrFormat("\\x%02x", cp);
      else if (cp < 0x80) out += static_cast<char>(cp);
      else if (Uniform(0, 1) == 0) out += cp < 0x10000 ? absl::StrFormat("\\u%04X", cp)
                                                       : absl::StrFormat("\\U%08x", cp);
      else {
        std::string raw;  // the code point as raw UTF-8
        if (cp < 0x800) {
          raw += static_cast<char>(0xC0 | (cp >> 6));
        } else if (cp < 0x10000) {
          raw += static_cast<char>(0xE0 | (cp >> 12));
          raw += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        } else {
          raw += static_cast<char>(0xF0 | (cp >> 18));
          raw += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
          raw += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        }
        raw += static_cast<char>(0x80 | (cp & 0x3F));
        out += raw;
      }
    }
    return out + "\"";
  }

  // A string on one line, in a style chosen among those that can write it.
  std::string InlineString(const std::string& s) {
    bool single_ok = true;
    for (char c : s) single_ok = single_ok && (static_cast<unsigned char>(c) >= 0x20 || c == '\t');
    int style = Uniform(0, 2);
    if (style == 0 && PlainOk(s)) return s;
    if (style <= 1 && single_ok) {
      std::string out = "'";
      for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
      return out + "'";
    }
    return DoubleQuoted(s);
  }

  std::string Number(const Json& v) {
    if (v.is_int()) {
      if (v.as_int() >= 0 && Uniform(0, 4) == 0) return absl::StrFormat("0x%x", v.as_int());
      return absl::StrCat(v.as_int());
    }
    char buf[40];
    std::snprintf(buf, sizeof(buf), Uniform(0, 1) ? "%.17g" : "%.17E", v.as_double());
    std::string s(buf);
    if (s.find_first_of(".eE") == std::string::npos) s += ".0";
    return s;
  }

  // A scalar or empty collection in block or flow context (flow: strings never plain).
  std::string Scalar(const Json& v, bool flow) {
    switch (v.type()) {
      case Json::Type::kNull: {
        static const char* const kNulls[] = {"null", "~", "Null", "NULL"};
        return kNulls[Uniform(0, 3)];
      }
      case Json::Type::kBool: {
        static const char* const kTrue[] = {"true", "True", "TRUE"};
        static const char* const kFalse[] = {"false", "False", "FALSE"};
        return v.as_bool() ? kTrue[Uniform(0, 2)] : kFalse[Uniform(0, 2)];
      }
      case Json::Type::kNumber: return Number(v);
      case Json::Type::kString:
        return flow && FlowPlainOk(v.as_string()) && Uniform(0, 1) ? v.as_string()
               : flow ? DoubleQuoted(v.as_string())
                      : InlineString(v.as_string());
      case Json::Type::kArray: return "[]";
      case Json::Type::kObject: return "{}";
    }
    return "";
  }

  std::string Flow(const Json& v, const std::string& path) {
    if (v.is_array()) {
      std::string out = "[";
      for (size_t i = 0; i < v.size(); ++i) {
        const std::string child = absl::StrCat(path, "[", i, "]");
        lines_[child] = line_;
        if (i) out += Uniform(0, 1) ? ", " : ",";
        out += Flow(v.as_array()[i], child);
      }
      return out + (Uniform(0, 3) == 0 && v.size() ? ",]" : "]");
    }
    if (v.is_object()) {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, child] : v.as_object()) {
        const std::string child_path = path.empty() ? k : absl::StrCat(path, ".", k);
        lines_[child_path] = line_;
        if (!first) out += ", ";
        first = false;
        out += FlowPlainOk(k) && Uniform(0, 1) ? k : DoubleQuoted(k);
        out += ": ";
        out += Flow(child, child_path);
      }
      return out + "}";
    }
    return Scalar(v, true);
  }

  // A multi-line string as a literal block scalar, if that style can hold it.
  bool LiteralOk(const std::string& s) {
    if (s.find('\n') == std::string::npos || s.find_first_not_of('\n') == std::string::npos) {
      return false;
    }
    size_t start = 0;
    while (start <= s.size()) {
      size_t nl = s.find('\n', start);
      std::string line = s.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
      for (char c : line) {
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t') return false;
      }
      if (!line.empty() && line.find_first_not_of(" \t") == std::string::npos) return false;
      if (!line.empty() && line[0] == '\t') return false;
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
    return true;
  }

  // Writes the literal header on the current line and the body below it.
  void Literal(const std::string& s, int parent_indent) {
    size_t trailing = 0;
    while (trailing < s.size() && s[s.size() - 1 - trailing] == '\n') ++trailing;
    const std::string core = s.substr(0, s.size() - trailing);
    const int step = Uniform(1, 3);
    // Auto-detection reads the indentation off the first non-empty line.
    const size_t first = core.find_first_not_of('\n');
    const bool leading_space = first != std::string::npos && core[first] == ' ';
    std::string header = "|";
    std::string chomp = trailing == 0 ? "-" : trailing == 1 ? "" : "+";
    if (leading_space || Uniform(0, 2) == 0) {
      header += Uniform(0, 1) ? absl::StrCat(step, chomp) : absl::StrCat(chomp, step);
    } else {
      header += chomp;
    }
    Newline(header);
    const std::string pad(parent_indent + step, ' ');
    size_t start = 0;
    while (true) {
      size_t nl = core.find('\n', start);
      std::string line = core.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
      Newline(line.empty() ? "" : pad + line);
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
    for (size_t k = 1; k < trailing; ++k) Newline();
    keep_scalar_open_ = trailing >= 2;
  }

  // Comments and blank lines between entries, unless a kept block scalar would absorb them.
  void Filler(int indent) {
    if (keep_scalar_open_) {
      keep_scalar_open_ = false;
      return;
    }
    if (Uniform(0, 5) == 0) Newline();
    if (Uniform(0, 5) == 0) Newline(std::string(Uniform(0, indent), ' ') + "# note: x");
  }

  // The value after "key:" or "-" on the current line; `indent` is the parent's.
  void Value(const Json& v, int indent, const std::string& path, bool in_sequence) {
    const bool collection = (v.is_array() || v.is_object()) && v.size() > 0;
    if (!collection) {
      if (v.is_null() && Uniform(0, 3) == 0) {
        Newline();  // "key:" or "-" with nothing after it is null
        return;
      }
      if (v.is_string() && LiteralOk(v.as_string()) && Uniform(0, 1)) {
        out_ += ' ';
        Literal(v.as_string(), indent);
        return;
      }
      out_ += ' ';
      out_ += Scalar(v, false);
      Newline(Uniform(0, 4) == 0 ? "  # trailing" : "");
      return;
    }
    if (Uniform(0, 5) == 0) {
      out_ += ' ';
      out_ += Flow(v, path);
      Newline();
      return;
    }
    if (in_sequence && Uniform(0, 1)) {  // compact: "- key: v" / "- - x"
      const int spaces = Uniform(1, 3);
      out_ += std::string(spaces, ' ');
      Block(v, indent + 1 + spaces, path, true);
      return;
    }
    Newline();
    // A sequence under a key may sit at the key's own indentation.
    const int step = (!in_sequence && v.is_array() && Uniform(0, 2) == 0) ? 0 : Uniform(1, 4);
    Block(v, indent + step, path, false);
  }

  // A non-empty collection at `indent`; `first_inline`: the cursor already sits at `indent`.
  void Block(const Json& v, int indent, const std::string& path, bool first_inline) {
    bool first = true;
    if (v.is_object()) {
      for (const auto& [k, child] : v.as_object()) {
        if (!(first && first_inline)) {
          Filler(indent);
          out_ += std::string(indent, ' ');
        }
        first = false;
        const std::string child_path = path.empty() ? k : absl::StrCat(path, ".", k);
        lines_[child_path] = line_;
        out_ += PlainOk(k) && Uniform(0, 1) ? k : InlineString(k);
        out_ += ':';
        Value(child, indent, child_path, false);
      }
      return;
    }
    for (size_t i = 0; i < v.size(); ++i) {
      if (!(first && first_inline)) {
        Filler(indent);
        out_ += std::string(indent, ' ');
      }
      first = false;
      const std::string child_path = absl::StrCat(path, "[", i, "]");
      lines_[child_path] = line_;
      out_ += '-';
      Value(v.as_array()[i], indent, child_path, true);
    }
  }

  std::mt19937_64 rng_;
  std::string out_;
  std::map<std::string, int> lines_;
  int line_ = 1;
  bool keep_scalar_open_ = false;
};

TEST(YamlTest, RandomDocumentsRoundTrip) {
  const uint64_t base_seed = std::random_device{}();
  for (int iter = 0; iter < 2000; ++iter) {
    const uint64_t seed = base_seed + iter;
    RandomYaml gen(seed);
    const Json value = gen.RandomRoot();
    const std::string text = gen.Emit(value);
    absl::StatusOr<YamlDocument> doc = ParseYaml(text, "random.yaml");
    ASSERT_TRUE(doc.ok()) << "seed " << seed << ": " << doc.status() << "\n" << text;
    ASSERT_TRUE(JsonEqual(value, doc->root)) << "seed " << seed << "\n" << text;
    std::map<std::string, int> got = doc->lines;
    got.erase("");
    ASSERT_EQ(got, gen.lines()) << "seed " << seed << "\n" << text;

    const std::string dumped = DumpYaml(value);
    absl::StatusOr<YamlDocument> back = ParseYaml(dumped, "dumped.yaml");
    ASSERT_TRUE(back.ok()) << "seed " << seed << ": " << back.status() << "\n" << dumped;
    ASSERT_TRUE(JsonEqual(value, back->root)) << "seed " << seed << "\n" << dumped;
  }
}

}  // namespace
}  // namespace lightrl
