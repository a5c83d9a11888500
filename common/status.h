// Error-propagation macros over absl::Status / absl::StatusOr, used at every module and
// RPC boundary. Owns nothing else; tensor code uses TORCH_CHECK and kernels CUDA_CHECK.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define LIGHTRL_CONCAT_INNER(a, b) a##b
#define LIGHTRL_CONCAT(a, b) LIGHTRL_CONCAT_INNER(a, b)

// Returns from the current function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                    \
  do {                                           \
    ::absl::Status lightrl_status_ = (expr);     \
    if (!lightrl_status_.ok()) return lightrl_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, Foo());` declares x from a StatusOr or returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(LIGHTRL_CONCAT(lightrl_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(tmp).value()
