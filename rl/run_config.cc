#include "rl/run_config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cmath>
#include <filesystem>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/did_you_mean.h"
#include "common/file_util.h"
#include "common/config_table.h"
#include "common/json.h"
#include "common/log.h"
#include "common/status.h"
#include "common/yaml.h"
#include "common/host_port.h"
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

using config_table_internal::Describe;
using config_table_internal::Prefixed;

ValueCheck<std::string> HostPort(int min_port) {
  return [min_port](const std::string& address) { return HostPortProblem(address, min_port); };
}

ValueCheck<double> Finite() {
  return [](const double& v) {
    return std::isfinite(v) ? std::string() : absl::StrCat("must be finite, got ", v);
  };
}

// run.output_dir: an output, so absolute against the working directory (not the YAML's
// directory), and creatable.
ConfigField<RunSection> OutputDirField() {
  ConfigField<RunSection> f = Field<RunSection>(
      "output_dir", &RunSection::output_dir,
      "where checkpoints, metrics and the rollout log go; relative to the working directory");
  f.bind = [](const Json* v, const std::string& path, const ConfigSource& s, RunSection& run) {
    if (v == nullptr) return absl::OkStatus();
    RETURN_IF_ERROR(config_table_internal::Read(*v, path, s, &run.output_dir));
    if (run.output_dir.empty()) return absl::OkStatus();
    run.output_dir = Absolute(run.output_dir);
    if (!s.strict) return absl::OkStatus();
    if (std::string problem = OutputDirProblem(run.output_dir); !problem.empty()) {
      return s.ErrorAt(path, absl::StrCat(path, ": ", problem));
    }
    return absl::OkStatus();
  };
  f.check = [](const RunSection& run, const std::string& key) {
    return run.output_dir.empty() ? Invalid(absl::StrCat(key, " is required"))
                                  : absl::OkStatus();
  };
  return f;
}

ValueCheck<std::string> Device() {
  return [](const std::string& device) {
    bool ok = device == "cpu" || device == "cuda";
    if (absl::StartsWith(device, "cuda:") && device.size() > 5) {
      ok = std::all_of(device.begin() + 5, device.end(),
                       [](char c) { return c >= '0' && c <= '9'; });
    }
    return ok ? std::string()
              : absl::StrCat("must be cpu, cuda or cuda:N, got \"", device, "\"");
  };
}

// reward.weights: kind -> weight.
ConfigField<RewardSection> RewardWeightsField() {
  ConfigField<RewardSection> f;
  f.key = "weights";
  f.doc = "built-in kind -> weight; the reward is the weighted sum";
  f.bind = [](const Json* w, const std::string& path, const ConfigSource& s, RewardSection& r) {
    if (w == nullptr) return absl::OkStatus();
    if (!w->is_object()) {
      return s.ErrorAt(path, absl::StrCat(path, " must be a mapping of reward kind to weight, got ",
                                          Describe(*w)));
    }
    r.weights.clear();
    for (const auto& [kind, weight] : w->as_object()) {
      const std::string at = absl::StrCat(path, ".", kind);
      RETURN_IF_ERROR(config_table_internal::Read(weight, at, s, &r.weights[kind]));
    }
    return absl::OkStatus();
  };
  f.dump = [](const RewardSection& r) {
    Json weights = Json::MakeObject();
    for (const auto& [kind, w] : r.weights) weights.set(kind, Json(w));
    return weights;
  };
  f.check = [](const RewardSection& r, const std::string& key) {
    const std::vector<std::string> kinds = RewardKindNames();
    for (const auto& [name, weight] : r.weights) {
      if (!IsRewardKind(name)) {
        return Invalid(absl::StrCat(key, ".", name, " is not a known reward kind",
                                    Suggest(name, kinds)));
      }
      if (!std::isfinite(weight)) {
        return Invalid(absl::StrCat(key, ".", name, " must be finite, got ", weight));
      }
    }
    return absl::OkStatus();
  };
  return f;
}

