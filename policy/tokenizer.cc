#include "policy/tokenizer.h"

#include <algorithm>
#include <array>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/utf8.h"
#include "common/file_util.h"
#include "common/status.h"
#include "policy/unicode_tables.h"

namespace lightrl {
namespace {

// ---------------------------------------------------------------------------------------
// UTF-8

struct CharInfo {
  char32_t cp;
  uint32_t len;
};

// Decodes the character at `pos` of text already checked by FindInvalidUtf8.
inline CharInfo CharAt(absl::string_view s, size_t pos) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  if (b0 < 0x80) return {b0, 1};
  auto cont = [&](size_t i) { return static_cast<char32_t>(s[pos + i]) & 0x3F; };
  if (b0 < 0xE0) return {(static_cast<char32_t>(b0 & 0x1F) << 6) | cont(1), 2};
  if (b0 < 0xF0) return {(static_cast<char32_t>(b0 & 0x0F) << 12) | (cont(1) << 6) | cont(2), 3};
  return {(static_cast<char32_t>(b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3), 4};
}

// Length of the well-formed UTF-8 sequence at `pos` (Unicode Table 3-7), or the negated
// length of its longest well-formed prefix (at least 1) when it is ill-formed. The
// negated length is the "maximal subpart" that Rust's from_utf8_lossy, which HF's
// ByteLevel decoder uses, replaces with one U+FFFD.
int Utf8SequenceAt(absl::string_view s, size_t pos) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  if (b0 < 0x80) return 1;
  int need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (int i = 1; i <= need; ++i) {
    if (pos + i >= s.size()) return -i;
    const auto b = static_cast<unsigned char>(s[pos + i]);
    const bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return -i;
  }
  return need + 1;
}

// Byte offset of the first ill-formed sequence, or npos.
size_t FindInvalidUtf8(absl::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    if (static_cast<unsigned char>(s[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const int n = Utf8SequenceAt(s, pos);
    if (n < 0) return pos;
    pos += n;
  }
  return absl::string_view::npos;
}


std::string LossyUtf8(std::string bytes) {
  if (FindInvalidUtf8(bytes) == absl::string_view::npos) return bytes;
  std::string out;
  out.reserve(bytes.size() + 16);
  size_t pos = 0;
  while (pos < bytes.size()) {
    const int n = Utf8SequenceAt(bytes, pos);
    if (n > 0) {
      out.append(bytes, pos, n);
      pos += n;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
      pos += -n;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// The GPT-2 byte <-> character alphabet: printable Latin-1 bytes stand for themselves, the
// other 68 bytes for U+0100 upwards, so every byte has a visible, non-space character.

struct ByteAlphabet {
  std::array<char32_t, 256> byte_to_char;
  std::array<int16_t, 512> char_to_byte;  // every alphabet character is below U+0200

  ByteAlphabet() {
    char_to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      byte_to_char[b] = printable ? static_cast<char32_t>(b) : next++;
      char_to_byte[byte_to_char[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& Alphabet() {
  static const ByteAlphabet* alphabet = new ByteAlphabet();
  return *alphabet;
}

// The bytes a token stands for when every character of it is in the byte alphabet.
std::optional<std::string> ByteLevelToBytes(absl::string_view token) {
  const ByteAlphabet& alphabet = Alphabet();
  std::string bytes;
  bytes.reserve(token.size());
  for (size_t pos = 0; pos < token.size();) {
    if (Utf8SequenceAt(token, pos) < 0) return std::nullopt;
    const CharInfo c = CharAt(token, pos);
    if (c.cp >= alphabet.char_to_byte.size() || alphabet.char_to_byte[c.cp] < 0) {
      return std::nullopt;
    }
    bytes += static_cast<char>(alphabet.char_to_byte[c.cp]);
    pos += c.len;
  }
  return bytes;
}

// HF's ByteLevel decoder works token by token: a token of alphabet characters becomes
// its bytes, any other (an added token such as "<tool call>") is kept verbatim.
std::string ByteLevelDecodeToken(absl::string_view token) {
  std::optional<std::string> bytes = ByteLevelToBytes(token);
  return bytes ? *std::move(bytes) : std::string(token);
}

// ---------------------------------------------------------------------------------------
// Character classes of the pre-tokenizer regexes. L, N and White_Space are disjoint.

enum CharClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

struct AsciiClasses {
  std::array<CharClass, 128> table;
  AsciiClasses() {
    for (int c = 0; c < 128; ++c) {
      CharClass k = kOther;
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) k = kLetter;
      if (c >= '0' && c <= '9') k = kNumber;
      if ((c >= 0x09 && c <= 0x0D) || c == ' ') k = kSpace;
      table[c] = k;
    }
  }
};

inline CharClass Classify(char32_t cp) {
  static const AsciiClasses* ascii = new AsciiClasses();
  if (cp < 128) return ascii->table[cp];
  if (unicode::IsLetter(cp)) return kLetter;
  if (unicode::IsNumber(cp)) return kNumber;
  if (unicode::IsWhiteSpace(cp)) return kSpace;
  return kOther;
}

struct ClassifiedChar {
  char32_t cp;
  uint32_t len;
  CharClass cls;
};

inline ClassifiedChar ClassAt(absl::string_view s, size_t pos) {
  const CharInfo c = CharAt(s, pos);
  return {c.cp, c.len, Classify(c.cp)};
}

// End of the run of characters of class `cls` starting at `pos`, at most `max_chars` long.
size_t ScanRun(absl::string_view s, size_t pos, CharClass cls, size_t max_chars = SIZE_MAX) {
  size_t count = 0;
  while (pos < s.size() && count < max_chars) {
    const ClassifiedChar c = ClassAt(s, pos);
    if (c.cls != cls) break;
    pos += c.len;
    ++count;
  }
  return pos;
}

// Byte length of "s|t|re|ve|m|ll|d" at `pos` (the text after an apostrophe), 0 if none.
// Oniguruma's (?i) folds with Unicode simple case folding, under which U+017F (long s)
// equals 's'; no other character folds onto these letters.
size_t MatchContraction(absl::string_view s, size_t pos, bool ignore_case) {
  auto fold_at = [&](size_t p, size_t* len) -> char {
    if (p >= s.size()) return 0;
    const CharInfo c = CharAt(s, p);
    *len = c.len;
    if (!ignore_case) return c.cp < 128 ? static_cast<char>(c.cp) : 0;
    if (c.cp >= 'A' && c.cp <= 'Z') return static_cast<char>(c.cp - 'A' + 'a');
    if (c.cp == 0x17F) return 's';
    return c.cp < 128 ? static_cast<char>(c.cp) : 0;
  };
  size_t len1 = 0, len2 = 0;
  const char c1 = fold_at(pos, &len1);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return len1;
  if (c1 != 'r' && c1 != 'v' && c1 != 'l') return 0;
  const char c2 = fold_at(pos + len1, &len2);
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
    return len1 + len2;
  }
  return 0;
}

// `\s+(?!\S)|\s+` at `pos`, whose character is white space: the whole run when it ends
// the text or is one character long, otherwise the run less its last character (the
// lookahead forces the backtrack, leaving that space to prefix the next word).
size_t MatchSpaceRun(absl::string_view s, size_t pos) {
  size_t end = pos, last = pos, count = 0;
  while (end < s.size()) {
    const ClassifiedChar c = ClassAt(s, end);
    if (c.cls != kSpace) break;
    last = end;
    end += c.len;
    ++count;
  }
  if (end == s.size() || count < 2) return end;
  return last;
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Returns the end of the match at `pos`; the pattern matches at every position.
size_t MatchGpt2(absl::string_view s, size_t pos) {
  if (s[pos] == '\'') {
    if (size_t n = MatchContraction(s, pos + 1, /*ignore_case=*/false)) return pos + 1 + n;
  }
  const ClassifiedChar c = ClassAt(s, pos);
  // The optional space of the next three alternatives.
  size_t q = pos;
  ClassifiedChar d = c;
  if (c.cp == ' ' && pos + 1 < s.size()) {
    q = pos + 1;
    d = ClassAt(s, q);
  }
  if (d.cls != kSpace) return ScanRun(s, q, d.cls);
  return MatchSpaceRun(s, pos);
}

// GPT-4 / Llama-3 / Qwen:
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}
//   | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// max_digits 0 means \p{N}+. Matches at every position.
size_t MatchGpt4(absl::string_view s, size_t pos, size_t max_digits) {
  const size_t n = s.size();
  if (s[pos] == '\'') {
    if (size_t k = MatchContraction(s, pos + 1, /*ignore_case=*/true)) return pos + 1 + k;
  }
  const ClassifiedChar c = ClassAt(s, pos);
  if (c.cls == kLetter) return ScanRun(s, pos, kLetter);
  if (c.cls != kNumber && c.cp != '\r' && c.cp != '\n' && pos + c.len < n) {
    if (ClassAt(s, pos + c.len).cls == kLetter) return ScanRun(s, pos + c.len, kLetter);
  }
  if (c.cls == kNumber) return ScanRun(s, pos, kNumber, max_digits == 0 ? SIZE_MAX : max_digits);
  const size_t q = (c.cp == ' ' && pos + 1 < n) ? pos + 1 : pos;
  if (ClassAt(s, q).cls == kOther) {
    size_t end = ScanRun(s, q, kOther);
    while (end < n && (s[end] == '\r' || s[end] == '\n')) ++end;
    return end;
  }
  // Here c is white space. \s*[\r\n]+ backtracks the greedy \s* to the last line break
  // of the run, and [\r\n]+ then takes just that one.
  size_t end = pos;
  size_t last_break = absl::string_view::npos;
  while (end < n) {
    const ClassifiedChar e = ClassAt(s, end);
    if (e.cls != kSpace) break;
    if (e.cp == '\r' || e.cp == '\n') last_break = end;
    end += e.len;
  }
  if (last_break != absl::string_view::npos) return last_break + 1;
  return MatchSpaceRun(s, pos);
}

// ---------------------------------------------------------------------------------------
// Split pre-tokenizer

enum class PatternKind { kLiteral, kGpt2, kGpt4 };

struct SplitPattern {
  PatternKind kind = PatternKind::kGpt2;
  std::string literal;    // kLiteral
  size_t max_digits = 0;  // kGpt4: 0 = unbounded
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct SplitStep {
  SplitPattern pattern;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
};

constexpr absl::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string Gpt4Regex(absl::string_view digits) {
  return absl::StrCat(R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|)", digits,
                      R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)");
}

struct Span {
  size_t begin;
  size_t end;
  bool is_match;
};

// HF's Pattern::find_matches: matches and the gaps between them, covering all of `s`.
void FindMatches(const SplitPattern& pattern, absl::string_view s, std::vector<Span>& spans) {
  spans.clear();
  size_t prev = 0;
  auto add_match = [&](size_t begin, size_t end) {
    if (prev != begin) spans.push_back({prev, begin, false});
    spans.push_back({begin, end, true});
    prev = end;
  };
  if (pattern.kind == PatternKind::kLiteral) {
    for (size_t at = s.find(pattern.literal); at != absl::string_view::npos;
         at = s.find(pattern.literal, at + pattern.literal.size())) {
      add_match(at, at + pattern.literal.size());
    }
  } else {
    for (size_t pos = 0; pos < s.size();) {
      const size_t end = pattern.kind == PatternKind::kGpt2 ? MatchGpt2(s, pos)
                                                            : MatchGpt4(s, pos, pattern.max_digits);
      add_match(pos, end);
      pos = end;
    }
  }
  if (prev != s.size()) spans.push_back({prev, s.size(), false});
}

// HF's NormalizedString::split: applies the delimiter behaviour, drops empty pieces.
void SplitPiece(const SplitStep& step, absl::string_view s, std::vector<Span>& spans,
                std::vector<absl::string_view>& out) {
  FindMatches(step.pattern, s, spans);
  if (step.invert) {
    for (Span& span : spans) span.is_match = !span.is_match;
  }
  std::vector<Span> kept;
  bool previous_match = false;
  switch (step.behavior) {
    case SplitBehavior::kIsolated:
      kept = spans;
      break;
    case SplitBehavior::kRemoved:
      for (const Span& span : spans) {
        if (!span.is_match) kept.push_back(span);
      }
      break;
    case SplitBehavior::kContiguous:
      for (const Span& span : spans) {
        if (span.is_match == previous_match && !kept.empty()) {
          kept.back().end = span.end;
        } else {
          kept.push_back(span);
        }
        previous_match = span.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& span : spans) {
        if (span.is_match && !previous_match && !kept.empty()) {
          kept.back().end = span.end;
        } else {
          kept.push_back(span);
        }
        previous_match = span.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) {
          kept.back().begin = it->begin;
        } else {
          kept.push_back(*it);
        }
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  for (const Span& span : kept) {
    if (span.end > span.begin) out.push_back(s.substr(span.begin, span.end - span.begin));
  }
}

// ---------------------------------------------------------------------------------------
// Added tokens

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
};

// A byte trie over added-token contents, answering "the longest token starting here"
// (aho-corasick's leftmost-longest, one start position at a time).
class TokenTrie {
 public:
  TokenTrie() : nodes_(1) { first_byte_.fill(false); }

  void Add(absl::string_view content, int32_t token_index) {
    int32_t node = 0;
    for (char ch : content) {
      const auto b = static_cast<unsigned char>(ch);
      int32_t child = Child(node, b);
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[node].children.emplace_back(b, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    nodes_[node].token_index = token_index;
    first_byte_[static_cast<unsigned char>(content[0])] = true;
    empty_ = false;
  }

  bool empty() const { return empty_; }
  bool MayStartAt(unsigned char b) const { return first_byte_[b]; }

  // {token index, byte length} of the longest token at `pos`; index -1 when none.
  std::pair<int32_t, size_t> LongestAt(absl::string_view s, size_t pos) const {
    std::pair<int32_t, size_t> best{-1, 0};
    int32_t node = 0;
    for (size_t i = pos; i < s.size(); ++i) {
      node = Child(node, static_cast<unsigned char>(s[i]));
      if (node < 0) break;
      if (nodes_[node].token_index >= 0) best = {nodes_[node].token_index, i + 1 - pos};
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t token_index = -1;
  };

  int32_t Child(int32_t node, unsigned char b) const {
    for (const auto& [byte, child] : nodes_[node].children) {
      if (byte == b) return child;
    }
    return -1;
  }

  std::vector<Node> nodes_;
  std::array<bool, 256> first_byte_;
  bool empty_ = true;
};

// A piece of the input: plain text, or an added token (token_id >= 0) with its text.
struct Segment {
  absl::string_view text;
  int32_t token_id;
};

// ---------------------------------------------------------------------------------------
// BPE

struct MergeRule {
  int32_t rank;
  int32_t new_id;
};

inline uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

struct Symbol {
  int32_t id;  // -1 once merged into its left neighbour
  int32_t prev;
  int32_t next;
  bool unk;
};

struct QueuedMerge {
  int32_t rank;
  int32_t pos;
  // std heaps are max-heaps; this ordering pops the lowest rank, then the leftmost pair.
  bool operator<(const QueuedMerge& o) const {
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

// Buffers reused across the words of one Encode call.
struct Scratch {
  std::vector<Span> spans;
  std::vector<absl::string_view> pieces;
  std::vector<absl::string_view> next_pieces;
  std::vector<Symbol> symbols;
  std::vector<QueuedMerge> queue;
  std::string prefixed;
};

enum class IdKind : uint8_t { kUnused, kVocab, kAdded, kSpecial };

// Ids index dense per-id tables; this bound (67M, over 300 times the largest vocabularies
// in use) keeps a corrupt id from turning into a multi-gigabyte allocation.
constexpr int64_t kMaxTokenId = (int64_t{1} << 26) - 1;

// ---------------------------------------------------------------------------------------
// Reading tokenizer.json

class FieldReader {
 public:
  explicit FieldReader(std::string source) : source_(std::move(source)) {}

  absl::Status Error(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", field, " ", what));
  }

  static std::string Describe(const Json& value) {
    if (value.is_string()) return absl::StrCat("\"", value.as_string(), "\"");
    std::string dumped = value.Dump();
    if (dumped.size() > 60) dumped = absl::StrCat(dumped.substr(0, 57), "...");
    return absl::StrCat(value.type_name(), " ", dumped);
  }

  absl::StatusOr<bool> Bool(const Json& object, absl::string_view key, absl::string_view field,
                            bool default_value) const {
    const Json* value = object.find(key);
    if (value == nullptr || value->is_null()) return default_value;
    if (!value->is_bool()) return Error(field, "must be a boolean, got " + Describe(*value));
    return value->as_bool();
  }

  // Missing and null both read as nullopt.
  absl::StatusOr<std::optional<std::string>> OptionalString(const Json& object,
                                                            absl::string_view key,
                                                            absl::string_view field) const {
    const Json* value = object.find(key);
    if (value == nullptr || value->is_null()) return std::optional<std::string>();
    if (!value->is_string()) return Error(field, "must be a string, got " + Describe(*value));
    return std::optional<std::string>(value->as_string());
  }

  absl::StatusOr<std::string> Type(const Json& object, absl::string_view field) const {
    const std::string type_field = absl::StrCat(field, ".type");
    if (!object.is_object()) {
      return Error(field, "must be an object, got " + Describe(object));
    }
    ASSIGN_OR_RETURN(std::optional<std::string> type, OptionalString(object, "type", type_field));
    if (!type) return Error(type_field, "is missing");
    return *type;
  }

 private:
  std::string source_;
};

}  // namespace

// ---------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::string source;

  // BPE model.
  absl::flat_hash_map<std::string, int32_t> vocab;  // byte-level strings ("Ġthe")
  absl::flat_hash_map<uint64_t, MergeRule> merges;
  std::array<int32_t, 256> byte_to_id;  // -1 when the byte's character is not in vocab
  bool ignore_merges = false;
  // Raw-byte spelling of the vocabulary, only for ignore_merges' whole-word lookup.
  absl::flat_hash_map<std::string, int32_t> raw_vocab;
  std::optional<std::string> unk_token;
  std::optional<int32_t> unk_id;
  bool fuse_unk = false;

  // Pre-tokenizer: Split steps, then ByteLevel.
  std::vector<SplitStep> splits;
  bool add_prefix_space = false;
  bool byte_level_regex = true;

  // Added tokens, matched in two passes like HF's AddedVocabulary.
  std::vector<AddedToken> added;
  absl::flat_hash_map<std::string, int32_t> added_ids;
  TokenTrie raw_trie;         // normalized == false (usually the special tokens)
  TokenTrie normalized_trie;  // normalized == true

  // Per id: kind, token string, and the bytes the ByteLevel decoder makes of it.
  std::vector<IdKind> id_kind;
  std::vector<std::string> id_token;
  std::vector<std::string> id_bytes;

  absl::Status LoadModel(const Json& model, const FieldReader& r);
  absl::Status LoadAddedTokens(const Json* tokens, const FieldReader& r);
  absl::Status LoadNormalizer(const Json* normalizer, const FieldReader& r);
  absl::Status LoadPreTokenizer(const Json* pre_tokenizer, const FieldReader& r);
  absl::Status FlattenPreTokenizer(const Json& node, const std::string& field, const FieldReader& r,
                                   std::vector<const Json*>& steps,
                                   std::vector<std::string>& fields);
  absl::Status LoadDecoder(const Json* decoder, const FieldReader& r);
  absl::Status BuildIdTables(const FieldReader& r);

  void SplitAddedTokens(const TokenTrie& trie, absl::string_view text, bool parse_special,
                        std::vector<Segment>& out) const;
  absl::Status EncodeText(absl::string_view text, Scratch& scratch,
                          std::vector<int32_t>& ids) const;
  absl::Status EncodeWord(absl::string_view word, Scratch& scratch,
                          std::vector<int32_t>& ids) const;
};

absl::Status Tokenizer::Impl::LoadModel(const Json& model, const FieldReader& r) {
  if (!model.is_object()) return r.Error("model", "must be an object, got " + r.Describe(model));
  const Json* type = model.find("type");
  if (type == nullptr) {
    // HF infers the model from its fields when "type" is absent; only BPE has merges.
    if (!model.contains("merges")) return r.Error("model.type", "is missing");
  } else if (!type->is_string() || type->as_string() != "BPE") {
    return r.Error("model.type", "must be \"BPE\", got " + r.Describe(*type));
  }

  ASSIGN_OR_RETURN(bool byte_fallback,
                   r.Bool(model, "byte_fallback", "model.byte_fallback", false));
  if (byte_fallback) return r.Error("model.byte_fallback", "must be false (not supported)");
  if (const Json* dropout = model.find("dropout"); dropout != nullptr && !dropout->is_null()) {
    if (!dropout->is_number() || dropout->as_double() != 0.0) {
      return r.Error("model.dropout",
                     "must be null: BPE dropout is random, got " + r.Describe(*dropout));
    }
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const std::string field = absl::StrCat("model.", key);
    ASSIGN_OR_RETURN(std::optional<std::string> affix, r.OptionalString(model, key, field));
    if (affix && !affix->empty()) {
      return r.Error(field, absl::StrCat("must be null for byte-level BPE, got \"", *affix, "\""));
    }
  }
  ASSIGN_OR_RETURN(ignore_merges, r.Bool(model, "ignore_merges", "model.ignore_merges", false));
  ASSIGN_OR_RETURN(fuse_unk, r.Bool(model, "fuse_unk", "model.fuse_unk", false));
  ASSIGN_OR_RETURN(unk_token, r.OptionalString(model, "unk_token", "model.unk_token"));

  const Json* vocab_json = model.find("vocab");
  if (vocab_json == nullptr) return r.Error("model.vocab", "is missing");
  if (!vocab_json->is_object()) {
    return r.Error("model.vocab",
                   "must be an object of token -> id, got " + r.Describe(*vocab_json));
  }
  vocab.reserve(vocab_json->size());
  for (const auto& [token, id] : vocab_json->as_object()) {
    const std::string field = absl::StrCat("model.vocab[\"", token, "\"]");
    if (!id.is_int() || id.as_int() < 0 || id.as_int() > kMaxTokenId) {
      return r.Error(field, absl::StrCat("must be an integer id in [0, ", kMaxTokenId, "], got ",
                                         r.Describe(id)));
    }
    auto [it, inserted] = vocab.emplace(token, static_cast<int32_t>(id.as_int()));
    if (!inserted && it->second != id.as_int()) {
      return r.Error(field,
                     absl::StrCat("appears twice, with ids ", it->second, " and ", id.as_int()));
    }
  }
  if (unk_token) {
    if (auto it = vocab.find(*unk_token); it != vocab.end()) unk_id = it->second;
  }

  const Json* merges_json = model.find("merges");
  if (merges_json == nullptr) return r.Error("model.merges", "is missing");
  if (!merges_json->is_array()) {
    return r.Error("model.merges", "must be an array, got " + r.Describe(*merges_json));
  }
  merges.reserve(merges_json->size());
  int32_t rank = 0;
  std::string merged;
  for (size_t i = 0; i < merges_json->size(); ++i) {
    const Json& entry = merges_json->as_array()[i];
    const std::string field = absl::StrCat("model.merges[", i, "]");
    absl::string_view left, right;
    if (entry.is_string()) {
      const std::string& line = entry.as_string();
      if (absl::StartsWith(line, "#version")) continue;  // HF skips these header lines
      std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
      if (parts.size() != 2) {
        return r.Error(field,
                       "must be \"left right\" (two tokens, one space), got " + r.Describe(entry));
      }
      left = parts[0];
      right = parts[1];
    } else if (entry.is_array() && entry.size() == 2 && entry.as_array()[0].is_string() &&
               entry.as_array()[1].is_string()) {
      left = entry.as_array()[0].as_string();
      right = entry.as_array()[1].as_string();
    } else {
      return r.Error(field,
                     "must be \"left right\" or [\"left\", \"right\"], got " + r.Describe(entry));
    }
    auto left_it = vocab.find(left);
    if (left_it == vocab.end()) {
      return r.Error(field, absl::StrCat("names \"", left, "\", which is not in model.vocab"));
    }
    auto right_it = vocab.find(right);
    if (right_it == vocab.end()) {
      return r.Error(field, absl::StrCat("names \"", right, "\", which is not in model.vocab"));
    }
    merged = absl::StrCat(left, right);
    auto merged_it = vocab.find(merged);
    if (merged_it == vocab.end()) {
      return r.Error(field, absl::StrCat("makes \"", merged, "\", which is not in model.vocab"));
    }
    // A repeated pair takes its last rank, as HF's HashMap collect does.
    merges[PairKey(left_it->second, right_it->second)] = {rank, merged_it->second};
    ++rank;
  }

  const ByteAlphabet& alphabet = Alphabet();
  std::string ch;
  for (int b = 0; b < 256; ++b) {
    ch.clear();
    AppendUtf8(ch, alphabet.byte_to_char[b]);
    auto it = vocab.find(ch);
    byte_to_id[b] = it == vocab.end() ? -1 : it->second;
  }
  if (ignore_merges) {
    raw_vocab.reserve(vocab.size());
    for (const auto& [token, id] : vocab) {
      // Tokens outside the byte alphabet can never equal a pre-tokenized word.
      if (std::optional<std::string> raw = ByteLevelToBytes(token)) {
        raw_vocab.emplace(*std::move(raw), id);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadAddedTokens(const Json* tokens, const FieldReader& r) {
  if (tokens == nullptr || tokens->is_null()) return absl::OkStatus();
  if (!tokens->is_array()) {
    return r.Error("added_tokens", "must be an array, got " + r.Describe(*tokens));
  }
  // HF ignores the ids written here: a token already in the vocabulary keeps its id and
  // the others are numbered from the vocabulary's size on. A file whose ids disagree
  // would encode differently in HF and here, so that is an error.
  int32_t next_id = static_cast<int32_t>(vocab.size());
  for (size_t i = 0; i < tokens->size(); ++i) {
    const Json& entry = tokens->as_array()[i];
    const std::string field = absl::StrCat("added_tokens[", i, "]");
    if (!entry.is_object()) return r.Error(field, "must be an object, got " + r.Describe(entry));
    AddedToken token;
    ASSIGN_OR_RETURN(std::optional<std::string> content,
                     r.OptionalString(entry, "content", field + ".content"));
    if (!content || content->empty())
      return r.Error(field + ".content", "must be a non-empty string");
    token.content = *content;
    const Json* id = entry.find("id");
    if (id == nullptr || !id->is_int() || id->as_int() < 0 || id->as_int() > kMaxTokenId) {
      return r.Error(field + ".id",
                     absl::StrCat("must be an integer id in [0, ", kMaxTokenId, "], got ",
                                  id ? r.Describe(*id) : std::string("nothing")));
    }
    token.id = static_cast<int32_t>(id->as_int());
    ASSIGN_OR_RETURN(token.special, r.Bool(entry, "special", field + ".special", false));
    ASSIGN_OR_RETURN(token.single_word,
                     r.Bool(entry, "single_word", field + ".single_word", false));
    ASSIGN_OR_RETURN(token.lstrip, r.Bool(entry, "lstrip", field + ".lstrip", false));
    ASSIGN_OR_RETURN(token.rstrip, r.Bool(entry, "rstrip", field + ".rstrip", false));
    ASSIGN_OR_RETURN(token.normalized,
                     r.Bool(entry, "normalized", field + ".normalized", !token.special));

    int32_t expected_id;
    if (auto it = added_ids.find(token.content); it != added_ids.end()) {
      expected_id = it->second;
    } else if (auto vit = vocab.find(token.content); vit != vocab.end()) {
      expected_id = vit->second;
    } else {
      expected_id = next_id++;
    }
    if (token.id != expected_id) {
      return r.Error(field + ".id",
                     absl::StrFormat("is %d for \"%s\", but HuggingFace tokenizers would give it "
                                     "id %d (an added token keeps its model.vocab id, otherwise "
                                     "ids continue after the vocabulary in file order)",
                                     token.id, token.content, expected_id));
    }
    if (added_ids.contains(token.content)) continue;  // HF keeps the first definition
    added_ids.emplace(token.content, token.id);
    const int32_t index = static_cast<int32_t>(added.size());
    (token.normalized ? normalized_trie : raw_trie).Add(token.content, index);
    added.push_back(std::move(token));
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadNormalizer(const Json* normalizer, const FieldReader& r) {
  if (normalizer == nullptr || normalizer->is_null()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string type, r.Type(*normalizer, "normalizer"));
  if (type == "Sequence") {
    const Json* list = normalizer->find("normalizers");
    if (list != nullptr && list->is_array() && list->size() == 0) return absl::OkStatus();
  }
  return r.Error("normalizer", absl::StrCat("of type \"", type,
                                            "\" is not supported (only null or an empty "
                                            "Sequence); encoding without it would differ"));
}

absl::Status Tokenizer::Impl::FlattenPreTokenizer(const Json& node, const std::string& field,
                                                  const FieldReader& r,
                                                  std::vector<const Json*>& steps,
                                                  std::vector<std::string>& fields) {
  ASSIGN_OR_RETURN(std::string type, r.Type(node, field));
  if (type != "Sequence") {
    steps.push_back(&node);
    fields.push_back(field);
    return absl::OkStatus();
  }
  const Json* list = node.find("pretokenizers");
  if (list == nullptr || !list->is_array()) {
    return r.Error(field + ".pretokenizers", "must be an array");
  }
  for (size_t i = 0; i < list->size(); ++i) {
    RETURN_IF_ERROR(FlattenPreTokenizer(
        list->as_array()[i], absl::StrCat(field, ".pretokenizers[", i, "]"), r, steps, fields));
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadPreTokenizer(const Json* pre_tokenizer, const FieldReader& r) {
  constexpr absl::string_view kShape =
      "must be ByteLevel or a Sequence of Split steps ending in ByteLevel";
  if (pre_tokenizer == nullptr || pre_tokenizer->is_null()) {
    return r.Error("pre_tokenizer", absl::StrCat(kShape, ", got null"));
  }
  std::vector<const Json*> steps;
  std::vector<std::string> fields;
  RETURN_IF_ERROR(FlattenPreTokenizer(*pre_tokenizer, "pre_tokenizer", r, steps, fields));
  for (size_t i = 0; i < steps.size(); ++i) {
    const Json& step = *steps[i];
    const std::string& field = fields[i];
    ASSIGN_OR_RETURN(std::string type, r.Type(step, field));
    const bool last = i + 1 == steps.size();
    if (type == "ByteLevel") {
      // Later steps would see the byte-level characters ("Ġ"), not the text.
      if (!last) return r.Error(field, "(ByteLevel) must be the last pre-tokenizer");
      ASSIGN_OR_RETURN(add_prefix_space,
                       r.Bool(step, "add_prefix_space", field + ".add_prefix_space", true));
      ASSIGN_OR_RETURN(byte_level_regex, r.Bool(step, "use_regex", field + ".use_regex", true));
      return absl::OkStatus();
    }
    if (type != "Split") {
      return r.Error(field + ".type", absl::StrCat("\"", type,
                                                   "\" is not supported (only Split, ByteLevel "
                                                   "and Sequence)"));
    }
    SplitStep split;
    const Json* pattern = step.find("pattern");
    if (pattern == nullptr || !pattern->is_object() || pattern->size() != 1) {
      return r.Error(field + ".pattern", "must be {\"Regex\": ...} or {\"String\": ...}");
    }
    const auto& [pattern_kind, pattern_text] = pattern->as_object()[0];
    const std::string pattern_field = absl::StrCat(field, ".pattern.", pattern_kind);
    if (!pattern_text.is_string()) {
      return r.Error(pattern_field, "must be a string, got " + r.Describe(pattern_text));
    }
    const std::string& text = pattern_text.as_string();
    if (pattern_kind == "String") {
      if (text.empty()) return r.Error(pattern_field, "must not be empty");
      split.pattern.kind = PatternKind::kLiteral;
      split.pattern.literal = text;
    } else if (pattern_kind == "Regex") {
      if (text == kGpt2Regex) {
        split.pattern.kind = PatternKind::kGpt2;
      } else if (text == Gpt4Regex(R"(\p{N}{1,3})")) {
        split.pattern = {PatternKind::kGpt4, "", 3};
      } else if (text == Gpt4Regex(R"(\p{N})")) {
        split.pattern = {PatternKind::kGpt4, "", 1};
      } else if (text == Gpt4Regex(R"(\p{N}+)")) {
        split.pattern = {PatternKind::kGpt4, "", 0};
      } else {
        return r.Error(pattern_field,
                       absl::StrCat("is not a supported regex (the GPT-2 pattern or the "
                                    "GPT-4/Llama-3/Qwen pattern are; others need a new "
                                    "scanner in policy/tokenizer.cc), got \"",
                                    text, "\""));
      }
    } else {
      return r.Error(field + ".pattern",
                     absl::StrCat("kind \"", pattern_kind, "\" must be \"Regex\" or \"String\""));
    }
    ASSIGN_OR_RETURN(std::optional<std::string> behavior,
                     r.OptionalString(step, "behavior", field + ".behavior"));
    static const std::pair<const char*, SplitBehavior> kBehaviors[] = {
        {"Removed", SplitBehavior::kRemoved},
        {"Isolated", SplitBehavior::kIsolated},
        {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
        {"MergedWithNext", SplitBehavior::kMergedWithNext},
        {"Contiguous", SplitBehavior::kContiguous},
    };
    bool known = false;
    for (const auto& [name, value] : kBehaviors) {
      if (behavior && *behavior == name) {
        split.behavior = value;
        known = true;
      }
    }
    if (!known) {
      return r.Error(field + ".behavior",
                     absl::StrCat("must be Removed, Isolated, MergedWithPrevious, MergedWithNext "
                                  "or Contiguous, got ",
                                  behavior ? "\"" + *behavior + "\"" : std::string("nothing")));
    }
    ASSIGN_OR_RETURN(split.invert, r.Bool(step, "invert", field + ".invert", false));
    splits.push_back(std::move(split));
  }
  return r.Error("pre_tokenizer", absl::StrCat(kShape,
                                               "; it has no ByteLevel step (the BPE vocabulary is "
                                               "byte-level)"));
}

absl::Status Tokenizer::Impl::LoadDecoder(const Json* decoder, const FieldReader& r) {
  if (decoder == nullptr || decoder->is_null()) {
    return r.Error("decoder", "must be ByteLevel, got null");
  }
  ASSIGN_OR_RETURN(std::string type, r.Type(*decoder, "decoder"));
  if (type != "ByteLevel") {
    return r.Error("decoder.type", absl::StrCat("must be \"ByteLevel\", got \"", type, "\""));
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::BuildIdTables(const FieldReader& r) {
  int32_t size = 0;
  for (const auto& [token, id] : vocab) size = std::max(size, id + 1);
  for (const AddedToken& token : added) size = std::max(size, token.id + 1);
  id_kind.assign(size, IdKind::kUnused);
  id_token.assign(size, std::string());
  id_bytes.assign(size, std::string());
  for (const auto& [token, id] : vocab) {
    if (id_kind[id] != IdKind::kUnused) {
      // Decoding that id would depend on hash order, as it does in HF.
      const auto& [first, second] = std::minmax(id_token[id], token);
      return r.Error("model.vocab",
                     absl::StrFormat("gives id %d to both \"%s\" and \"%s\"", id, first, second));
    }
    id_kind[id] = IdKind::kVocab;
    id_token[id] = token;
  }
  // An added token's content wins over a vocabulary entry with the same id, as in HF.
  for (const AddedToken& token : added) {
    id_kind[token.id] = token.special ? IdKind::kSpecial : IdKind::kAdded;
    id_token[token.id] = token.content;
  }
  for (int32_t id = 0; id < size; ++id) {
    if (id_kind[id] != IdKind::kUnused) id_bytes[id] = ByteLevelDecodeToken(id_token[id]);
  }
  return absl::OkStatus();
}

// HF's AddedVocabulary::find_matches over one piece of text.
void Tokenizer::Impl::SplitAddedTokens(const TokenTrie& trie, absl::string_view text,
                                       bool parse_special, std::vector<Segment>& out) const {
  if (text.empty()) return;
  if (trie.empty()) {
    out.push_back({text, -1});
    return;
  }
  const size_t n = text.size();
  size_t start_offset = 0;
  for (size_t pos = 0; pos < n;) {
    if (!trie.MayStartAt(static_cast<unsigned char>(text[pos]))) {
      ++pos;
      continue;
    }
    const auto [index, length] = trie.LongestAt(text, pos);
    if (index < 0) {
      ++pos;
      continue;
    }
    size_t start = pos;
    size_t stop = pos + length;
    pos = stop;  // the automaton resumes after the match even when it is discarded below
    const AddedToken& token = added[index];
    if (!parse_special && token.special) continue;
    if (token.single_word) {
      auto is_word_before = [&](size_t at) {
        size_t p = at - 1;
        while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
        return unicode::IsWordChar(CharAt(text, p).cp);
      };
      const bool start_space = start == 0 || !is_word_before(start);
      const bool stop_space = stop == n || !unicode::IsWordChar(CharAt(text, stop).cp);
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) {
      size_t new_start = start;
      while (new_start > 0) {
        size_t p = new_start - 1;
        while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
        if (!unicode::IsWhiteSpace(CharAt(text, p).cp)) break;
        new_start = p;
      }
      start = std::max(new_start, start_offset);
    }
    if (token.rstrip) {
      while (stop < n) {
        const CharInfo c = CharAt(text, stop);
        if (!unicode::IsWhiteSpace(c.cp)) break;
        stop += c.len;
      }
    }
    if (start_offset < start) out.push_back({text.substr(start_offset, start - start_offset), -1});
    out.push_back({text.substr(start, stop - start), token.id});
    start_offset = stop;
  }
  if (start_offset < n) out.push_back({text.substr(start_offset), -1});
}

absl::Status Tokenizer::Impl::EncodeWord(absl::string_view word, Scratch& scratch,
                                         std::vector<int32_t>& ids) const {
  if (ignore_merges) {
    if (auto it = raw_vocab.find(word); it != raw_vocab.end()) {
      ids.push_back(it->second);
      return absl::OkStatus();
    }
  }
  std::vector<Symbol>& symbols = scratch.symbols;
  symbols.clear();
  for (char ch : word) {
    const auto b = static_cast<unsigned char>(ch);
    const int32_t id = byte_to_id[b];
    if (id >= 0) {
      symbols.push_back({id, 0, 0, false});
      continue;
    }
    if (!unk_token) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: byte 0x%02X has no token in model.vocab and model.unk_token is null", source, b));
    }
    if (!unk_id) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: model.unk_token \"%s\" is needed for byte 0x%02X but is not in model.vocab", source,
          *unk_token, b));
    }
    if (fuse_unk && !symbols.empty() && symbols.back().unk) continue;
    symbols.push_back({*unk_id, 0, 0, true});
  }
  const int32_t n = static_cast<int32_t>(symbols.size());
  for (int32_t i = 0; i < n; ++i) {
    symbols[i].prev = i - 1;
    symbols[i].next = i + 1 < n ? i + 1 : -1;
  }
  auto find_merge = [&](int32_t left, int32_t right) -> const MergeRule* {
    auto it = merges.find(PairKey(left, right));
    return it == merges.end() ? nullptr : &it->second;
  };
  // Lowest rank first, leftmost among equal ranks: the order HF's Word::merge_all uses.
  // Entries go stale when a neighbour merges first; they are skipped when popped.
  std::vector<QueuedMerge>& queue = scratch.queue;
  queue.clear();
  for (int32_t i = 0; i + 1 < n; ++i) {
    if (const MergeRule* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push_back({m->rank, i});
    }
  }
  std::make_heap(queue.begin(), queue.end());
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end());
    const QueuedMerge top = queue.back();
    queue.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.id < 0 || left.next < 0) continue;
    const int32_t right_pos = left.next;
    const MergeRule* m = find_merge(left.id, symbols[right_pos].id);
    if (m == nullptr || m->rank != top.rank) continue;
    left.id = m->new_id;
    left.unk = false;
    left.next = symbols[right_pos].next;
    symbols[right_pos].id = -1;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const MergeRule* pm = find_merge(symbols[left.prev].id, left.id)) {
        queue.push_back({pm->rank, left.prev});
        std::push_heap(queue.begin(), queue.end());
      }
    }
    if (left.next >= 0) {
      if (const MergeRule* nm = find_merge(left.id, symbols[left.next].id)) {
        queue.push_back({nm->rank, top.pos});
        std::push_heap(queue.begin(), queue.end());
      }
    }
  }
  for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = symbols[i].next) ids.push_back(symbols[i].id);
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::EncodeText(absl::string_view text, Scratch& scratch,
                                         std::vector<int32_t>& ids) const {
  std::vector<absl::string_view>& pieces = scratch.pieces;
  pieces.assign(1, text);
  for (const SplitStep& step : splits) {
    scratch.next_pieces.clear();
    for (absl::string_view piece : pieces) {
      SplitPiece(step, piece, scratch.spans, scratch.next_pieces);
    }
    pieces.swap(scratch.next_pieces);
  }
  for (absl::string_view piece : pieces) {
    // HF's ByteLevel prepends the space to every piece that reaches it, not only to the
    // start of the text: after an added token, and after each earlier Split.
    if (add_prefix_space && piece[0] != ' ') {
      scratch.prefixed.assign(1, ' ');
      scratch.prefixed.append(piece.data(), piece.size());
      piece = scratch.prefixed;
    }
    if (!byte_level_regex) {
      RETURN_IF_ERROR(EncodeWord(piece, scratch, ids));
      continue;
    }
    for (size_t pos = 0; pos < piece.size();) {
      const size_t end = MatchGpt2(piece, pos);
      RETURN_IF_ERROR(EncodeWord(piece.substr(pos, end - pos), scratch, ids));
      pos = end;
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------

absl::StatusOr<Tokenizer> Tokenizer::FromFile(const std::string& path) {
  const std::string file = IsDirectory(path) ? JoinPath(path, "tokenizer.json") : path;
  ASSIGN_OR_RETURN(std::string text, ReadFile(file));
  absl::StatusOr<Json> json = Json::Parse(text);
  if (!json.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": ", json.status().message()));
  }
  return FromJson(*json, file);
}

absl::StatusOr<Tokenizer> Tokenizer::FromJson(const Json& json, const std::string& source_name) {
  FieldReader r(source_name);
  if (!json.is_object()) {
    return r.Error("the document", "must be a JSON object, got " + r.Describe(json));
  }
  auto impl = std::make_shared<Impl>();
  impl->source = source_name;
  const Json* model = json.find("model");
  if (model == nullptr) return r.Error("model", "is missing");
  RETURN_IF_ERROR(impl->LoadModel(*model, r));
  RETURN_IF_ERROR(impl->LoadNormalizer(json.find("normalizer"), r));
  RETURN_IF_ERROR(impl->LoadPreTokenizer(json.find("pre_tokenizer"), r));
  RETURN_IF_ERROR(impl->LoadDecoder(json.find("decoder"), r));
  RETURN_IF_ERROR(impl->LoadAddedTokens(json.find("added_tokens"), r));
  RETURN_IF_ERROR(impl->BuildIdTables(r));
  return Tokenizer(std::move(impl));
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(absl::string_view text,
                                                       bool parse_special) const {
  if (size_t bad = FindInvalidUtf8(text); bad != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrFormat("text to encode is not valid UTF-8 (byte 0x%02X at offset %d)",
                        static_cast<unsigned char>(text[bad]), bad));
  }
  const Impl& impl = *impl_;
  // Pass 1 extracts the non-normalized added tokens from the raw text, pass 2 the
  // normalized ones from what is left (HF's extract_and_normalize; no normalizer here).
  std::vector<Segment> raw_segments, segments;
  impl.SplitAddedTokens(impl.raw_trie, text, parse_special, raw_segments);
  for (const Segment& segment : raw_segments) {
    if (segment.token_id >= 0) {
      segments.push_back(segment);
    } else {
      impl.SplitAddedTokens(impl.normalized_trie, segment.text, parse_special, segments);
    }
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  Scratch scratch;
  for (const Segment& segment : segments) {
    if (segment.token_id >= 0) {
      ids.push_back(segment.token_id);
    } else {
      RETURN_IF_ERROR(impl.EncodeText(segment.text, scratch, ids));
    }
  }
  return ids;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_special) const {
  const Impl& impl = *impl_;
  const int32_t size = vocab_size();
  std::string bytes;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "token id %d (position %d) is out of range for vocab size %d", id, i, size));
    }
    const IdKind kind = impl.id_kind[id];
    if (kind == IdKind::kUnused) {
      return absl::InvalidArgumentError(
          absl::StrFormat("token id %d (position %d) names no token (vocab size %d)", id, i, size));
    }
    if (skip_special && kind == IdKind::kSpecial) continue;
    bytes += impl.id_bytes[id];
  }
  return LossyUtf8(std::move(bytes));
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_kind.size()); }

std::optional<int32_t> Tokenizer::TokenToId(absl::string_view token) const {
  if (auto it = impl_->added_ids.find(token); it != impl_->added_ids.end()) return it->second;
  if (auto it = impl_->vocab.find(token); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

std::string Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return std::string();
  return impl_->id_token[id];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->id_kind[id] == IdKind::kSpecial;
}

}  // namespace lightrl
