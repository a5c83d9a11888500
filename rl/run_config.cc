#include "rl/run_config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cmath>
#include <filesystem>
#include <initializer_list>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/did_you_mean.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/status.h"
#include "common/yaml.h"
#include "reward/reward_registry.h"

namespace lightrl {
namespace {

// Largest reward.max_request_mb: no reward server accepts more than 1 GiB in one message
// (kMaxRequestBytes in proto/grpc_util.h, which the config does not depend on).
constexpr int64_t kMaxRewardRequestMb = 1024;

absl::Status Invalid(absl::string_view message) {
  return absl::InvalidArgumentError(message);
}

// Suggest() over any list of names.
template <typename Names>
std::string Suggest(absl::string_view word, const Names& candidates, bool list_known = true) {
  std::vector<std::string> names;
  for (const auto& candidate : candidates) names.emplace_back(candidate);
  return lightrl::Suggest(word, names, list_known);
}

// A value as an error message quotes it: strings quoted, collections by kind.
std::string Describe(const Json& v) {
  if (v.is_array()) return "a list";
  if (v.is_object()) return "a mapping";
  return v.Dump();
}

bool IsIntegral(const Json& v) {
  if (v.is_int()) return true;
  // 1e3 is a float in YAML but an obvious integer; 2^53 bounds exact doubles.
  return v.is_number() && std::floor(v.as_double()) == v.as_double() &&
         std::fabs(v.as_double()) <= 9007199254740992.0;
}

absl::Status CheckDtype(absl::string_view field, const std::string& dtype) {
  if (dtype == "float32" || dtype == "bfloat16") return absl::OkStatus();
  return Invalid(absl::StrCat(field, " must be float32 or bfloat16, got \"", dtype, "\""));
}

absl::Status CheckPositive(absl::string_view field, double v) {
  if (std::isfinite(v) && v > 0) return absl::OkStatus();
  return Invalid(absl::StrCat(field, " must be > 0, got ", v));
}

absl::Status CheckNonNegative(absl::string_view field, double v) {
  if (std::isfinite(v) && v >= 0) return absl::OkStatus();
  return Invalid(absl::StrCat(field, " must be >= 0, got ", v));
}

absl::Status CheckAtLeast(absl::string_view field, int64_t v, int64_t min) {
  if (v >= min) return absl::OkStatus();
  return Invalid(absl::StrCat(field, " must be >= ", min, ", got ", v));
}

absl::Status Prefixed(absl::string_view prefix, const absl::Status& s) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}

// Absolute and normalised against the working directory; unchanged if that fails (the
// working directory was removed), since a relative path still names the same file.
std::string Absolute(const std::string& path) {
  std::error_code error;
  std::filesystem::path p = std::filesystem::absolute(path, error);
  if (error) return path;
  return p.lexically_normal().string();
}

// What is wrong with `address` as "host:port" (a name, an IPv4 address or a bracketed
// IPv6 one, and a port in [min_port, 65535]); empty when nothing is.
std::string HostPortProblem(const std::string& address, int min_port) {
  const std::string expected =
      absl::StrCat("must be host:port with a port in [", min_port, ", 65535]",
                   min_port == 0 ? " (0 picks a free one)" : "", ", got \"", address, "\"");
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return expected;
  const std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  bool host_ok = !host.empty();
  if (host_ok && host.front() == '[') {
    host_ok = host.size() > 2 && host.back() == ']' &&
              host.find_first_not_of("0123456789abcdefABCDEF:.", 1) == host.size() - 1;
  } else {
    host_ok = host_ok && host.find_first_not_of(
                             "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") ==
                             std::string::npos;
  }
  int port_number = -1;
  const bool port_ok = !port.empty() && port.size() <= 5 &&
                       port.find_first_not_of("0123456789") == std::string::npos &&
                       absl::SimpleAtoi(port, &port_number) && port_number >= min_port &&
                       port_number <= 65535;
  return host_ok && port_ok ? std::string() : expected;
}

// Why the run could not create or write `dir` (absolute), judged without creating
// anything: the directory itself if it exists, else its nearest existing ancestor, must
// be a directory this process may write. Empty when it can.
std::string OutputDirProblem(const std::string& dir) {
  std::filesystem::path existing(dir);
  struct stat st;
  while (::stat(existing.c_str(), &st) != 0) {
    if (errno != ENOENT && errno != ENOTDIR) {
      return absl::StrCat("cannot inspect ", existing.string(), ": ", std::strerror(errno));
    }
    if (!existing.has_parent_path() || existing.parent_path() == existing) return "";
    existing = existing.parent_path();
  }
  const bool is_target = existing == std::filesystem::path(dir);
  if (!S_ISDIR(st.st_mode)) {
    return is_target ? absl::StrCat(dir, " exists and is not a directory")
                     : absl::StrCat("cannot create ", dir, ": ", existing.string(),
                                    " is not a directory");
  }
  if (::access(existing.c_str(), W_OK | X_OK) != 0) {
    return is_target ? absl::StrCat(dir, " is not writable: ", std::strerror(errno))
                     : absl::StrCat("cannot create ", dir, ": ", existing.string(),
                                    " is not writable: ", std::strerror(errno));
  }
  return "";
}

// --- binding YAML to the structs ---

class Binder {
 public:
  Binder(const YamlDocument& doc, std::string dir) : doc_(doc), dir_(std::move(dir)) {}

  absl::Status ErrorAt(absl::string_view path, absl::string_view what) const {
    return Invalid(absl::StrCat(doc_.Where(path), ": ", what));
  }

  // A mapping whose keys must all be in `known`; nullptr when absent or null.
  absl::StatusOr<const Json*> Mapping(const Json* value, absl::string_view path,
                                      std::initializer_list<absl::string_view> known) const {
    if (value == nullptr || value->is_null()) return nullptr;
    if (!value->is_object()) {
      return ErrorAt(path, absl::StrCat(path.empty() ? "the run config" : path,
                                        " must be a mapping, got ", Describe(*value)));
    }
    for (const auto& [key, unused] : value->as_object()) {
      if (std::find(known.begin(), known.end(), key) != known.end()) continue;
      const std::string full = path.empty() ? key : absl::StrCat(path, ".", key);
      return ErrorAt(full, absl::StrCat(full, " is not a known ",
                                        path.empty() ? "section" : "key",
                                        Suggest(key, known)));
    }
    return value;
  }

  // The value of `key` in `section`, nullptr when the section, the key or its value
  // (YAML null: "key:" with nothing after it) is absent, which keeps the default.
  static const Json* Get(const Json* section, absl::string_view key) {
    if (section == nullptr) return nullptr;
    const Json* v = section->find(key);
    return v != nullptr && !v->is_null() ? v : nullptr;
  }

  absl::Status Int(const Json* section, absl::string_view path, absl::string_view key,
                   int64_t& out) const {
    const Json* v = Get(section, key);
    if (v == nullptr) return absl::OkStatus();
    const std::string full = absl::StrCat(path, ".", key);
    if (!IsIntegral(*v)) {
      return ErrorAt(full, absl::StrCat(full, " must be an integer, got ", Describe(*v)));
    }
    out = v->is_int() ? v->as_int() : static_cast<int64_t>(v->as_double());
    return absl::OkStatus();
  }