// reward.options: kind -> that kind's options object, checked against its table in the
// reward registry (reward/reward_options.h).
ConfigField<RewardSection> RewardOptionsField() {
  ConfigField<RewardSection> f;
  f.key = "options";
  f.doc = "built-in kind -> its options (the kind's own table in the reward registry)";
  // Every kind's option rows, for the key lists that docs/config.md is checked against.
  for (const RewardKind& kind : RewardKinds()) {
    for (const RewardOptionInfo& option : kind.options) {
      f.subkeys.push_back(absl::StrCat(kind.name, ".", option.key));
    }
  }
  f.bind = [](const Json* options, const std::string& path, const ConfigSource& s,
              RewardSection& r) {
    if (options == nullptr) return absl::OkStatus();
    if (!options->is_object()) {
      return s.ErrorAt(path, absl::StrCat(path, " must be a mapping of reward kind to its "
                                                "options, got ", Describe(*options)));
    }
    r.options.clear();
    for (const auto& [kind, value] : options->as_object()) {
      r.options[kind] = value.is_null() ? Json::MakeObject() : value;
    }
    return absl::OkStatus();
  };
  // Every option of the kinds in use or given, defaults included.
  f.dump = [](const RewardSection& r) {
    Json all = Json::MakeObject();
    std::vector<std::string> kinds = BuiltinRewardKinds(r);
    for (const auto& [kind, unused] : r.options) kinds.push_back(kind);
    for (const std::string& kind : kinds) {
      const RewardKind* found = FindRewardKind(kind);
      if (found == nullptr || found->options.empty()) continue;
      absl::StatusOr<Json> resolved = found->resolve(r.OptionsFor(kind), "");
      all.set(kind, resolved.ok() ? *resolved : r.OptionsFor(kind));
    }
    return all;
  };
  f.check = [](const RewardSection& r, const std::string& key) {
    for (const auto& [name, value] : r.options) {
      const std::string at = absl::StrCat(key, ".", name);
      if (!IsRewardKind(name)) {
        return Invalid(absl::StrCat(at, " is not a known reward kind",
                                    Suggest(name, RewardKindNames())));
      }
      RETURN_IF_ERROR(ResolveRewardOptions(name, value, at).status());
    }
    return absl::OkStatus();
  };
  return f;
}

// reward.format_pattern: the older spelling of options.format.pattern; not written back.
ConfigField<RewardSection> FormatPatternField() {
  ConfigField<RewardSection> f;
  f.key = "format_pattern";
  f.doc = "older spelling of reward.options.format.pattern";
  f.bind = [](const Json* v, const std::string& path, const ConfigSource& s, RewardSection& r) {
    if (v == nullptr) return absl::OkStatus();
    std::string pattern;
    RETURN_IF_ERROR(config_table_internal::Read(*v, path, s, &pattern));
    Json& format = r.options["format"];
    if (format.is_null()) format = Json::MakeObject();
    if (format.is_object() && format.contains("pattern")) {
      return s.ErrorAt(path, absl::StrCat(path, " and reward.options.format.pattern are both "
                                                "set; keep the latter"));
    }
    if (format.is_object()) format.set("pattern", Json(pattern));
    return absl::OkStatus();
  };
  return f;
}

// algorithm.loss: the loss kind by name.
ConfigField<AlgorithmSection> LossKindField() {
  ConfigField<AlgorithmSection> f;
  f.key = "loss";
  f.doc = "cispo, grpo, ppo_clip or dapo";
  f.bind = [](const Json* v, const std::string& path, const ConfigSource& s,
              AlgorithmSection& a) {
    if (v == nullptr) return absl::OkStatus();
    std::string name;
    RETURN_IF_ERROR(config_table_internal::Read(*v, path, s, &name));
    absl::StatusOr<PolicyLossKind> kind = ParsePolicyLossKind(name);
    if (!kind.ok()) {
      return s.ErrorAt(path, absl::StrCat(path, " must be one of cispo, grpo, ppo_clip, dapo, "
                                                "got \"", name, "\""));
    }
    a.loss.kind = *kind;
    return absl::OkStatus();
  };
  f.dump = [](const AlgorithmSection& a) { return Json(PolicyLossKindName(a.loss.kind)); };
  return f;
}

}  // namespace

// --- the tables: one row per key ---

const ConfigTable<RunSection>& RunSection::Table() {
  using S = RunSection;
  static const ConfigTable<S>* table = new ConfigTable<S>{
      Field<S>("name", &S::name, "shown in logs and metrics", NotEmpty()),
      Required(OutputDirField()),
      Field<S>("seed", &S::seed, "seeds prompt order, sampling and initialisation"),
      Required(Field<S>("steps", &S::steps, "RL optimizer steps", AtLeast(1))),
      Field<S>("device", &S::device, "cpu, cuda or cuda:N", Device()),
      Field<S>("dtype", &S::dtype, "policy parameter dtype: float32 or bfloat16", Dtype()),
      Field<S>("eval_every", &S::eval_every, "evaluate every this many steps; 0 = never",
               AtLeast(0)),
      Field<S>("eval_samples", &S::eval_samples, "prompts per evaluation; 0 = all",
               AtLeast(0)),
      Field<S>("eval_sampled", &S::eval_sampled,
               "sampled responses per eval prompt besides greedy; 0 = greedy only", AtLeast(0)),
  };
  return *table;
}

