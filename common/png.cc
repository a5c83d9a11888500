#include "common/png.h"

#include <array>
#include <vector>

#include "absl/strings/str_cat.h"

namespace lightrl {
namespace {

constexpr int kMaxSide = 16384;
constexpr size_t kWindow = 32768;
constexpr int kMinMatch = 3;
constexpr int kMaxMatch = 258;
constexpr int kMaxChain = 32;
constexpr int kHashBits = 15;

// Deflate's length and distance codes (RFC 1951 section 3.2.5): base value, extra bits.
constexpr std::array<int, 29> kLengthBase = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,
                                             15, 17, 19, 23, 27, 31, 35, 43, 51,  59,
                                             67, 83, 99, 115, 131, 163, 195, 227, 258};
constexpr std::array<int, 29> kLengthExtra = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                              2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
constexpr std::array<int, 30> kDistBase = {1,    2,    3,    4,    5,    7,     9,     13,
                                           17,   25,   33,   49,   65,   97,    129,   193,
                                           257,  385,  513,  769,  1025, 1537,  2049,  3073,
                                           4097, 6145, 8193, 12289, 16385, 24577};
constexpr std::array<int, 30> kDistExtra = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                            6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

// Bits go out least significant first; Huffman codes are reversed into that order.
class BitWriter {
 public:
  void Bits(uint32_t value, int count) {
    for (int i = 0; i < count; ++i) {
      acc_ |= ((value >> i) & 1u) << used_;
      if (++used_ == 8) Flush();
    }
  }
  void Code(uint32_t code, int length) {
    uint32_t reversed = 0;
    for (int i = 0; i < length; ++i) reversed |= ((code >> i) & 1u) << (length - 1 - i);
    Bits(reversed, length);
  }
  std::string Finish() {
    if (used_ > 0) Flush();
    return std::move(out_);
  }

 private:
  void Flush() {
    out_.push_back(static_cast<char>(acc_));
    acc_ = 0;
    used_ = 0;
  }
  std::string out_;
  uint32_t acc_ = 0;
  int used_ = 0;
};

// The fixed literal/length code of `symbol` (0..287).
void PutLiteralLength(BitWriter& w, int symbol) {
  if (symbol <= 143) {
    w.Code(0x30 + symbol, 8);
  } else if (symbol <= 255) {
    w.Code(0x190 + symbol - 144, 9);
  } else if (symbol <= 279) {
    w.Code(symbol - 256, 7);
  } else {
    w.Code(0xC0 + symbol - 280, 8);
  }
}

void PutMatch(BitWriter& w, int length, int distance) {
  int li = 28;
  while (kLengthBase[li] > length) --li;
  PutLiteralLength(w, 257 + li);
  w.Bits(length - kLengthBase[li], kLengthExtra[li]);
  int di = 29;
  while (kDistBase[di] > distance) --di;
  w.Code(di, 5);
  w.Bits(distance - kDistBase[di], kDistExtra[di]);
}

uint32_t Hash3(const uint8_t* p) {
  const uint32_t v = p[0] | (p[1] << 8) | (p[2] << 16);
  return (v * 2654435761u) >> (32 - kHashBits);
}

std::string Deflate(absl::Span<const uint8_t> data) {
  BitWriter w;
  w.Bits(1, 1);  // BFINAL: the only block
  w.Bits(1, 2);  // BTYPE 01: fixed Huffman codes
  std::vector<int64_t> head(size_t{1} << kHashBits, -1);
  std::vector<int64_t> prev(kWindow, -1);
  const size_t n = data.size();
  auto insert = [&](size_t pos) {
    if (pos + kMinMatch > n) return;
    const uint32_t h = Hash3(&data[pos]);
    prev[pos % kWindow] = head[h];
    head[h] = static_cast<int64_t>(pos);
  };
  size_t i = 0;
  while (i < n) {
    int best_len = 0;
    size_t best_dist = 0;
    if (i + kMinMatch <= n) {
      int64_t cand = head[Hash3(&data[i])];
      const size_t limit = std::min<size_t>(kMaxMatch, n - i);
      for (int chain = 0; cand >= 0 && chain < kMaxChain; ++chain) {
        const size_t dist = i - static_cast<size_t>(cand);
        if (dist > kWindow - 1) break;
        size_t len = 0;
        while (len < limit && data[cand + len] == data[i + len]) ++len;
        if (static_cast<int>(len) > best_len) {
          best_len = static_cast<int>(len);
          best_dist = dist;
          if (len == limit) break;
        }
        const int64_t next = prev[cand % kWindow];
        if (next >= cand) break;  // the slot was reused by a newer position
        cand = next;
      }
    }
    if (best_len >= kMinMatch) {
      PutMatch(w, best_len, static_cast<int>(best_dist));
      for (int k = 0; k < best_len; ++k) insert(i + k);
      i += best_len;
    } else {
      PutLiteralLength(w, data[i]);
      insert(i);
      ++i;
    }
  }
  PutLiteralLength(w, 256);  // end of block
  return w.Finish();
}

void PutU32(std::string& out, uint32_t v) {
  out.push_back(static_cast<char>(v >> 24));
  out.push_back(static_cast<char>(v >> 16));
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v));
}

void PutChunk(std::string& out, const char type[4], const std::string& data) {
  PutU32(out, static_cast<uint32_t>(data.size()));
  std::string body(type, 4);
  body += data;
  out += body;
  PutU32(out, Crc32(body.data(), body.size()));
}

}  // namespace

uint32_t Crc32(const void* data, size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

uint32_t Adler32(const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t a = 1, b = 0;
  for (size_t i = 0; i < size; ++i) {
    a = (a + p[i]) % 65521;
    b = (b + a) % 65521;
  }
  return (b << 16) | a;
}

std::string ZlibCompress(absl::Span<const uint8_t> data) {
  std::string out = "\x78\x01";  // deflate, 32 KiB window; (0x78 * 256 + 0x01) % 31 == 0
  out += Deflate(data);
  PutU32(out, Adler32(data.data(), data.size()));
  return out;
}

absl::StatusOr<std::string> EncodePng(int width, int height, absl::Span<const uint8_t> rgb) {
  if (width <= 0 || height <= 0 || width > kMaxSide || height > kMaxSide) {
    return absl::InvalidArgumentError(
        absl::StrCat("PNG size must be 1..", kMaxSide, " a side, got ", width, "x", height));
  }
  const size_t row = static_cast<size_t>(width) * 3;
  if (rgb.size() != row * height) {
    return absl::InvalidArgumentError(absl::StrCat("PNG of ", width, "x", height, " needs ",
                                                   row * height, " RGB bytes, got ", rgb.size()));
  }
  std::vector<uint8_t> raw;
  raw.reserve((row + 1) * height);
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);  // filter: none
    raw.insert(raw.end(), rgb.begin() + y * row, rgb.begin() + (y + 1) * row);
  }
  std::string png = "\x89PNG\r\n\x1a\n";
  std::string header;
  PutU32(header, static_cast<uint32_t>(width));
  PutU32(header, static_cast<uint32_t>(height));
  header += std::string("\x08\x02\x00\x00\x00", 5);  // 8 bits, RGB, deflate, no filter set, no interlace
  PutChunk(png, "IHDR", header);
  PutChunk(png, "IDAT", ZlibCompress(raw));
  PutChunk(png, "IEND", "");
  return png;
}

}  // namespace lightrl