  absl::Status Double(const Json* section, absl::string_view path, absl::string_view key,
                      double& out) const {
    const Json* v = Get(section, key);
    if (v == nullptr) return absl::OkStatus();
    const std::string full = absl::StrCat(path, ".", key);
    if (!v->is_number()) {
      return ErrorAt(full, absl::StrCat(full, " must be a number, got ", Describe(*v)));
    }
    out = v->as_double();
    return absl::OkStatus();
  }

  absl::Status Bool(const Json* section, absl::string_view path, absl::string_view key,
                    bool& out) const {
    const Json* v = Get(section, key);
    if (v == nullptr) return absl::OkStatus();
    const std::string full = absl::StrCat(path, ".", key);
    if (!v->is_bool()) {
      return ErrorAt(full, absl::StrCat(full, " must be true or false, got ", Describe(*v)));
    }
    out = v->as_bool();
    return absl::OkStatus();
  }

  absl::Status String(const Json* section, absl::string_view path, absl::string_view key,
                      std::string& out) const {
    const Json* v = Get(section, key);
    if (v == nullptr) return absl::OkStatus();
    const std::string full = absl::StrCat(path, ".", key);
    if (!v->is_string()) {
      return ErrorAt(full, absl::StrCat(full, " must be a string, got ", Describe(*v),
                                        v->is_number() || v->is_bool() ? " (quote it)" : ""));
    }
    out = v->as_string();
    return absl::OkStatus();
  }

  absl::Status StringList(const Json* section, absl::string_view path, absl::string_view key,
                          std::vector<std::string>& out) const {
    const Json* v = Get(section, key);
    if (v == nullptr) return absl::OkStatus();
    const std::string full = absl::StrCat(path, ".", key);
    if (!v->is_array()) {
      return ErrorAt(full, absl::StrCat(full, " must be a list of strings, got ", Describe(*v)));
    }
    out.clear();
    for (size_t i = 0; i < v->size(); ++i) {
      const Json& item = v->as_array()[i];
      if (!item.is_string()) {
        const std::string at = absl::StrCat(full, "[", i, "]");
        return ErrorAt(at, absl::StrCat(at, " must be a string, got ", Describe(item)));
      }
      out.push_back(item.as_string());
    }
    return absl::OkStatus();
  }

  absl::Status IntList(const Json* section, absl::string_view path, absl::string_view key,
                       std::vector<int64_t>& out) const {
    const Json* v = Get(section, key);
    if (v == nullptr) return absl::OkStatus();
    const std::string full = absl::StrCat(path, ".", key);
    if (!v->is_array()) {
      return ErrorAt(full, absl::StrCat(full, " must be a list of integers, got ",
                                        Describe(*v)));
    }
    out.clear();
    for (size_t i = 0; i < v->size(); ++i) {
      const Json& item = v->as_array()[i];
      if (!IsIntegral(item)) {
        const std::string at = absl::StrCat(full, "[", i, "]");
        return ErrorAt(at, absl::StrCat(at, " must be an integer, got ", Describe(item)));
      }
      out.push_back(item.is_int() ? item.as_int() : static_cast<int64_t>(item.as_double()));
    }
    return absl::OkStatus();
  }

  // An input path: resolved against the YAML's directory, made absolute, and required to
  // exist (as a directory when `directory`, else as a file).
  absl::Status InputPath(const Json* section, absl::string_view path, absl::string_view key,
                         bool directory, std::string& out) const {
    std::string written;
    RETURN_IF_ERROR(String(section, path, key, written));
    if (Get(section, key) == nullptr) return absl::OkStatus();
    const std::string full = absl::StrCat(path, ".", key);
    if (written.empty()) return ErrorAt(full, absl::StrCat(full, " must not be empty"));
    const std::string resolved =
        std::filesystem::path(JoinPath(dir_, written)).lexically_normal().string();
    const char* what = directory ? "directory" : "file";
    if (!FileExists(resolved)) {
      std::string message = absl::StrCat(full, ": ", what, " ", written, " does not exist");
      if (resolved != written) absl::StrAppend(&message, " (looked for ", resolved, ")");
      return ErrorAt(full, message);
    }
    if (IsDirectory(resolved) != directory) {
      return ErrorAt(full, absl::StrCat(full, ": ", written, " is ",
                                        directory ? "not a directory" : "a directory",
                                        ", expected a ", what));
    }
    out = resolved;
    return absl::OkStatus();
  }

  absl::Status Required(const Json* section, absl::string_view path,
                        absl::string_view key) const {
    if (Get(section, key) != nullptr) return absl::OkStatus();
    const std::string full = absl::StrCat(path, ".", key);
    return ErrorAt(full, absl::StrCat(full, " is required"));
  }