const ConfigTable<ModelSection>& ModelSection::Table() {
  using S = ModelSection;
  static const ConfigTable<S>* table = new ConfigTable<S>{
      InputPathField<S>("path", &S::path, "HuggingFace-format checkpoint directory",
                        /*directory=*/true),
      InputPathField<S>("init_config", &S::init_config,
                        "config.json of a randomly initialised model"),
      Field<S>("init_seed", &S::init_seed, "seed of that random initialisation"),
      InputPathField<S>("tokenizer", &S::tokenizer,
                        "tokenizer.json; default path/tokenizer.json when it exists"),
  };
  return *table;
}

const ConfigTable<DataSection>& DataSection::Table() {
  using S = DataSection;
  static const ConfigTable<S>* table = new ConfigTable<S>{
      Required(InputPathField<S>("train", &S::train, "training prompts, JSONL")),
      InputPathField<S>("eval", &S::eval, "evaluation prompts, JSONL"),
      Field<S>("prompt_key", &S::prompt_key, "JSON field holding the prompt", NotEmpty()),
      Field<S>("answer_key", &S::answer_key, "JSON field holding the reference answer"),
      Field<S>("shuffle", &S::shuffle, "reshuffle prompts each epoch"),
  };
  return *table;
}

const ConfigTable<RolloutSection>& RolloutSection::Table() {
  using S = RolloutSection;
  static const ConfigTable<S>* table = new ConfigTable<S>{
      Field<S>("group_size", &S::group_size, "responses per prompt (G)", AtLeast(2)),
      Field<S>("prompts_per_step", &S::prompts_per_step, "prompt groups per step", AtLeast(1)),
      Field<S>("max_new_tokens", &S::max_new_tokens,
               "generation budget per response; DAPO's L_max"),
      Field<S>("temperature", &S::temperature, "sampling temperature; > 0 for RL steps"),
      Field<S>("top_p", &S::top_p, "nucleus mass in (0, 1]"),
      Field<S>("top_k", &S::top_k, "0 = no top-k filter"),
      Field<S>("stop_strings", &S::stop_strings, "generation stops once the text contains one"),
      Field<S>("stop_token_ids", &S::stop_token_ids, "generation stops on these tokens",
               EachAtLeast(0)),
      Field<S>("early_stop_window", &S::early_stop_window, "M1's early stop window; 0 = off"),
      Field<S>("early_stop_prob", &S::early_stop_prob, "M1's early stop probability"),
      Field<S>("max_num_seqs", &S::max_num_seqs, "sequences the engine decodes at once",
               AtLeast(1)),
      Field<S>("max_staleness", &S::max_staleness,
               "policy versions a sample may lag when trained on", AtLeast(0)),
      Field<S>("async", &S::async, "generate ahead while the learner trains"),
      Field<S>("sharded_engine", &S::sharded_engine,
               "generate on the learner ranks' shards (an instance per TP / EP group)"),
  };
  return *table;
}

const ConfigTable<RewardServerSection>& RewardServerSection::Table() {
  using S = RewardServerSection;
  static const ConfigTable<S>* table = new ConfigTable<S>{
      [] {
        ConfigField<S> address =
            Field<S>("address", &S::address, "host:port of a RewardService server");
        address.check = [](const S& server, const std::string& key) {
          if (server.address.empty() == server.python.empty()) {
            return Invalid(absl::StrCat(key.substr(0, key.rfind('.')),
                                        ": give exactly one of address and python (",
                                        server.address.empty() ? "neither" : "both", " given)"));
          }
          if (server.address.empty()) return absl::OkStatus();
          return config_table_internal::Problem(key, HostPortProblem(server.address, 1));
        };
        return address;
      }(),
      Field<S>("weight", &S::weight, "its score's weight in the sum", Finite()),
      Field<S>("reward_kind", &S::reward_kind, "sent as the request's reward_kind hint"),
      InputPathField<S>("auth_token_file", &S::auth_token_file,
                        "file holding the server's shared token"),
      InputPathField<S>("python", &S::python, "a Python file with the reward function"),
      Field<S>("function", &S::function, "the reward function's name in `python`", NotEmpty()),
      Field<S>("interpreter", &S::interpreter, "the Python that runs `python`"),
      Field<S>("restarts", &S::restarts, "restarts of the managed server", AtLeast(0)),
  };
  return *table;
}

