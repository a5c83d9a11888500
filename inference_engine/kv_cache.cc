#include "inference_engine/kv_cache.h"

namespace lightrl {

IndexPool::IndexPool(int64_t size) : size_(size) {
  free_.reserve(size);
  // Hand out low indices first.
  for (int64_t i = size - 1; i >= 0; --i) free_.push_back(i);
}

int64_t IndexPool::Allocate() {
  if (free_.empty()) return -1;
  int64_t i = free_.back();
  free_.pop_back();
  return i;
}

void IndexPool::Free(int64_t index) { free_.push_back(index); }

bool PagedKvCache::Reserve(PageTable& table, int64_t num_tokens) {
  const int64_t need = PagesFor(num_tokens) - static_cast<int64_t>(table.pages.size());
  if (need <= 0) return true;
  if (need > pages_.num_free()) return false;
  for (int64_t i = 0; i < need; ++i) table.pages.push_back(pages_.Allocate());
  return true;
}

void PagedKvCache::Release(PageTable& table) {
  for (int64_t p : table.pages) pages_.Free(p);
  table.pages.clear();
}

}  // namespace lightrl