 private:
  const YamlDocument& doc_;
  std::string dir_;  // absolute directory of the YAML file
};

absl::Status BindRun(const Binder& b, const Json* root, RunSection& run) {
  ASSIGN_OR_RETURN(const Json* s,
                   b.Mapping(Binder::Get(root, "run"), "run",
                             {"name", "output_dir", "seed", "steps", "device", "dtype",
                              "eval_every", "eval_samples", "eval_sampled"}));
  RETURN_IF_ERROR(b.Required(s, "run", "output_dir"));
  RETURN_IF_ERROR(b.Required(s, "run", "steps"));
  RETURN_IF_ERROR(b.String(s, "run", "name", run.name));
  RETURN_IF_ERROR(b.String(s, "run", "output_dir", run.output_dir));
  if (!run.output_dir.empty()) {
    run.output_dir = Absolute(run.output_dir);
    if (std::string problem = OutputDirProblem(run.output_dir); !problem.empty()) {
      return b.ErrorAt("run.output_dir", absl::StrCat("run.output_dir: ", problem));
    }
  }
  RETURN_IF_ERROR(b.Int(s, "run", "seed", run.seed));
  RETURN_IF_ERROR(b.Int(s, "run", "steps", run.steps));
  RETURN_IF_ERROR(b.String(s, "run", "device", run.device));
  RETURN_IF_ERROR(b.String(s, "run", "dtype", run.dtype));
  RETURN_IF_ERROR(b.Int(s, "run", "eval_every", run.eval_every));
  RETURN_IF_ERROR(b.Int(s, "run", "eval_samples", run.eval_samples));
  return b.Int(s, "run", "eval_sampled", run.eval_sampled);
}

absl::Status BindModel(const Binder& b, const Json* root, ModelSection& model) {
  ASSIGN_OR_RETURN(const Json* s, b.Mapping(Binder::Get(root, "model"), "model",
                                            {"path", "init_config", "init_seed", "tokenizer"}));
  RETURN_IF_ERROR(b.InputPath(s, "model", "path", /*directory=*/true, model.path));
  RETURN_IF_ERROR(b.InputPath(s, "model", "init_config", false, model.init_config));
  RETURN_IF_ERROR(b.Int(s, "model", "init_seed", model.init_seed));
  RETURN_IF_ERROR(b.InputPath(s, "model", "tokenizer", false, model.tokenizer));
  if (model.tokenizer.empty() && !model.path.empty()) {
    const std::string beside = JoinPath(model.path, "tokenizer.json");
    if (FileExists(beside)) model.tokenizer = beside;
  }
  return absl::OkStatus();
}

absl::Status BindData(const Binder& b, const Json* root, DataSection& data) {
  ASSIGN_OR_RETURN(const Json* s,
                   b.Mapping(Binder::Get(root, "data"), "data",
                             {"train", "eval", "prompt_key", "answer_key", "shuffle"}));
  RETURN_IF_ERROR(b.Required(s, "data", "train"));
  RETURN_IF_ERROR(b.InputPath(s, "data", "train", false, data.train));
  RETURN_IF_ERROR(b.InputPath(s, "data", "eval", false, data.eval));
  RETURN_IF_ERROR(b.String(s, "data", "prompt_key", data.prompt_key));
  RETURN_IF_ERROR(b.String(s, "data", "answer_key", data.answer_key));
  return b.Bool(s, "data", "shuffle", data.shuffle);
}

absl::Status BindRollout(const Binder& b, const Json* root, RolloutSection& r) {
  ASSIGN_OR_RETURN(const Json* s,
                   b.Mapping(Binder::Get(root, "rollout"), "rollout",
                             {"group_size", "prompts_per_step", "max_new_tokens", "temperature",
                              "top_p", "top_k", "stop_strings", "stop_token_ids",
                              "early_stop_window", "early_stop_prob", "max_num_seqs",
                              "max_staleness", "async"}));
  RETURN_IF_ERROR(b.Int(s, "rollout", "group_size", r.group_size));
  RETURN_IF_ERROR(b.Int(s, "rollout", "prompts_per_step", r.prompts_per_step));
  RETURN_IF_ERROR(b.Int(s, "rollout", "max_new_tokens", r.max_new_tokens));
  RETURN_IF_ERROR(b.Double(s, "rollout", "temperature", r.temperature));
  RETURN_IF_ERROR(b.Double(s, "rollout", "top_p", r.top_p));
  RETURN_IF_ERROR(b.Int(s, "rollout", "top_k", r.top_k));
  RETURN_IF_ERROR(b.StringList(s, "rollout", "stop_strings", r.stop_strings));
  RETURN_IF_ERROR(b.IntList(s, "rollout", "stop_token_ids", r.stop_token_ids));
  RETURN_IF_ERROR(b.Int(s, "rollout", "early_stop_window", r.early_stop_window));
  RETURN_IF_ERROR(b.Double(s, "rollout", "early_stop_prob", r.early_stop_prob));
  RETURN_IF_ERROR(b.Int(s, "rollout", "max_num_seqs", r.max_num_seqs));
  RETURN_IF_ERROR(b.Int(s, "rollout", "max_staleness", r.max_staleness));
  return b.Bool(s, "rollout", "async", r.async);
}

absl::Status BindReward(const Binder& b, const Json* root, RewardSection& r) {
  ASSIGN_OR_RETURN(const Json* s,
                   b.Mapping(Binder::Get(root, "reward"), "reward",
                             {"kind", "weights", "options", "format_pattern", "timeout_s",
                              "max_attempts", "max_request_mb", "server_wait_s", "servers"}));
  RETURN_IF_ERROR(b.String(s, "reward", "kind", r.kind));
  if (const Json* w = Binder::Get(s, "weights"); w != nullptr) {
    if (!w->is_object()) {
      return b.ErrorAt("reward.weights",
                       absl::StrCat("reward.weights must be a mapping of reward kind to "
                                    "weight, got ", Describe(*w)));
    }
    r.weights.clear();
    for (const auto& [kind, weight] : w->as_object()) {
      if (!weight.is_number()) {
        const std::string at = absl::StrCat("reward.weights.", kind);
        return b.ErrorAt(at, absl::StrCat(at, " must be a number, got ", Describe(weight)));
      }
      r.weights[kind] = weight.as_double();
    }
  }
  if (const Json* options = Binder::Get(s, "options"); options != nullptr) {
    if (!options->is_object()) {
      return b.ErrorAt("reward.options",
                       absl::StrCat("reward.options must be a mapping of reward kind to its "
                                    "options, got ", Describe(*options)));
    }
    r.options.clear();
    for (const auto& [kind, value] : options->as_object()) {
      r.options[kind] = value.is_null() ? Json::MakeObject() : value;
    }
  }
  std::string format_pattern;
  RETURN_IF_ERROR(b.String(s, "reward", "format_pattern", format_pattern));
  if (Binder::Get(s, "format_pattern") != nullptr) {
    Json& format = r.options["format"];
    if (format.is_null()) format = Json::MakeObject();
    if (format.is_object() && format.contains("pattern")) {
      return b.ErrorAt("reward.format_pattern",
                       "reward.format_pattern and reward.options.format.pattern are both set; "
                       "keep the latter");
    }
    if (format.is_object()) format.set("pattern", Json(format_pattern));
  }
  RETURN_IF_ERROR(b.Int(s, "reward", "max_attempts", r.max_attempts));
  RETURN_IF_ERROR(b.Int(s, "reward", "max_request_mb", r.max_request_mb));
  RETURN_IF_ERROR(b.Double(s, "reward", "server_wait_s", r.server_wait_s));
  if (const Json* servers = Binder::Get(s, "servers"); servers != nullptr) {
    if (!servers->is_object()) {
      return b.ErrorAt("reward.servers",
                       absl::StrCat("reward.servers must be a mapping of name to server, got ",
                                    Describe(*servers)));
    }
    for (const auto& [name, value] : servers->as_object()) {
      const std::string path = absl::StrCat("reward.servers.", name);
      ASSIGN_OR_RETURN(const Json* e, b.Mapping(&value, path,
                                                {"address", "weight", "reward_kind",
                                                 "auth_token_file"}));
      RewardServerSection server;
      RETURN_IF_ERROR(b.Required(e, path, "address"));
      RETURN_IF_ERROR(b.String(e, path, "address", server.address));
      RETURN_IF_ERROR(b.Double(e, path, "weight", server.weight));
      RETURN_IF_ERROR(b.String(e, path, "reward_kind", server.reward_kind));
      RETURN_IF_ERROR(b.InputPath(e, path, "auth_token_file", false, server.auth_token_file));
      r.servers[name] = std::move(server);
    }
  }
  return b.Double(s, "reward", "timeout_s", r.timeout_s);
}

absl::Status BindAlgorithm(const Binder& b, const Json* root, AlgorithmSection& a) {
  ASSIGN_OR_RETURN(const Json* s,
                   b.Mapping(Binder::Get(root, "algorithm"), "algorithm",
                             {"loss", "eps_low", "eps_high", "ppo_eps", "dapo_eps_low",
                              "dapo_eps_high", "unified_mask", "truncated_is_cap", "kl_coef", "dual_clip",
                              "dynamic_sampling", "max_refill_rounds", "minibatches",
                              "overlong"}));
  std::string loss = PolicyLossKindName(a.loss.kind);
  RETURN_IF_ERROR(b.String(s, "algorithm", "loss", loss));
  absl::StatusOr<PolicyLossKind> kind = ParsePolicyLossKind(loss);
  if (!kind.ok()) {
    return b.ErrorAt("algorithm.loss",
                     absl::StrCat("algorithm.loss must be one of cispo, grpo, ppo_clip, dapo, "
                                  "got \"", loss, "\""));
  }
  a.loss.kind = *kind;
  RETURN_IF_ERROR(b.Double(s, "algorithm", "eps_low", a.loss.eps_low));
  RETURN_IF_ERROR(b.Double(s, "algorithm", "eps_high", a.loss.eps_high));
  RETURN_IF_ERROR(b.Double(s, "algorithm", "ppo_eps", a.loss.ppo_eps));
  RETURN_IF_ERROR(b.Double(s, "algorithm", "dapo_eps_low", a.loss.dapo_eps_low));
  RETURN_IF_ERROR(b.Double(s, "algorithm", "dapo_eps_high", a.loss.dapo_eps_high));
  RETURN_IF_ERROR(b.Bool(s, "algorithm", "unified_mask", a.loss.unified_mask));
  RETURN_IF_ERROR(b.Double(s, "algorithm", "truncated_is_cap", a.loss.truncated_is_cap));
  RETURN_IF_ERROR(b.Double(s, "algorithm", "kl_coef", a.loss.kl_coef));
  RETURN_IF_ERROR(b.Double(s, "algorithm", "dual_clip", a.loss.dual_clip));
  RETURN_IF_ERROR(b.Bool(s, "algorithm", "dynamic_sampling", a.dynamic_sampling));
  RETURN_IF_ERROR(b.Int(s, "algorithm", "max_refill_rounds", a.max_refill_rounds));
  RETURN_IF_ERROR(b.Int(s, "algorithm", "minibatches", a.minibatches));
  ASSIGN_OR_RETURN(const Json* overlong, b.Mapping(Binder::Get(s, "overlong"),
                                                   "algorithm.overlong",
                                                   {"filter", "soft_buffer"}));
  RETURN_IF_ERROR(b.Bool(overlong, "algorithm.overlong", "filter", a.overlong_filter));
  return b.Int(overlong, "algorithm.overlong", "soft_buffer", a.overlong_soft_buffer);
}

absl::Status BindOptimizer(const Binder& b, const Json* root, OptimizerSection& o) {
  ASSIGN_OR_RETURN(const Json* s,
                   b.Mapping(Binder::Get(root, "optimizer"), "optimizer",
                             {"lr", "betas", "eps", "weight_decay", "grad_clip", "schedule",
                              "warmup_steps", "min_lr_ratio", "aux_loss_coef",
                              "moe_capacity_factor"}));
  RETURN_IF_ERROR(b.Double(s, "optimizer", "lr", o.lr));
  if (const Json* betas = Binder::Get(s, "betas"); betas != nullptr) {
    if (!betas->is_array() || betas->size() != 2) {
      return b.ErrorAt("optimizer.betas",
                       absl::StrCat("optimizer.betas must be a list of 2 numbers [beta1, "
                                    "beta2], got ", betas->is_array() ? betas->Dump()
                                                                      : Describe(*betas)));
    }
    for (size_t i = 0; i < 2; ++i) {
      const Json& beta = betas->as_array()[i];
      const std::string at = absl::StrCat("optimizer.betas[", i, "]");
      if (!beta.is_number()) {
        return b.ErrorAt(at, absl::StrCat(at, " must be a number, got ", Describe(beta)));
      }
      o.betas[i] = beta.as_double();
    }
  }
  RETURN_IF_ERROR(b.Double(s, "optimizer", "eps", o.eps));
  RETURN_IF_ERROR(b.Double(s, "optimizer", "weight_decay", o.weight_decay));
  RETURN_IF_ERROR(b.Double(s, "optimizer", "grad_clip", o.grad_clip));
  RETURN_IF_ERROR(b.String(s, "optimizer", "schedule", o.schedule));
  RETURN_IF_ERROR(b.Int(s, "optimizer", "warmup_steps", o.warmup_steps));
  RETURN_IF_ERROR(b.Double(s, "optimizer", "min_lr_ratio", o.min_lr_ratio));
  RETURN_IF_ERROR(b.Double(s, "optimizer", "aux_loss_coef", o.aux_loss_coef));
  return b.Double(s, "optimizer", "moe_capacity_factor", o.moe_capacity_factor);
}

absl::Status BindSft(const Binder& b, const Json* root, SftSection& sft) {
  ASSIGN_OR_RETURN(const Json* s, b.Mapping(Binder::Get(root, "sft"), "sft",
                                            {"steps", "batch_size", "lr", "schedule",
                                             "warmup_steps", "min_lr_ratio", "data"}));
  RETURN_IF_ERROR(b.Int(s, "sft", "steps", sft.steps));
  RETURN_IF_ERROR(b.Int(s, "sft", "batch_size", sft.batch_size));
  RETURN_IF_ERROR(b.Double(s, "sft", "lr", sft.lr));
  RETURN_IF_ERROR(b.String(s, "sft", "schedule", sft.schedule));
  RETURN_IF_ERROR(b.Int(s, "sft", "warmup_steps", sft.warmup_steps));
  RETURN_IF_ERROR(b.Double(s, "sft", "min_lr_ratio", sft.min_lr_ratio));
  return b.InputPath(s, "sft", "data", false, sft.data);
}

absl::Status BindCheckpoint(const Binder& b, const Json* root, CheckpointSection& c) {
  ASSIGN_OR_RETURN(const Json* s, b.Mapping(Binder::Get(root, "checkpoint"), "checkpoint",
                                            {"every", "keep", "dtype"}));
  RETURN_IF_ERROR(b.Int(s, "checkpoint", "every", c.every));
  RETURN_IF_ERROR(b.Int(s, "checkpoint", "keep", c.keep));
  return b.String(s, "checkpoint", "dtype", c.dtype);
}

absl::Status BindLogging(const Binder& b, const Json* root, LoggingSection& l) {
  ASSIGN_OR_RETURN(const Json* s, b.Mapping(Binder::Get(root, "logging"), "logging",
                                            {"jsonl", "tensorboard", "progress"}));
  RETURN_IF_ERROR(b.Bool(s, "logging", "jsonl", l.jsonl));
  RETURN_IF_ERROR(b.Bool(s, "logging", "tensorboard", l.tensorboard));
  return b.Bool(s, "logging", "progress", l.progress);
}

absl::Status BindFleet(const Binder& b, const Json* root, FleetSection& f) {
  ASSIGN_OR_RETURN(const Json* s,
                   b.Mapping(Binder::Get(root, "fleet"), "fleet",
                             {"mode", "rollout_workers", "coordinator_address", "auth_token_file",
                              "min_workers", "worker_wait_s", "worker_capacity",
                              "max_group_attempts", "weight_dtype", "worker_device",
                              "weight_sync", "spawn_reward_workers", "reward_worker_restarts"}));
  RETURN_IF_ERROR(b.String(s, "fleet", "mode", f.mode));
  RETURN_IF_ERROR(b.Int(s, "fleet", "rollout_workers", f.rollout_workers));
  RETURN_IF_ERROR(b.String(s, "fleet", "coordinator_address", f.coordinator_address));
  RETURN_IF_ERROR(b.InputPath(s, "fleet", "auth_token_file", false, f.auth_token_file));
  RETURN_IF_ERROR(b.Int(s, "fleet", "min_workers", f.min_workers));
  RETURN_IF_ERROR(b.Double(s, "fleet", "worker_wait_s", f.worker_wait_s));
  RETURN_IF_ERROR(b.Int(s, "fleet", "worker_capacity", f.worker_capacity));
  RETURN_IF_ERROR(b.Int(s, "fleet", "max_group_attempts", f.max_group_attempts));
  RETURN_IF_ERROR(b.String(s, "fleet", "weight_dtype", f.weight_dtype));
  RETURN_IF_ERROR(b.String(s, "fleet", "weight_sync", f.weight_sync));
  RETURN_IF_ERROR(b.Bool(s, "fleet", "spawn_reward_workers", f.spawn_reward_workers));
  RETURN_IF_ERROR(b.Int(s, "fleet", "reward_worker_restarts", f.reward_worker_restarts));
  return b.String(s, "fleet", "worker_device", f.worker_device);
}

absl::Status BindDistributed(const Binder& b, const Json* root, DistributedSection& d) {
  ASSIGN_OR_RETURN(const Json* s,
                   b.Mapping(Binder::Get(root, "distributed"), "distributed",
                             {"world_size", "rank", "master_addr", "master_port", "backend",
                              "timeout_s", "bucket_mb", "zero1", "grad_reduce_dtype",
                              "expert_parallel"}));
  RETURN_IF_ERROR(b.Int(s, "distributed", "world_size", d.world_size));
  RETURN_IF_ERROR(b.Int(s, "distributed", "rank", d.rank));
  RETURN_IF_ERROR(b.String(s, "distributed", "master_addr", d.master_addr));
  RETURN_IF_ERROR(b.Int(s, "distributed", "master_port", d.master_port));
  RETURN_IF_ERROR(b.String(s, "distributed", "backend", d.backend));
  RETURN_IF_ERROR(b.Double(s, "distributed", "timeout_s", d.timeout_s));
  RETURN_IF_ERROR(b.Double(s, "distributed", "bucket_mb", d.bucket_mb));
  RETURN_IF_ERROR(b.Bool(s, "distributed", "zero1", d.zero1));
  RETURN_IF_ERROR(b.String(s, "distributed", "grad_reduce_dtype", d.grad_reduce_dtype));
  return b.Int(s, "distributed", "expert_parallel", d.expert_parallel);
}

}  // namespace

