#include "common/auth_token.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace lightrl {

absl::StatusOr<std::string> NormalizeAuthToken(absl::string_view raw, absl::string_view source) {
  const absl::string_view token = absl::StripAsciiWhitespace(raw);
  if (token.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": the auth token is empty or only whitespace"));
  }
  for (char c : token) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": the auth token contains whitespace or a control character (byte ",
          static_cast<int>(u), ")"));
    }
  }
  return std::string(token);
}

absl::StatusOr<std::string> ReadAuthTokenFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat("cannot read the auth token: ", text.status().message()));
  }
  return NormalizeAuthToken(*text, path);
}

}  // namespace lightrl
