#include "common/json.h"

#include <random>

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