absl::Status DistributedSection::Validate() const {
  RETURN_IF_ERROR(CheckAtLeast("world_size", world_size, 1));
  if (rank < 0 || rank >= world_size) {
    return Invalid(absl::StrCat("rank must be in [0, world_size) = [0, ", world_size, "), got ", rank));
  }
  if (master_addr.empty()) return Invalid("master_addr must not be empty");
  if (master_port < 1 || master_port > 65535) {
    return Invalid(absl::StrCat("master_port must be in [1, 65535], got ", master_port));
  }
  if (backend != "auto" && backend != "gloo" && backend != "nccl") {
    return Invalid(absl::StrCat("backend must be auto, gloo or nccl, got \"", backend, "\""));
  }
  RETURN_IF_ERROR(CheckPositive("timeout_s", timeout_s));
  RETURN_IF_ERROR(CheckPositive("bucket_mb", bucket_mb));
  if (grad_reduce_dtype != "float32" && grad_reduce_dtype != "bfloat16") {
    return Invalid(absl::StrCat("grad_reduce_dtype must be float32 or bfloat16, got \"",
                                grad_reduce_dtype, "\""));
  }
  RETURN_IF_ERROR(CheckAtLeast("expert_parallel", expert_parallel, 1));
  // WORLD_SIZE may still replace a world size of 1; the trainer checks the ranks started.
  if (world_size > 1 && world_size % expert_parallel != 0) {
    return Invalid(absl::StrCat("expert_parallel must divide world_size (", world_size, "), got ",
                                expert_parallel));
  }
  return absl::OkStatus();
}

