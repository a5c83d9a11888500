// Bookkeeping of the engine's sequence memory: lightning-state slots (one fixed-size state
// per sequence per lightning layer) and fixed-size KV pages for the softmax layers. Owns
// indices only, no tensors: the model runner owns the pools these indices address.
#pragma once

#include <cstdint>
#include <vector>

namespace lightrl {

class IndexPool {
 public:
  explicit IndexPool(int64_t size);
  int64_t size() const { return size_; }
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  // Returns -1 when empty.
  int64_t Allocate();
  void Free(int64_t index);

 private:
  int64_t size_;
  std::vector<int64_t> free_;
};

// A sequence's pages: token position p lives in page table[p / page_size].
struct PageTable {
  std::vector<int64_t> pages;
};

class PagedKvCache {
 public:
  PagedKvCache(int64_t num_pages, int64_t page_size) : pages_(num_pages), page_size_(page_size) {}
  int64_t page_size() const { return page_size_; }
  int64_t num_free_pages() const { return pages_.num_free(); }
  int64_t PagesFor(int64_t num_tokens) const { return (num_tokens + page_size_ - 1) / page_size_; }
  // Grows `table` to hold `num_tokens` positions; false (table unchanged) if pages run out.
  bool Reserve(PageTable& table, int64_t num_tokens);
  void Release(PageTable& table);

 private:
  IndexPool pages_;
  int64_t page_size_;
};

}  // namespace lightrl