const ConfigTable<RewardSection>& RewardSection::Table() {
  using S = RewardSection;
  static const ConfigTable<S>* table = new ConfigTable<S>{
      [] {
        ConfigField<S> kind = Field<S>("kind", &S::kind, "the built-in reward kind");
        kind.check = [](const S& r, const std::string& key) {
          if (IsRewardKind(r.kind)) return absl::OkStatus();
          const std::vector<std::string> kinds = RewardKindNames();
          return Invalid(absl::StrCat(key, " must be one of ", absl::StrJoin(kinds, ", "),
                                      ", got \"", r.kind, "\"",
                                      Suggest(r.kind, kinds, /*list_known=*/false)));
        };
        return kind;
      }(),
      RewardWeightsField(),
      RewardOptionsField(),
      FormatPatternField(),
      Field<S>("timeout_s", &S::timeout_s, "seconds per reward server attempt", Positive()),
      Field<S>("max_attempts", &S::max_attempts, "attempts per reward server call",
               AtLeast(1)),
      Field<S>("max_concurrent_groups", &S::max_concurrent_groups,
               "async mode: groups scored at once beside the trainer; 0 = on its thread",
               IntInRange(0, 1024, "(groups scored at once)")),
      Field<S>("max_request_mb", &S::max_request_mb, "MiB of one Score request at most",
               IntInRange(1, kMaxRewardRequestMb, "(MiB of one Score request)")),
      Field<S>("server_wait_s", &S::server_wait_s,
               "seconds a reward server may stay unavailable", NonNegative()),
      MapOf<S>("servers", &S::servers, "name -> reward server", "server"),
      Field<S>("metadata_fields", &S::metadata_fields,
               "dataset fields sent as metadata; \"*\" = all extra fields"),
      Field<S>("metadata_max_kb", &S::metadata_max_kb, "KiB of one row's metadata at most",
               IntInRange(0, 16384, "(KiB of one row's metadata)")),
  };
  return *table;
}

const ConfigTable<AlgorithmSection>& AlgorithmSection::Table() {
  using S = AlgorithmSection;
  using L = PolicyLossOptions;
  static const ConfigTable<S>* table = new ConfigTable<S>{
      LossKindField(),
      Field<S>("eps_low", &S::loss, &L::eps_low, "CISPO lower clip of the IS weight"),
      Field<S>("eps_high", &S::loss, &L::eps_high, "CISPO upper clip of the IS weight"),
      Field<S>("ppo_eps", &S::loss, &L::ppo_eps, "PPO-clip / GRPO clip range"),
      Field<S>("dapo_eps_low", &S::loss, &L::dapo_eps_low, "DAPO lower clip"),
      Field<S>("dapo_eps_high", &S::loss, &L::dapo_eps_high, "DAPO upper clip (clip-higher)"),
      Field<S>("unified_mask", &S::loss, &L::unified_mask, "CISPO only: Eq. 7 token mask"),
      [] {
        ConfigField<S> cap = Field<S>("truncated_is_cap", &S::loss, &L::truncated_is_cap,
                                      "truncated IS cap; -1 auto, 0 off");
        cap.check = [](const S& a, const std::string& key) {
          const double v = a.loss.truncated_is_cap;
          if (v >= 0 || v == kTruncatedIsCapAuto) return absl::OkStatus();
          return Invalid(absl::StrCat(key, " must be -1 (auto), 0 (off) or > 0, got ", v));
        };
        return cap;
      }(),
      [] {
        ConfigField<S> kl = Field<S>("kl_coef", &S::loss, &L::kl_coef, "must be 0");
        kl.check = [](const S& a, const std::string& key) {
          if (a.loss.kl_coef == 0) return absl::OkStatus();
          return Invalid(absl::StrCat(
              key, " must be 0, got ", a.loss.kl_coef, ": a KL penalty needs a frozen "
              "reference policy, which lightrl run does not keep (MiniMax-M1's recipe uses "
              "none)"));
        };
        return kl;
      }(),
      Field<S>("dual_clip", &S::loss, &L::dual_clip, "PPO dual-clip constant; 0 = off"),
      Field<S>("dynamic_sampling", &S::dynamic_sampling, "drop groups with equal rewards"),
      Field<S>("max_refill_rounds", &S::max_refill_rounds, "refill rounds per step",
               AtLeast(0)),
      Field<S>("minibatches", &S::minibatches, "optimizer updates per generation batch",
               AtLeast(1)),
      Group<S>("overlong", "DAPO's overlong handling",
               {Field<S>("filter", &S::overlong_filter, "mask out truncated responses"),
                Field<S>("soft_buffer", &S::overlong_soft_buffer,
                         "soft penalty ramp before max_new_tokens; 0 = off", AtLeast(0))}),
  };
  return *table;
}

