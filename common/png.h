// A PNG encoder for 8-bit RGB images: zlib stream with one fixed-Huffman deflate block
// (LZ77 over a 32 KiB window), CRC-32 per chunk and Adler-32 over the image data. Owns the
// file format only; what the pixels show is the caller's (common/canvas.h draws them).
// Kept in the tree instead of linking libpng or zlib: charts of flat colours compress well
// with fixed codes, and `lightrl plot` then needs nothing beyond the toolchain.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace lightrl {

// The PNG file of a `width` x `height` image whose pixels are `rgb`, row-major, 3 bytes a
// pixel (top row first). INVALID_ARGUMENT when the size does not match or is 0 or above
// 16384 in either direction.
absl::StatusOr<std::string> EncodePng(int width, int height, absl::Span<const uint8_t> rgb);

// The zlib stream (RFC 1950) of `data`, deflated (RFC 1951) with fixed Huffman codes.
std::string ZlibCompress(absl::Span<const uint8_t> data);

// CRC-32 (IEEE 802.3, as PNG and zlib use it) and Adler-32, for chunks and streams.
uint32_t Crc32(const void* data, size_t size, uint32_t crc = 0);
uint32_t Adler32(const void* data, size_t size);

}  // namespace lightrl
