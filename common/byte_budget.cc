#include "common/byte_budget.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lightrl {

ByteBudget::Lease::Lease(Lease&& other) noexcept
    : budget_(std::exchange(other.budget_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

ByteBudget::Lease& ByteBudget::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Release();
    budget_ = std::exchange(other.budget_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

ByteBudget::Lease::~Lease() { Release(); }

void ByteBudget::Lease::Release() {
  if (budget_ != nullptr) budget_->Release(bytes_);
  budget_ = nullptr;
  bytes_ = 0;
}

ByteBudget::ByteBudget(int64_t capacity, std::string name)
    : capacity_(std::max<int64_t>(1, capacity)), name_(std::move(name)) {}

absl::StatusOr<ByteBudget::Lease> ByteBudget::TryAcquire(int64_t bytes) {
  if (bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name_, ": cannot lease a negative byte count (", bytes, ")"));
  }
  absl::MutexLock lock(&mu_);
  if (bytes > capacity_ - in_use_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        name_, " of ", capacity_, " bytes: ", num_leases_, " request(s) in flight hold ",
        in_use_, " bytes and this one needs ", bytes,
        bytes > capacity_ ? "; it can never fit" : "; retry later"));
  }
  in_use_ += bytes;
  ++num_leases_;
  peak_ = std::max(peak_, in_use_);
  return Lease(this, bytes);
}

int64_t ByteBudget::in_use() const {
  absl::MutexLock lock(&mu_);
  return in_use_;
}

int64_t ByteBudget::peak() const {
  absl::MutexLock lock(&mu_);
  return peak_;
}

void ByteBudget::Release(int64_t bytes) {
  absl::MutexLock lock(&mu_);
  in_use_ -= bytes;
  --num_leases_;
}

}  // namespace lightrl