const ConfigTable<SftSection>& SftSection::Table() {
  using S = SftSection;
  static const ConfigTable<S>* table = new ConfigTable<S>{
      Field<S>("steps", &S::steps, "supervised warm-up steps before RL", AtLeast(0)),
      Field<S>("batch_size", &S::batch_size, "examples per SFT step", AtLeast(1)),
      Field<S>("lr", &S::lr, "peak SFT learning rate", Positive()),
      Field<S>("schedule", &S::schedule, "constant, cosine or linear",
               OneOf({"constant", "cosine", "linear"})),
      Field<S>("warmup_steps", &S::warmup_steps, "linear warmup steps", AtLeast(0)),
      Field<S>("min_lr_ratio", &S::min_lr_ratio, "end of the decay, as a fraction of lr",
               InClosedRange(0, 1)),
      InputPathField<S>("data", &S::data, "JSONL of prompt/answer pairs; default data.train"),
  };
  return *table;
}

const ConfigTable<NumericsSection>& NumericsSection::Table() {
  using S = NumericsSection;
  static const ConfigTable<S>* table = new ConfigTable<S>{
      Field<S>("batch_invariant", &S::batch_invariant,
               "engine and learner logprobs equal bit for bit (CPU; slower)"),
  };
  return *table;
}

const ConfigTable<CheckpointSection>& CheckpointSection::Table() {
  using S = CheckpointSection;
  static const ConfigTable<S>* table = new ConfigTable<S>{
      Field<S>("every", &S::every, "save every this many steps; 0 = at the end", AtLeast(0)),
      Field<S>("keep", &S::keep, "newest checkpoints kept", AtLeast(1)),
      Field<S>("dtype", &S::dtype, "saved weight dtype", Dtype()),
  };
  return *table;
}

const ConfigTable<LoggingSection>& LoggingSection::Table() {
  using S = LoggingSection;
  static const ConfigTable<S>* table = new ConfigTable<S>{
      Field<S>("jsonl", &S::jsonl, "metrics.jsonl in the run directory"),
      Field<S>("tensorboard", &S::tensorboard, "TensorBoard event files"),
      Field<S>("progress", &S::progress, "a progress line on the terminal"),
  };
  return *table;
}

const ConfigTable<FleetSection>& FleetSection::Table() {
  using S = FleetSection;
  static const ConfigTable<S>* table = new ConfigTable<S>{
      Field<S>("mode", &S::mode, "local, spawn or cluster", OneOf({"local", "spawn", "cluster"})),
      Field<S>("rollout_workers", &S::rollout_workers, "worker processes in spawn mode",
               AtLeast(1)),
      Field<S>("coordinator_address", &S::coordinator_address,
               "where the coordinator listens; port 0 picks one", HostPort(0)),
      InputPathField<S>("auth_token_file", &S::auth_token_file,
                        "shared token of the coordinator and the workers"),
      Field<S>("min_workers", &S::min_workers, "workers registered before the first step",
               AtLeast(1)),
      Field<S>("worker_wait_s", &S::worker_wait_s, "how long to wait for them", Positive()),
      Field<S>("worker_capacity", &S::worker_capacity, "prompt groups in flight per worker",
               AtLeast(1)),
      Field<S>("max_group_attempts", &S::max_group_attempts,
               "workers a group may be tried on", AtLeast(1)),
      Field<S>("weight_dtype", &S::weight_dtype, "weights pushed to the workers", Dtype()),
      Field<S>("worker_device", &S::worker_device, "device of spawned workers"),
      Field<S>("rollout_tp", &S::rollout_tp,
               "spawn mode: processes of each tensor-parallel rollout instance", AtLeast(1)),
      Field<S>("rollout_ep", &S::rollout_ep,
               "spawn mode: processes of each expert-parallel rollout instance", AtLeast(1)),
      Field<S>("weight_sync", &S::weight_sync, "grpc or nccl", OneOf({"grpc", "nccl"})),
      Field<S>("spawn_reward_workers", &S::spawn_reward_workers,
               "spawn mode: one reward worker process per built-in kind"),
      Field<S>("reward_worker_restarts", &S::reward_worker_restarts,
               "restarts of each spawned reward worker", AtLeast(0)),
  };
  return *table;
}

