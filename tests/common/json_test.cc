#include "common/json.h"

#include <cmath>
#include <random>
#include <string>
#include <utility>

#include <gtest/gtest.h>

namespace lightrl {
namespace {

TEST(JsonTest, ParsesNestedValuesAndKeepsKeyOrder) {
  auto v = Json::Parse(R"({"b": [1, 2.5, -3e2, true, null], "a": {"x": "y\n\u00e9\ud83d\ude00"}})");
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_TRUE(v->is_object());
  EXPECT_EQ(v->as_object()[0].first, "b");
  const Json* b = v->find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_TRUE(b->as_array()[0].is_int());
  EXPECT_EQ(b->as_array()[0].as_int(), 1);
  EXPECT_FALSE(b->as_array()[1].is_int());
  EXPECT_DOUBLE_EQ(b->as_array()[2].as_double(), -300.0);
  EXPECT_EQ(v->find("a")->find("x")->as_string(), "y\n\xC3\xA9\xF0\x9F\x98\x80");
  EXPECT_EQ(v->Dump(), R"({"b":[1,2.5,-300.0,true,null],"a":{"x":"y\n)"
                       "\xC3\xA9\xF0\x9F\x98\x80"
                       R"("}})");
}

TEST(JsonTest, ErrorsNameLineAndColumn) {
  auto v = Json::Parse("{\n  \"a\": [1, 2,\n  }");
  ASSERT_FALSE(v.ok());
  EXPECT_NE(std::string(v.status().message()).find("3:3"), std::string::npos) << v.status();
  EXPECT_FALSE(Json::Parse("{} x").ok());
  EXPECT_FALSE(Json::Parse("\"unterminated").ok());
  EXPECT_FALSE(Json::Parse("[1,]").ok());
  EXPECT_FALSE(Json::Parse("\"\\ud800\"").ok());
}

// 40,000 nested arrays or objects (the input that overflowed the countdown parser) are
// a clear error at the depth bound, never a stack overflow; 512 levels still parse.
TEST(JsonTest, DeepNestingIsAnErrorNotACrash) {
  for (const auto& [open, close] : {std::pair<std::string, std::string>{"[", "]"},
                                    {"{\"a\":", "}"}, {"[{\"a\":", "}]"}}) {
    std::string deep;
    for (int i = 0; i < 40000; ++i) deep += open;
    deep += "1";
    for (int i = 0; i < 40000; ++i) deep += close;
    absl::StatusOr<Json> v = Json::Parse(deep);
    ASSERT_FALSE(v.ok()) << open;
    EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(v.status().message()).find("nesting too deep"), std::string::npos)
        << v.status();
    // Unclosed, as a truncated message would be.
    EXPECT_FALSE(Json::Parse(deep.substr(0, deep.size() / 2)).ok());
  }
  const std::string ok = std::string(512, '[') + std::string(512, ']');
  absl::StatusOr<Json> v = Json::Parse(ok);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->Dump(), ok);
  EXPECT_FALSE(Json::Parse(std::string(514, '[') + std::string(514, ']')).ok());
}

// Found by tests/fuzz/json_fuzz: Dump writes -inf as -Infinity, which the parser took for
// a malformed number, so a value with -inf (a metric, "-1e4000") could not be read back.
TEST(JsonTest, NegativeInfinityRoundTrips) {
  absl::StatusOr<Json> v = Json::Parse("[-1e4000, -Infinity, Infinity, NaN]");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->Dump(), "[-Infinity,-Infinity,Infinity,NaN]");
  absl::StatusOr<Json> again = Json::Parse(v->Dump());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(std::isinf(again->as_array()[0].as_double()));
  EXPECT_LT(again->as_array()[0].as_double(), 0);
  EXPECT_FALSE(Json::Parse("-Inf").ok());
}

TEST(JsonTest, FloatsRoundTripExactly) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> dist(0.f, 10.f);
  for (int i = 0; i < 1000; ++i) {
    float f = dist(rng);
    auto back = Json::Parse(FormatFloat(f));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(static_cast<float>(back->as_double()), f);
    double d = static_cast<double>(f) / 3.0;
    auto back_d = Json::Parse(Json(d).Dump());
    ASSERT_TRUE(back_d.ok());
    EXPECT_EQ(back_d->as_double(), d);
  }
}

TEST(JsonTest, LargeIntegersStayExact) {
  auto v = Json::Parse("[9007199254740993, -9223372036854775808]");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->as_array()[0].as_int(), 9007199254740993LL);
  EXPECT_EQ(v->Dump(), "[9007199254740993,-9223372036854775808]");
}

}  // namespace
}  // namespace lightrl