absl::Status FleetSection::Validate() const {
  if (mode != "local" && mode != "spawn" && mode != "cluster") {
    return Invalid(absl::StrCat("mode must be local, spawn or cluster, got \"", mode, "\""));
  }
  if (std::string problem = HostPortProblem(coordinator_address, 0); !problem.empty()) {
    return Invalid(absl::StrCat("coordinator_address ", problem));
  }
  RETURN_IF_ERROR(CheckAtLeast("rollout_workers", rollout_workers, 1));
  RETURN_IF_ERROR(CheckAtLeast("min_workers", min_workers, 1));
  RETURN_IF_ERROR(CheckPositive("worker_wait_s", worker_wait_s));
  RETURN_IF_ERROR(CheckAtLeast("worker_capacity", worker_capacity, 1));
  RETURN_IF_ERROR(CheckAtLeast("max_group_attempts", max_group_attempts, 1));
  RETURN_IF_ERROR(CheckAtLeast("reward_worker_restarts", reward_worker_restarts, 0));
  RETURN_IF_ERROR(CheckDtype("weight_dtype", weight_dtype));
  if (spawn_reward_workers && mode != "spawn") {
    return Invalid(absl::StrCat("spawn_reward_workers needs mode spawn, got \"", mode, "\""));
  }
  if (weight_sync != "grpc" && weight_sync != "nccl") {
    return Invalid(absl::StrCat("weight_sync must be grpc or nccl, got \"", weight_sync, "\""));
  }
  if (mode == "spawn" && min_workers > rollout_workers) {
    return Invalid(absl::StrCat("min_workers must be <= rollout_workers (", rollout_workers,
                                ") in spawn mode, got ", min_workers));
  }
  return absl::OkStatus();
}

std::vector<std::string> BuiltinRewardKinds(const RewardSection& reward) {
  std::vector<std::string> kinds;
  for (const auto& [kind, weight] : reward.weights) kinds.push_back(kind);
  if (reward.weights.empty() && reward.servers.empty()) kinds.push_back(reward.kind);
  return kinds;
}

bool IsRewardKind(const std::string& kind) { return FindRewardKind(kind) != nullptr; }

Json RewardSection::OptionsFor(const std::string& kind) const {
  const auto it = options.find(kind);
  return it == options.end() ? Json() : it->second;
}

absl::Status RunSection::Validate() const {
  if (name.empty()) return Invalid("name must not be empty");
  if (output_dir.empty()) return Invalid("output_dir is required");
  RETURN_IF_ERROR(CheckAtLeast("steps", steps, 1));
  bool device_ok = device == "cpu" || device == "cuda";
  if (absl::StartsWith(device, "cuda:") && device.size() > 5) {
    device_ok = std::all_of(device.begin() + 5, device.end(),
                            [](char c) { return c >= '0' && c <= '9'; });
  }
  if (!device_ok) {
    return Invalid(absl::StrCat("device must be cpu, cuda or cuda:N, got \"", device, "\""));
  }
  RETURN_IF_ERROR(CheckDtype("dtype", dtype));
  RETURN_IF_ERROR(CheckAtLeast("eval_every", eval_every, 0));
  RETURN_IF_ERROR(CheckAtLeast("eval_samples", eval_samples, 0));
  return CheckAtLeast("eval_sampled", eval_sampled, 0);
}