const ConfigTable<DistributedSection>& DistributedSection::Table() {
  using S = DistributedSection;
  static const ConfigTable<S>* table = [] {
    auto* rows = new ConfigTable<S>{
        Field<S>("world_size", &S::world_size, "learner processes", AtLeast(1)),
        [] {
          ConfigField<S> rank = Field<S>("rank", &S::rank, "this process's rank");
          rank.check = [](const S& d, const std::string& key) {
            if (d.rank >= 0 && d.rank < d.world_size) return absl::OkStatus();
            return Invalid(absl::StrCat(key, " must be in [0, world_size) = [0, ", d.world_size,
                                        "), got ", d.rank));
          };
          return rank;
        }(),
        Field<S>("master_addr", &S::master_addr, "host of rank 0's rendezvous store",
                 NotEmpty()),
        Field<S>("master_port", &S::master_port, "its port", IntInRange(1, 65535)),
        Field<S>("backend", &S::backend, "auto, gloo or nccl", OneOf({"auto", "gloo", "nccl"})),
        Field<S>("timeout_s", &S::timeout_s, "start-up and per-collective deadline",
                 Positive()),
    };
    for (ConfigField<S>& row : Embedded<S>(DataParallelOptions::Table())) {
      rows->push_back(std::move(row));
    }
    return rows;
  }();
  return *table;
}

const ConfigTable<TlsSection>& TlsSection::Table() {
  using S = TlsSection;
  static const ConfigTable<S>* table = new ConfigTable<S>{
      InputPathField<S>("ca", &S::ca_file, "PEM CA of the servers' (and clients') certificates"),
      InputPathField<S>("cert", &S::cert_file, "PEM certificate chain of this process"),
      InputPathField<S>("key", &S::key_file, "PEM private key of that certificate"),
      Field<S>("client_auth", &S::client_auth, "servers require client certificates (mTLS)"),
  };
  return *table;
}

TlsOptions TlsSection::For(const std::string& address) const {
  return IsLoopbackAddress(address) ? TlsOptions() : static_cast<const TlsOptions&>(*this);
}

absl::Status TlsSection::Validate() const {
  RETURN_IF_ERROR(CheckTable(Table(), *this));
  if (cert_file.empty() != key_file.empty()) {
    return Invalid(cert_file.empty() ? "key is set without cert" : "cert is set without key");
  }
  if (client_auth && (ca_file.empty() || cert_file.empty())) {
    return Invalid("client_auth needs ca (to check client certificates) and cert and key");
  }
  return absl::OkStatus();
}

const ConfigTable<RunConfig>& RunConfig::Table() {
  using C = RunConfig;
  static const ConfigTable<C>* table = new ConfigTable<C>{
      Section<C>("run", &C::run, "the run: output, steps, device, evaluation"),
      Section<C>("model", &C::model, "the policy's weights and tokenizer"),
      Section<C>("data", &C::data, "prompts"),
      Section<C>("rollout", &C::rollout, "generation"),
      Section<C>("reward", &C::reward, "scoring"),
      Section<C>("algorithm", &C::algorithm, "the policy loss and the step"),
      Section<C>("optimizer", &C::optimizer, "AdamW, its schedule, the MoE terms"),
      Section<C>("sft", &C::sft, "supervised warm-up"),
      Section<C>("checkpoint", &C::checkpoint, "checkpoints"),
      Section<C>("numerics", &C::numerics, "how the policy's numbers are computed"),
      Section<C>("logging", &C::logging, "metrics and progress"),
      Section<C>("fleet", &C::fleet, "where rollouts are generated"),
      Ignored<C>("plan", "read by lightrl plan (rl/plan.h), which checks it"),
      Section<C>("distributed", &C::distributed, "the learner's processes"),
      Section<C>("parallel", &C::parallel, "the learner's layout: TP, DP, EP, expert-TP"),
      Section<C>("tls", &C::tls, "TLS between machines"),
  };
  return *table;
}

// --- validation: each section's table checks, then what spans fields ---

absl::Status RunSection::Validate() const { return CheckTable(Table(), *this); }

absl::Status ModelSection::Validate() const {
  if (!path.empty() && !init_config.empty()) {
    return Invalid("path and init_config are both set; give one (a checkpoint directory, "
                   "or a config.json for a random model)");
  }
  if (path.empty() && init_config.empty()) {
    return Invalid("path is required unless init_config is given (a checkpoint directory, "
                   "or a config.json for a random model)");
  }
  return CheckTable(Table(), *this);
}

