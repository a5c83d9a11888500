// A bound on the bytes that concurrent work holds at once: a counting semaphore whose
// units are bytes. A service leases each request's size while it processes the request,
// so that many concurrent calls of the largest size cannot together take more memory
// than one budget. Owns only the count; knows nothing of gRPC, protobuf or torch.
#pragma once

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace lightrl {

class ByteBudget {
 public:
  // A share of the budget; gives its bytes back when destroyed or moved from. Move-only.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&& other) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease();

    int64_t bytes() const { return bytes_; }

   private:
    friend class ByteBudget;
    Lease(ByteBudget* budget, int64_t bytes) : budget_(budget), bytes_(bytes) {}
    void Release();

    ByteBudget* budget_ = nullptr;
    int64_t bytes_ = 0;
  };

  // `capacity` >= 1 bytes. `name` says in errors what the budget is and how it is set
  // ("reward server in-flight budget (--max-inflight-mb)").
  ByteBudget(int64_t capacity, std::string name);
  ByteBudget(const ByteBudget&) = delete;
  ByteBudget& operator=(const ByteBudget&) = delete;

  // Leases `bytes` (>= 0) when the bytes already leased plus `bytes` fit the capacity;
  // otherwise RESOURCE_EXHAUSTED naming the budget, its capacity, the bytes leased and
  // `bytes`. Never waits: a request that waited would hold its memory all the same. The
  // budget must outlive the lease. Thread-safe.
  absl::StatusOr<Lease> TryAcquire(int64_t bytes);

  int64_t capacity() const { return capacity_; }
  // Bytes leased now, and the most ever leased at once.
  int64_t in_use() const;
  int64_t peak() const;

 private:
  void Release(int64_t bytes);

  const int64_t capacity_;
  const std::string name_;
  mutable absl::Mutex mu_;
  int64_t in_use_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t peak_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t num_leases_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace lightrl