absl::Status ModelSection::Validate() const {
  if (!path.empty() && !init_config.empty()) {
    return Invalid("path and init_config are both set; give one (a checkpoint directory, "
                   "or a config.json for a random model)");
  }
  if (path.empty() && init_config.empty()) {
    return Invalid("path is required unless init_config is given (a checkpoint directory, "
                   "or a config.json for a random model)");
  }
  return absl::OkStatus();
}

absl::Status DataSection::Validate() const {
  if (train.empty()) return Invalid("train is required");
  if (prompt_key.empty()) return Invalid("prompt_key must not be empty");
  return absl::OkStatus();
}

SamplingParams RolloutSection::ToSamplingParams() const {
  SamplingParams p;
  p.temperature = temperature;
  p.top_p = top_p;
  p.top_k = top_k;
  p.max_new_tokens = max_new_tokens;
  p.stop_token_ids = stop_token_ids;
  p.stop_strings = stop_strings;
  p.n = group_size;
  p.early_stop_window = early_stop_window;
  p.early_stop_prob = early_stop_prob;
  return p;
}

absl::Status RolloutSection::Validate() const {
  RETURN_IF_ERROR(CheckAtLeast("group_size", group_size, 2));
  RETURN_IF_ERROR(CheckAtLeast("prompts_per_step", prompts_per_step, 1));
  RETURN_IF_ERROR(CheckAtLeast("max_num_seqs", max_num_seqs, 1));
  RETURN_IF_ERROR(CheckAtLeast("max_staleness", max_staleness, 0));
  for (size_t i = 0; i < stop_token_ids.size(); ++i) {
    RETURN_IF_ERROR(CheckAtLeast(absl::StrCat("stop_token_ids[", i, "]"), stop_token_ids[i], 0));
  }
  // The sampling fields keep their names in SamplingParams, so its messages fit as is.
  return ToSamplingParams().Validate();
}

absl::Status RewardSection::Validate() const {
  const std::vector<std::string> kinds = RewardKindNames();
  if (!IsRewardKind(kind)) {
    return Invalid(absl::StrCat("kind must be one of ", absl::StrJoin(kinds, ", "), ", got \"",
                                kind, "\"", Suggest(kind, kinds, /*list_known=*/false)));
  }
  for (const auto& [name, value] : options) {
    if (!IsRewardKind(name)) {
      return Invalid(absl::StrCat("options.", name, " is not a known reward kind",
                                  Suggest(name, kinds)));
    }
    RETURN_IF_ERROR(ResolveRewardOptions(name, value, absl::StrCat("options.", name)).status());
  }
  for (const auto& [name, weight] : weights) {
    if (!IsRewardKind(name)) {
      return Invalid(absl::StrCat("weights.", name, " is not a known reward kind",
                                  Suggest(name, kinds)));
    }
    if (!std::isfinite(weight)) {
      return Invalid(absl::StrCat("weights.", name, " must be finite, got ", weight));
    }
  }
  for (const auto& [name, server] : servers) {
    if (std::string problem = HostPortProblem(server.address, 1); !problem.empty()) {
      return Invalid(absl::StrCat("servers.", name, ".address ", problem));
    }
    if (!std::isfinite(server.weight)) {
      return Invalid(absl::StrCat("servers.", name, ".weight must be finite, got ", server.weight));
    }
  }
  RETURN_IF_ERROR(CheckAtLeast("max_attempts", max_attempts, 1));
  if (max_request_mb < 1 || max_request_mb > kMaxRewardRequestMb) {
    return Invalid(absl::StrCat("max_request_mb must be in [1, ", kMaxRewardRequestMb,
                                "] (MiB of one Score request), got ", max_request_mb));
  }
  RETURN_IF_ERROR(CheckNonNegative("server_wait_s", server_wait_s));
  return CheckPositive("timeout_s", timeout_s);
}

absl::Status AlgorithmSection::Validate() const {
  if (loss.kl_coef != 0) {
    return Invalid(absl::StrCat(
        "kl_coef must be 0, got ", loss.kl_coef, ": a KL penalty needs a frozen reference "
        "policy, which lightrl run does not keep (MiniMax-M1's recipe uses none)"));
  }
  if (loss.truncated_is_cap < 0 && loss.truncated_is_cap != kTruncatedIsCapAuto) {
    return Invalid(absl::StrCat("truncated_is_cap must be -1 (auto), 0 (off) or > 0, got ",
                                loss.truncated_is_cap));
  }
  absl::Status s = loss.Validate();
  if (!s.ok()) {
    // PolicyLossOptions names its fields "policy_loss.x"; here they are this section's.
    std::string message(s.message());
    if (absl::StartsWith(message, "policy_loss.")) message.erase(0, 12);
    return absl::Status(s.code(), message);
  }
  RETURN_IF_ERROR(CheckAtLeast("max_refill_rounds", max_refill_rounds, 0));
  RETURN_IF_ERROR(CheckAtLeast("minibatches", minibatches, 1));
  return CheckAtLeast("overlong.soft_buffer", overlong_soft_buffer, 0);
}

