#include "kernels/lightning/lightning_reference.h"

#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace lightrl {
namespace {

double RelErr(const std::vector<double>& out, const std::vector<double>& ref) {
  double num = 0.0;
  double den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

struct Inputs {
  std::vector<float> q, k, v;
  std::vector<double> initial_state;
};

Inputs RandomInputs(const LightningReferenceProblem& p, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 0.3f);
  const size_t n = static_cast<size_t>(p.num_tokens()) * p.num_heads * p.head_dim;
  Inputs in;
  for (auto* x : {&in.q, &in.k, &in.v}) {
    x->resize(n);
    for (float& e : *x) e = normal(rng);
  }
  in.initial_state.resize(static_cast<size_t>(p.num_seqs()) * p.state_elems());
  for (double& e : in.initial_state) e = normal(rng);
  return in;
}

LightningReferenceProblem MakeProblem(std::vector<int32_t> lengths, int num_heads,
                                      int head_dim, std::mt19937& rng) {
  LightningReferenceProblem p;
  p.num_heads = num_heads;
  p.head_dim = head_dim;
  p.cu_seqlens = {0};
  for (int32_t len : lengths) p.cu_seqlens.push_back(p.cu_seqlens.back() + len);
  // Real MiniMax slopes for a random layer, so both fast- and slow-decaying heads appear.
  p.slopes = MiniMaxSlopes(num_heads, std::uniform_int_distribution<int>(0, 7)(rng), 8);
  return p;
}

struct Case {
  std::vector<int32_t> lengths;
  int num_heads;
  int head_dim;
};

class ChunkedMatchesRecurrence : public ::testing::TestWithParam<Case> {};

TEST_P(ChunkedMatchesRecurrence, AtSeveralBlockSizesAndBothDirections) {
  const Case& c = GetParam();
  std::mt19937 rng(std::random_device{}());
  for (bool reverse : {false, true}) {
    for (bool with_state : {false, true}) {
      LightningReferenceProblem p = MakeProblem(c.lengths, c.num_heads, c.head_dim, rng);
      p.reverse = reverse;
      const Inputs in = RandomInputs(p, rng);
      const double* s0 = with_state ? in.initial_state.data() : nullptr;
      const size_t n_out = static_cast<size_t>(p.num_tokens()) * p.num_heads * p.head_dim;
      const size_t n_state = static_cast<size_t>(p.num_seqs()) * p.state_elems();
      std::vector<double> ref_out(n_out, NAN), ref_state(n_state, NAN);
      ReferenceLightningRecurrence(p, in.q.data(), in.k.data(), in.v.data(), s0,
                                   ref_out.data(), ref_state.data());
      for (int block : {1, 3, 16, 32, 64}) {
        std::vector<double> out(n_out, NAN), state(n_state, NAN);
        ReferenceLightningChunked(p, block, in.q.data(), in.k.data(), in.v.data(), s0,
                                  out.data(), state.data());
        EXPECT_LT(RelErr(out, ref_out), 1e-12)
            << "block " << block << " reverse " << reverse << " state " << with_state;
        EXPECT_LT(RelErr(state, ref_state), 1e-12)
            << "block " << block << " reverse " << reverse << " state " << with_state;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ChunkedMatchesRecurrence,
    ::testing::Values(Case{{1}, 2, 8},                 // a single token
                      Case{{70}, 3, 16},               // not a multiple of any block
                      Case{{64, 128}, 2, 8},           // exact multiples
                      Case{{5, 0, 97, 33, 1}, 2, 12},  // ragged, with an empty sequence
                      Case{{130, 7}, 1, 32}));

// The recurrence against a hand-written two-token case, so the oracle itself is pinned.
TEST(LightningReference, TwoTokensByHand) {
  LightningReferenceProblem p;
  p.num_heads = 1;
  p.head_dim = 1;
  p.cu_seqlens = {0, 2};
  p.slopes = {0.5f};
  const float q[] = {2.0f, 3.0f}, k[] = {5.0f, 7.0f}, v[] = {11.0f, 13.0f};
  double out[2], state[1];
  ReferenceLightningRecurrence(p, q, k, v, nullptr, out, state);
  const double lambda = std::exp(-0.5);
  const double s1 = 5.0 * 11.0;
  const double s2 = lambda * s1 + 7.0 * 13.0;
  EXPECT_DOUBLE_EQ(out[0], 2.0 * s1);
  EXPECT_DOUBLE_EQ(out[1], 3.0 * s2);
  EXPECT_DOUBLE_EQ(state[0], s2);
  // Reverse time: the second token is seen first.
  p.reverse = true;
  ReferenceLightningRecurrence(p, q, k, v, nullptr, out, state);
  EXPECT_DOUBLE_EQ(out[1], 3.0 * 7.0 * 13.0);
  EXPECT_DOUBLE_EQ(out[0], 2.0 * (lambda * 7.0 * 13.0 + 5.0 * 11.0));
}

TEST(LightningReference, MiniMaxSlopesMatchTheFormula) {
  const std::vector<float> s = MiniMaxSlopes(64, 10, 80);
  ASSERT_EQ(s.size(), 64u);
  const double factor = 1.0 - 10.0 / (79.0 + 1e-5) + 1e-5;
  EXPECT_FLOAT_EQ(s[0], static_cast<float>(std::pow(2.0, -8.0 / 64) * factor));
  EXPECT_FLOAT_EQ(s[63], static_cast<float>(std::pow(2.0, -8.0) * factor));
}

}  // namespace
}  // namespace lightrl
