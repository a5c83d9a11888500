#include "common/byte_budget.h"

#include <atomic>
#include <thread>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace lightrl {
namespace {

using ::testing::HasSubstr;

TEST(ByteBudgetTest, LeasesUpToCapacityAndRefusesPastIt) {
  ByteBudget budget(100, "test budget (--max-test-mb)");
  absl::StatusOr<ByteBudget::Lease> a = budget.TryAcquire(60);
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<ByteBudget::Lease> b = budget.TryAcquire(40);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(budget.in_use(), 100);

  absl::StatusOr<ByteBudget::Lease> c = budget.TryAcquire(1);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(c.status().message(),
              HasSubstr("test budget (--max-test-mb) of 100 bytes: 2 request(s) in flight hold "
                        "100 bytes and this one needs 1; retry later"));
  // A zero-byte request always fits.
  EXPECT_TRUE(budget.TryAcquire(0).ok());
}

TEST(ByteBudgetTest, ALeaseGivesItsBytesBackWhenItGoes) {
  ByteBudget budget(100, "budget");
  {
    absl::StatusOr<ByteBudget::Lease> a = budget.TryAcquire(100);
    ASSERT_TRUE(a.ok());
    ByteBudget::Lease moved = *std::move(a);
    EXPECT_EQ(moved.bytes(), 100);
    EXPECT_EQ(budget.in_use(), 100);
    ByteBudget::Lease other;
    other = std::move(moved);
    EXPECT_EQ(budget.in_use(), 100);  // moving never releases twice or early
  }
  EXPECT_EQ(budget.in_use(), 0);
  EXPECT_EQ(budget.peak(), 100);
  EXPECT_TRUE(budget.TryAcquire(100).ok());
}

TEST(ByteBudgetTest, ARequestLargerThanTheBudgetNeverFits) {
  ByteBudget budget(100, "budget");
  absl::StatusOr<ByteBudget::Lease> big = budget.TryAcquire(101);
  ASSERT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(big.status().message(), HasSubstr("needs 101; it can never fit"));
  EXPECT_EQ(budget.TryAcquire(-1).status().code(), absl::StatusCode::kInvalidArgument);
}

// Many threads leasing and releasing at once never hold more than the capacity together.
TEST(ByteBudgetTest, ConcurrentLeasesStayWithinCapacity) {
  constexpr int64_t kCapacity = 1000;
  ByteBudget budget(kCapacity, "budget");
  std::atomic<int64_t> held{0}, max_held{0}, refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        absl::StatusOr<ByteBudget::Lease> lease = budget.TryAcquire(100 + 37 * ((t + i) % 7));
        if (!lease.ok()) {
          ++refused;
          continue;
        }
        const int64_t now = held += lease->bytes();
        int64_t seen = max_held.load();
        while (now > seen && !max_held.compare_exchange_weak(seen, now)) {
        }
        held -= lease->bytes();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_LE(max_held.load(), kCapacity);
  EXPECT_LE(budget.peak(), kCapacity);
  EXPECT_EQ(budget.in_use(), 0);
}

}  // namespace
}  // namespace lightrl