namespace {

// A learning-rate schedule's fields, as optimizer and sft name them.
absl::Status CheckSchedule(const std::string& schedule, int64_t warmup_steps, double min_lr_ratio) {
  if (schedule != "constant" && schedule != "cosine" && schedule != "linear") {
    return Invalid(absl::StrCat("schedule must be constant, cosine or linear, got \"",
                                schedule, "\""));
  }
  RETURN_IF_ERROR(CheckAtLeast("warmup_steps", warmup_steps, 0));
  if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1)) {
    return Invalid(absl::StrCat("min_lr_ratio must be in [0, 1], got ", min_lr_ratio));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status OptimizerSection::Validate() const {
  RETURN_IF_ERROR(CheckPositive("lr", lr));
  for (size_t i = 0; i < 2; ++i) {
    if (!(betas[i] >= 0 && betas[i] < 1)) {
      return Invalid(absl::StrCat("betas[", i, "] must be in [0, 1), got ", betas[i]));
    }
  }
  RETURN_IF_ERROR(CheckPositive("eps", eps));
  RETURN_IF_ERROR(CheckNonNegative("weight_decay", weight_decay));
  RETURN_IF_ERROR(CheckNonNegative("grad_clip", grad_clip));
  RETURN_IF_ERROR(CheckSchedule(schedule, warmup_steps, min_lr_ratio));
  RETURN_IF_ERROR(CheckNonNegative("aux_loss_coef", aux_loss_coef));
  return CheckNonNegative("moe_capacity_factor", moe_capacity_factor);
}

absl::Status SftSection::Validate() const {
  RETURN_IF_ERROR(CheckAtLeast("steps", steps, 0));
  RETURN_IF_ERROR(CheckAtLeast("batch_size", batch_size, 1));
  RETURN_IF_ERROR(CheckPositive("lr", lr));
  RETURN_IF_ERROR(CheckSchedule(schedule, warmup_steps, min_lr_ratio));
  return absl::OkStatus();
}

absl::Status CheckpointSection::Validate() const {
  RETURN_IF_ERROR(CheckAtLeast("every", every, 0));
  RETURN_IF_ERROR(CheckAtLeast("keep", keep, 1));
  return CheckDtype("dtype", dtype);
}

absl::Status RunConfig::Validate() const {
  RETURN_IF_ERROR(Prefixed("run.", run.Validate()));
  RETURN_IF_ERROR(Prefixed("model.", model.Validate()));
  RETURN_IF_ERROR(Prefixed("data.", data.Validate()));
  RETURN_IF_ERROR(Prefixed("rollout.", rollout.Validate()));
  RETURN_IF_ERROR(Prefixed("reward.", reward.Validate()));
  RETURN_IF_ERROR(Prefixed("algorithm.", algorithm.Validate()));
  RETURN_IF_ERROR(Prefixed("optimizer.", optimizer.Validate()));
  RETURN_IF_ERROR(Prefixed("sft.", sft.Validate()));
  RETURN_IF_ERROR(Prefixed("checkpoint.", checkpoint.Validate()));
  RETURN_IF_ERROR(Prefixed("fleet.", fleet.Validate()));
  RETURN_IF_ERROR(Prefixed("distributed.", distributed.Validate()));
  if (run.eval_every > 0 && data.eval.empty()) {
    return Invalid(absl::StrCat("run.eval_every is ", run.eval_every,
                                " but data.eval is not set"));
  }
  if (sft.steps > 0 && data.answer_key.empty()) {
    return Invalid(absl::StrCat("sft.steps is ", sft.steps,
                                " but data.answer_key is empty (SFT trains on the answers)"));
  }
  if (algorithm.overlong_soft_buffer > rollout.max_new_tokens) {
    return Invalid(absl::StrCat("algorithm.overlong.soft_buffer must be <= "
                                "rollout.max_new_tokens (", rollout.max_new_tokens, "), got ",
                                algorithm.overlong_soft_buffer));
  }
  if (algorithm.minibatches > rollout.prompts_per_step) {
    return Invalid(absl::StrCat("algorithm.minibatches must be <= rollout.prompts_per_step (",
                                rollout.prompts_per_step, "): each minibatch needs a "
                                "prompt group, got ", algorithm.minibatches));
  }
  if (run.steps > 0 && !(rollout.temperature > 0)) {
    return Invalid(absl::StrCat(
        "rollout.temperature must be > 0 for RL steps, got ", rollout.temperature,
        ": greedy decoding gives every sample of a group the same response, so no group "
        "carries a learning signal (evaluation is always greedy)"));
  }
  if (rollout.async && rollout.max_staleness < algorithm.minibatches) {
    return Invalid(absl::StrCat(
        "rollout.max_staleness must be >= algorithm.minibatches (", algorithm.minibatches,
        ") when rollout.async is on: a step adds that many versions, so groups generated "
        "during it are that old when trained, got ", rollout.max_staleness));
  }
  return Prefixed("algorithm.", ToOverlongOptions().Validate());
}

PolicyLossOptions DefaultRunLossOptions() {
  PolicyLossOptions loss;
  loss.truncated_is_cap = kTruncatedIsCapAuto;
  return loss;
}

PolicyLossOptions RunConfig::ToLossOptions() const {
  PolicyLossOptions loss = algorithm.loss;
  if (loss.truncated_is_cap == kTruncatedIsCapAuto) {
    loss.truncated_is_cap = rollout.max_staleness > 0 ? kStaleTruncatedIsCap : 0.0;
  }
  return loss;
}

OverlongOptions RunConfig::ToOverlongOptions() const {
  OverlongOptions o;
  o.max_response_length = rollout.max_new_tokens;
  o.buffer = algorithm.overlong_soft_buffer;
  return o;
}

absl::StatusOr<RunConfig> LoadRunConfig(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat(path, ": cannot read the run config: ",
                                     text.status().message()));
  }
  ASSIGN_OR_RETURN(YamlDocument doc, ParseYaml(*text, path));
  const std::string dir = std::filesystem::path(Absolute(path)).parent_path().string();
  Binder b(doc, dir);
  ASSIGN_OR_RETURN(const Json* root,
                   b.Mapping(&doc.root, "",
                             {"run", "model", "data", "rollout", "reward", "algorithm",
                              "optimizer", "sft", "checkpoint", "logging", "fleet",
                              // Read by `lightrl plan` (rl/plan.h), which checks it.
                              "plan", "distributed"}));
  RunConfig config;
  config.source = path;
  RETURN_IF_ERROR(BindRun(b, root, config.run));
  RETURN_IF_ERROR(BindModel(b, root, config.model));
  RETURN_IF_ERROR(BindData(b, root, config.data));
  RETURN_IF_ERROR(BindRollout(b, root, config.rollout));
  RETURN_IF_ERROR(BindReward(b, root, config.reward));
  RETURN_IF_ERROR(BindAlgorithm(b, root, config.algorithm));
  RETURN_IF_ERROR(BindOptimizer(b, root, config.optimizer));
  RETURN_IF_ERROR(BindSft(b, root, config.sft));
  RETURN_IF_ERROR(BindCheckpoint(b, root, config.checkpoint));
  RETURN_IF_ERROR(BindLogging(b, root, config.logging));
  RETURN_IF_ERROR(BindFleet(b, root, config.fleet));
  RETURN_IF_ERROR(BindDistributed(b, root, config.distributed));
  if (config.sft.data.empty()) config.sft.data = config.data.train;

  absl::Status valid = config.Validate();
  if (!valid.ok()) {
    // Messages start with the field's path ("rollout.group_size must ..."); point at its
    // line, or its section's when the key was left at its default.
    const std::string message(valid.message());
    const std::string field = message.substr(0, message.find_first_of(" :"));
    return absl::Status(valid.code(), absl::StrCat(doc.Where(field), ": ", message));
  }
  return config;
}