absl::Status DataSection::Validate() const {
  if (train.empty()) return Invalid("train is required");
  return CheckTable(Table(), *this);
}

SamplingParams RolloutSection::ToSamplingParams() const {
  SamplingParams p = *this;
  p.n = group_size;
  p.seed = 0;
  return p;
}

absl::Status RolloutSection::Validate() const {
  RETURN_IF_ERROR(CheckTable(Table(), *this));
  // The sampling fields keep their names in SamplingParams, so its messages fit as is.
  return ToSamplingParams().Validate();
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

absl::Status RewardSection::Validate() const { return CheckTable(Table(), *this); }

absl::Status AlgorithmSection::Validate() const {
  RETURN_IF_ERROR(CheckTable(Table(), *this));
  absl::Status s = loss.Validate();
  if (!s.ok()) {
    // PolicyLossOptions names its fields "policy_loss.x"; here they are this section's.
    std::string message(s.message());
    if (absl::StartsWith(message, "policy_loss.")) message.erase(0, 12);
    return absl::Status(s.code(), message);
  }
  return absl::OkStatus();
}

absl::Status SftSection::Validate() const { return CheckTable(Table(), *this); }

absl::Status CheckpointSection::Validate() const { return CheckTable(Table(), *this); }
absl::Status NumericsSection::Validate() const { return CheckTable(Table(), *this); }

absl::Status LoggingSection::Validate() const { return CheckTable(Table(), *this); }

absl::Status FleetSection::Validate() const {
  RETURN_IF_ERROR(CheckTable(Table(), *this));
  if (spawn_reward_workers && mode != "spawn") {
    return Invalid(absl::StrCat("spawn_reward_workers needs mode spawn, got \"", mode, "\""));
  }
  if ((rollout_tp > 1 || rollout_ep > 1) && mode != "spawn") {
    const bool tp = rollout_tp > 1;
    return Invalid(absl::StrCat(tp ? "rollout_tp" : "rollout_ep", " needs mode spawn (start the "
                                "instances of a cluster with `lightrl rollout-worker --",
                                tp ? "tp" : "ep", " N`), got \"", mode, "\""));
  }
  if (rollout_tp > 1 && rollout_ep > 1 && rollout_ep % rollout_tp != 0) {
    return Invalid(absl::StrCat("rollout_tp ", rollout_tp, " with rollout_ep ", rollout_ep,
                                ": rollout_ep must be a multiple of rollout_tp (equal: each rank "
                                "of an instance holds its heads and its experts; k times: k TP "
                                "groups generate apart, their experts shared)"));
  }
  if (mode == "spawn" && min_workers > rollout_workers) {
    return Invalid(absl::StrCat("min_workers must be <= rollout_workers (", rollout_workers,
                                ") in spawn mode, got ", min_workers));
  }
  return absl::OkStatus();
}

absl::Status DistributedSection::Validate() const {
  RETURN_IF_ERROR(CheckTable(Table(), *this));
  // WORLD_SIZE may still replace a world size of 1; the trainer checks the ranks started.
  if (world_size > 1 && world_size % expert_parallel != 0) {
    return Invalid(absl::StrCat("expert_parallel must divide world_size (", world_size,
                                "), got ", expert_parallel));
  }
  return absl::OkStatus();
}

absl::Status RunConfig::Validate() const {
  RETURN_IF_ERROR(CheckTable(Table(), *this));
  // WORLD_SIZE may still replace a world size of 1; the trainer checks the ranks started.
  if (distributed.world_size > 1) RETURN_IF_ERROR(parallel.CheckWorld(distributed.world_size));
  if (parallel.tp > 1 && (parallel.ep > 1 || parallel.expert_tp > 1) &&
      !parallel.sequence_parallel) {
    return Invalid(absl::StrCat(
        "parallel: tp ", parallel.tp, " with ep ", parallel.ep, " x expert_tp ",
        parallel.expert_tp, " needs sequence_parallel: true (each TP rank then dispatches "
        "its own block of the tokens to the experts; docs/distributed.md)"));
  }
  if (rollout.sharded_engine) {
    const char* why = parallel.tp == 1 && parallel.ep == 1
                          ? "a sharded learner (parallel.tp or parallel.ep > 1)"
                      : parallel.tp > 1 && parallel.ep > 1 && parallel.ep % parallel.tp != 0
                          ? "parallel.ep a multiple of parallel.tp when both are > 1 (an EP "
                            "group runs whole TP groups: TP and EP over the same ranks, or "
                            "attention data-parallel over ep / tp TP groups)"
                      : parallel.expert_tp > 1 && parallel.tp > 1
                          ? "parallel.tp 1 when parallel.expert_tp > 1 (an instance splits "
                            "the experts over EP x expert-TP, or attention over TP)"
                      : fleet.enabled()        ? "the local engine (fleet workers get whole models)"
                      : rollout.async          ? "rollout.async off (the engine reads the learner's "
                                                 "live weights)"
                                               : nullptr;
    if (why != nullptr) return Invalid(absl::StrCat("rollout.sharded_engine needs ", why));
  }
  if (parallel.sequence_parallel && numerics.batch_invariant && parallel.ep == 1 &&
      parallel.expert_tp == 1) {
    return Invalid("numerics.batch_invariant runs parallel.sequence_parallel only with the "
                   "experts sharded (ep or expert_tp > 1); with whole experts parallel.tp runs "
                   "the mode without it");
  }
  if (numerics.batch_invariant && fleet.mode != "local" && fleet.weight_dtype != run.dtype) {
    return Invalid(absl::StrCat("numerics.batch_invariant needs the workers' weights in the "
                                "learner's dtype: fleet.weight_dtype is ", fleet.weight_dtype,
                                ", run.dtype ", run.dtype));
  }
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

// distributed.expert_parallel is the older spelling of parallel.ep: whichever is given
// sets both (the learner reads the former); both given and different is an error.
absl::Status ReconcileExpertParallel(const YamlDocument& doc, const ConfigSource& source,
                                     RunConfig& config) {
  const Json* parallel = doc.root.find("parallel");
  const Json* distributed = doc.root.find("distributed");
  const bool ep_given = parallel != nullptr && parallel->is_object() &&
                        parallel->find("ep") != nullptr && !parallel->find("ep")->is_null();
  const bool old_given = distributed != nullptr && distributed->is_object() &&
                         distributed->find("expert_parallel") != nullptr &&
                         !distributed->find("expert_parallel")->is_null();
  int64_t& ep = config.parallel.ep;
  int64_t& old = config.distributed.expert_parallel;
  if (ep_given && old_given && ep != old) {
    return source.ErrorAt("parallel.ep",
                          absl::StrCat("parallel.ep (", ep, ") and distributed.expert_parallel (",
                                       old, ") differ; distributed.expert_parallel is the older "
                                       "spelling of parallel.ep: give parallel.ep alone"));
  }
  if (old_given && !ep_given) {
    LogWarning("%s: distributed.expert_parallel is deprecated; write parallel.ep: %d instead",
               doc.source, old);
    ep = old;
  } else {
    old = ep;
  }
  return absl::OkStatus();
}

absl::StatusOr<RunConfig> BindRunConfig(const YamlDocument& doc, bool strict) {
  ConfigSource source;
  source.doc = &doc;
  source.dir = std::filesystem::path(Absolute(doc.source)).parent_path().string();
  source.strict = strict;
  RunConfig config;
  config.source = doc.source;
  RETURN_IF_ERROR(BindTable(RunConfig::Table(), &doc.root, "", source, config));
  // Defaults that depend on other keys.
  if (config.model.tokenizer.empty() && !config.model.path.empty()) {
    const std::string beside = JoinPath(config.model.path, "tokenizer.json");
    if (FileExists(beside)) config.model.tokenizer = beside;
  }
  if (config.sft.data.empty()) config.sft.data = config.data.train;
  RETURN_IF_ERROR(ReconcileExpertParallel(doc, source, config));
  return config;
}

absl::StatusOr<RunConfig> LoadRunConfig(const std::string& path,
                                        const std::vector<std::string>& overrides) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat(path, ": cannot read the run config: ",
                                     text.status().message()));
  }
  ASSIGN_OR_RETURN(YamlDocument doc, ParseYaml(*text, path));
  for (const std::string& assignment : overrides) {
    RETURN_IF_ERROR(ApplyConfigOverride(doc, assignment));
  }
  ASSIGN_OR_RETURN(RunConfig config, BindRunConfig(doc, /*strict=*/true));
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

std::string DescribeRunConfig(const RunConfig& config) {
  return DumpYaml(DumpTable(RunConfig::Table(), config));
}

std::vector<std::string> RunConfigKeys() {
  std::vector<std::string> keys;
  for (const std::string& key : TableKeys(RunConfig::Table())) {
    if (key.find('.') != std::string::npos) keys.push_back(key);
  }
  return keys;
}

}  // namespace lightrl
