// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum TFRecord framing and
// the rollout log use, plus TFRecord's "masked" form. Owns only the arithmetic: no files,
// no framing; callers decide what bytes a checksum covers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"

namespace lightrl {

// Continues a CRC-32C over `size` more bytes: Crc32cExtend(Crc32c(a), b) == Crc32c(a + b).
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t size);

inline uint32_t Crc32c(const void* data, size_t size) { return Crc32cExtend(0, data, size); }
inline uint32_t Crc32c(absl::string_view data) { return Crc32c(data.data(), data.size()); }

// A CRC stored next to the data it covers is masked so that the CRC of a buffer holding
// embedded CRCs stays well distributed (the TFRecord/LevelDB convention).
inline uint32_t MaskCrc32c(uint32_t crc) {
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}
inline uint32_t UnmaskCrc32c(uint32_t masked) {
  uint32_t rotated = masked - 0xa282ead8u;
  return (rotated >> 17) | (rotated << 15);
}

}  // namespace lightrl