std::string DescribeRunConfig(const RunConfig& c) {
  auto optional = [](const std::string& s) { return s.empty() ? Json() : Json(s); };
  auto section = [](std::initializer_list<std::pair<const char*, Json>> fields) {
    Json o = Json::MakeObject();
    for (const auto& [key, value] : fields) o.set(key, value);
    return o;
  };
  Json stop_strings = Json::MakeArray();
  for (const auto& s : c.rollout.stop_strings) stop_strings.push_back(Json(s));
  Json stop_token_ids = Json::MakeArray();
  for (int64_t id : c.rollout.stop_token_ids) stop_token_ids.push_back(Json(id));
  Json weights = Json::MakeObject();
  for (const auto& [kind, w] : c.reward.weights) weights.set(kind, Json(w));
  // Every option of the kinds in use or given, defaults included.
  Json reward_options = Json::MakeObject();
  std::vector<std::string> option_kinds = BuiltinRewardKinds(c.reward);
  for (const auto& [kind, unused] : c.reward.options) option_kinds.push_back(kind);
  for (const std::string& kind : option_kinds) {
    const RewardKind* found = FindRewardKind(kind);
    if (found == nullptr || found->options.empty()) continue;
    absl::StatusOr<Json> resolved = found->resolve(c.reward.OptionsFor(kind), "");
    reward_options.set(kind, resolved.ok() ? *resolved : c.reward.OptionsFor(kind));
  }
  Json servers = Json::MakeObject();
  for (const auto& [name, server] : c.reward.servers) {
    servers.set(name, section({{"address", Json(server.address)},
                               {"weight", Json(server.weight)},
                               {"reward_kind", Json(server.reward_kind)},
                               {"auth_token_file", optional(server.auth_token_file)}}));
  }
  Json betas = Json::MakeArray();
  for (double beta : c.optimizer.betas) betas.push_back(Json(beta));
  const PolicyLossOptions& loss = c.algorithm.loss;

  Json root = Json::MakeObject();
  root.set("run", section({{"name", Json(c.run.name)},
                           {"output_dir", Json(c.run.output_dir)},
                           {"seed", Json(c.run.seed)},
                           {"steps", Json(c.run.steps)},
                           {"device", Json(c.run.device)},
                           {"dtype", Json(c.run.dtype)},
                           {"eval_every", Json(c.run.eval_every)},
                           {"eval_sampled", Json(c.run.eval_sampled)},
                           {"eval_samples", Json(c.run.eval_samples)}}));
  root.set("model", section({{"path", optional(c.model.path)},
                             {"init_config", optional(c.model.init_config)},
                             {"init_seed", Json(c.model.init_seed)},
                             {"tokenizer", optional(c.model.tokenizer)}}));
  root.set("data", section({{"train", Json(c.data.train)},
                            {"eval", optional(c.data.eval)},
                            {"prompt_key", Json(c.data.prompt_key)},
                            {"answer_key", Json(c.data.answer_key)},
                            {"shuffle", Json(c.data.shuffle)}}));
  root.set("rollout", section({{"group_size", Json(c.rollout.group_size)},
                               {"prompts_per_step", Json(c.rollout.prompts_per_step)},
                               {"max_new_tokens", Json(c.rollout.max_new_tokens)},
                               {"temperature", Json(c.rollout.temperature)},
                               {"top_p", Json(c.rollout.top_p)},
                               {"top_k", Json(c.rollout.top_k)},
                               {"stop_strings", stop_strings},
                               {"stop_token_ids", stop_token_ids},
                               {"early_stop_window", Json(c.rollout.early_stop_window)},
                               {"early_stop_prob", Json(c.rollout.early_stop_prob)},
                               {"max_num_seqs", Json(c.rollout.max_num_seqs)},
                               {"max_staleness", Json(c.rollout.max_staleness)},
                               {"async", Json(c.rollout.async)}}));
  root.set("reward", section({{"kind", Json(c.reward.kind)},
                              {"weights", weights},
                              {"options", reward_options},
                              {"timeout_s", Json(c.reward.timeout_s)},
                              {"max_attempts", Json(c.reward.max_attempts)},
                              {"max_request_mb", Json(c.reward.max_request_mb)},
                              {"server_wait_s", Json(c.reward.server_wait_s)},
                              {"servers", servers}}));
  root.set("algorithm",
           section({{"loss", Json(PolicyLossKindName(loss.kind))},
                    {"eps_low", Json(loss.eps_low)},
                    {"eps_high", Json(loss.eps_high)},
                    {"ppo_eps", Json(loss.ppo_eps)},
                    {"dapo_eps_low", Json(loss.dapo_eps_low)},
                    {"dapo_eps_high", Json(loss.dapo_eps_high)},
                    {"unified_mask", Json(loss.unified_mask)},
                    {"truncated_is_cap", Json(loss.truncated_is_cap)},
                    {"kl_coef", Json(loss.kl_coef)},
                    {"dual_clip", Json(loss.dual_clip)},
                    {"dynamic_sampling", Json(c.algorithm.dynamic_sampling)},
                    {"max_refill_rounds", Json(c.algorithm.max_refill_rounds)},
                    {"minibatches", Json(c.algorithm.minibatches)},
                    {"overlong", section({{"filter", Json(c.algorithm.overlong_filter)},
                                          {"soft_buffer",
                                           Json(c.algorithm.overlong_soft_buffer)}})}}));
  root.set("optimizer", section({{"lr", Json(c.optimizer.lr)},
                                 {"betas", betas},
                                 {"eps", Json(c.optimizer.eps)},
                                 {"weight_decay", Json(c.optimizer.weight_decay)},
                                 {"grad_clip", Json(c.optimizer.grad_clip)},
                                 {"schedule", Json(c.optimizer.schedule)},
                                 {"warmup_steps", Json(c.optimizer.warmup_steps)},
                                 {"min_lr_ratio", Json(c.optimizer.min_lr_ratio)},
                                 {"aux_loss_coef", Json(c.optimizer.aux_loss_coef)},
                                 {"moe_capacity_factor",
                                  Json(c.optimizer.moe_capacity_factor)}}));
  root.set("sft", section({{"steps", Json(c.sft.steps)},
                           {"batch_size", Json(c.sft.batch_size)},
                           {"lr", Json(c.sft.lr)},
                           {"schedule", Json(c.sft.schedule)},
                           {"warmup_steps", Json(c.sft.warmup_steps)},
                           {"min_lr_ratio", Json(c.sft.min_lr_ratio)},
                           {"data", optional(c.sft.data)}}));
  root.set("checkpoint", section({{"every", Json(c.checkpoint.every)},
                                  {"keep", Json(c.checkpoint.keep)},
                                  {"dtype", Json(c.checkpoint.dtype)}}));
  root.set("logging", section({{"jsonl", Json(c.logging.jsonl)},
                               {"tensorboard", Json(c.logging.tensorboard)},
                               {"progress", Json(c.logging.progress)}}));
  root.set("fleet", section({{"mode", Json(c.fleet.mode)},
                             {"rollout_workers", Json(c.fleet.rollout_workers)},
                             {"coordinator_address", Json(c.fleet.coordinator_address)},
                             {"auth_token_file", optional(c.fleet.auth_token_file)},
                             {"min_workers", Json(c.fleet.min_workers)},
                             {"worker_wait_s", Json(c.fleet.worker_wait_s)},
                             {"worker_capacity", Json(c.fleet.worker_capacity)},
                             {"max_group_attempts", Json(c.fleet.max_group_attempts)},
                             {"weight_dtype", Json(c.fleet.weight_dtype)},
                             {"weight_sync", Json(c.fleet.weight_sync)},
                             {"spawn_reward_workers", Json(c.fleet.spawn_reward_workers)},
                             {"reward_worker_restarts", Json(c.fleet.reward_worker_restarts)},
                             {"worker_device", Json(c.fleet.worker_device)}}));
  root.set("distributed", section({{"world_size", Json(c.distributed.world_size)},
                                   {"rank", Json(c.distributed.rank)},
                                   {"master_addr", Json(c.distributed.master_addr)},
                                   {"master_port", Json(c.distributed.master_port)},
                                   {"backend", Json(c.distributed.backend)},
                                   {"timeout_s", Json(c.distributed.timeout_s)},
                                   {"bucket_mb", Json(c.distributed.bucket_mb)},
                                   {"zero1", Json(c.distributed.zero1)},
                                   {"grad_reduce_dtype", Json(c.distributed.grad_reduce_dtype)},
                                   {"expert_parallel", Json(c.distributed.expert_parallel)}}));
  return DumpYaml(root);
}

}  // namespace lightrl
