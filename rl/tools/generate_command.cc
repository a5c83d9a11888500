// `lightrl generate`: sample completions for a JSONL file of prompts with the engine.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/status.h"
#include "inference_engine/engine.h"
#include "policy/checkpoint_files.h"
#include "policy/policy_model.h"
#include "policy/tokenizer.h"
#include "rl/tools/commands.h"
#include "rl/tools/flags.h"

namespace lightrl {
namespace {

constexpr const char* kUsage =
    "usage: lightrl generate --model DIR --input prompts.jsonl --output out.jsonl [flags]\n"
    "Input lines: {\"prompt\": \"text\"} or {\"prompt_tokens\": [ids]}, optional \"id\" and\n"
    "per-line overrides of max_new_tokens, temperature, top_p, top_k, n, seed, stop,\n"
    "stop_token_ids, early_stop_window, early_stop_prob.\n"
    "Output: one line per sample with prompt, tokens, text, logprobs and finish_reason\n"
    "(length, stop, early-stop); a failed request gives one line with \"error\".\n"
    "DIR/tokenizer.json encodes text prompts; DIR/generation_config.json (a run's checkpoint\n"
    "has one) sets the end ids and the defaults of the sampling flags.\n"
    "flags: --max-new-tokens N (256) --temperature T (1.0) --top-p P (1.0) --top-k K (0)\n"
    "       --n N (1) --seed S (0; line i uses S + i unless it sets seed)\n"
    "       --stop STRING --stop-token-ids a,b,c (default: generation_config.json's\n"
    "       eos_token_id, else config.json's eos ids and the tokenizer's end tokens)\n"
    "       --early-stop-window N (3000; 0 = off) --early-stop-prob P (0.99)\n"
    "       --device cpu|cuda --dtype float32|bfloat16 --max-num-seqs N (64)\n"
    "       --kv-cache-mb MB (1024) --page-size N (64) --max-model-len N\n"
    "       --enforce-eager (CUDA: launch decode steps op by op, no CUDA graphs)\n";

absl::Status ApplyOverrides(const Json& line, const std::string& where, SamplingParams& p) {
  auto get_int = [&](const char* key, int64_t& out) -> absl::Status {
    if (const Json* v = line.find(key)) {
      if (!v->is_int()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": ", key, " must be an integer, got ", v->Dump()));
      }
      out = v->as_int();
    }
    return absl::OkStatus();
  };
  auto get_num = [&](const char* key, double& out) -> absl::Status {
    if (const Json* v = line.find(key)) {
      if (!v->is_number()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": ", key, " must be a number, got ", v->Dump()));
      }
      out = v->as_double();
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(get_int("max_new_tokens", p.max_new_tokens));
  RETURN_IF_ERROR(get_num("temperature", p.temperature));
  RETURN_IF_ERROR(get_num("top_p", p.top_p));
  RETURN_IF_ERROR(get_int("top_k", p.top_k));
  RETURN_IF_ERROR(get_int("n", p.n));
  RETURN_IF_ERROR(get_int("early_stop_window", p.early_stop_window));
  RETURN_IF_ERROR(get_num("early_stop_prob", p.early_stop_prob));
  if (const Json* v = line.find("seed")) {
    if (!v->is_int()) return absl::InvalidArgumentError(absl::StrCat(where, ": seed must be an integer"));
    p.seed = static_cast<uint64_t>(v->as_int());
  }
  if (const Json* v = line.find("stop")) {
    p.stop_strings.clear();
    if (v->is_string()) {
      p.stop_strings.push_back(v->as_string());
    } else if (v->is_array()) {
      for (const Json& s : v->as_array()) {
        if (!s.is_string()) return absl::InvalidArgumentError(absl::StrCat(where, ": stop must hold strings"));
        p.stop_strings.push_back(s.as_string());
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(where, ": stop must be a string or a list"));
    }
  }
  if (const Json* v = line.find("stop_token_ids")) {
    if (!v->is_array()) return absl::InvalidArgumentError(absl::StrCat(where, ": stop_token_ids must be a list"));
    p.stop_token_ids.clear();
    for (const Json& s : v->as_array()) {
      if (!s.is_int()) return absl::InvalidArgumentError(absl::StrCat(where, ": stop_token_ids must hold integers"));
      p.stop_token_ids.push_back(s.as_int());
    }
  }
  return absl::OkStatus();
}

struct Line {
  Json json;
  std::string id;
  std::string prompt_text;
  bool has_text = false;
};

absl::Status Run(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(Flags flags,
                   Flags::Parse(args, {"model", "input", "output", "max-new-tokens", "temperature",
                                       "top-p", "top-k", "n", "seed", "stop", "stop-token-ids",
                                       "early-stop-window", "early-stop-prob", "device", "dtype",
                                       "max-num-seqs", "kv-cache-mb", "page-size", "max-model-len"},
                                 {"enforce-eager"}));
  ASSIGN_OR_RETURN(std::string model_dir, flags.Required("model"));
  ASSIGN_OR_RETURN(std::string input, flags.Required("input"));
  ASSIGN_OR_RETURN(std::string output, flags.Required("output"));
  ASSIGN_OR_RETURN(std::optional<GenerationConfigFile> generation, ReadGenerationConfig(model_dir));
  const GenerationConfigFile defaults = generation.value_or(GenerationConfigFile());
  SamplingParams base;
  ASSIGN_OR_RETURN(base.max_new_tokens, flags.GetInt("max-new-tokens", defaults.max_new_tokens.value_or(256)));
  ASSIGN_OR_RETURN(base.temperature, flags.GetDouble("temperature", defaults.temperature.value_or(1.0)));
  ASSIGN_OR_RETURN(base.top_p, flags.GetDouble("top-p", defaults.top_p.value_or(1.0)));
  ASSIGN_OR_RETURN(base.top_k, flags.GetInt("top-k", defaults.top_k.value_or(0)));
  ASSIGN_OR_RETURN(base.n, flags.GetInt("n", 1));
  ASSIGN_OR_RETURN(int64_t seed, flags.GetInt("seed", 0));
  ASSIGN_OR_RETURN(base.early_stop_window, flags.GetInt("early-stop-window", 3000));
  ASSIGN_OR_RETURN(base.early_stop_prob, flags.GetDouble("early-stop-prob", 0.99));
  if (flags.Has("stop")) {
    base.stop_strings.push_back(flags.Get("stop"));
  } else {
    base.stop_strings = defaults.stop_strings;
  }
  RETURN_IF_ERROR(base.Validate());
  EngineOptions eopts;
  ASSIGN_OR_RETURN(eopts.max_num_seqs, flags.GetInt("max-num-seqs", 64));
  ASSIGN_OR_RETURN(int64_t kv_mb, flags.GetInt("kv-cache-mb", 1024));
  eopts.kv_cache_bytes = kv_mb << 20;
  ASSIGN_OR_RETURN(eopts.page_size, flags.GetInt("page-size", 64));
  ASSIGN_OR_RETURN(eopts.max_model_len, flags.GetInt("max-model-len", 0));
  eopts.cuda_graphs = flags.Get("enforce-eager", "false") != "true";
  RETURN_IF_ERROR(eopts.Validate());
  PolicyOptions popts;
  popts.device = flags.Get("device", "cpu");
  popts.dtype = flags.Get("dtype", "float32");
  RETURN_IF_ERROR(popts.Validate());

  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile(JoinPath(model_dir, "config.json")));
  std::optional<Tokenizer> tokenizer;
  const std::string tok_path = JoinPath(model_dir, kTokenizerFileName);
  if (FileExists(tok_path)) {
    ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::FromFile(tok_path));
    tokenizer.emplace(std::move(t));
  }
  if (flags.Has("stop-token-ids")) {
    for (absl::string_view s : absl::StrSplit(flags.Get("stop-token-ids"), ',', absl::SkipEmpty())) {
      int64_t id;
      if (!absl::SimpleAtoi(s, &id)) {
        return UsageError(absl::StrCat("--stop-token-ids: \"", s, "\" is not an integer"));
      }
      base.stop_token_ids.push_back(id);
    }
  } else if (!defaults.eos_token_ids.empty()) {
    base.stop_token_ids = defaults.eos_token_ids;
  } else {
    // As the trainer's rollouts stop.
    base.stop_token_ids = DefaultEndTokenIds(config, tokenizer ? &*tokenizer : nullptr);
  }

  ASSIGN_OR_RETURN(std::string text, ReadFile(input));
  std::vector<Line> lines;
  std::vector<GenerationRequest> requests;
  int line_no = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (raw.find_first_not_of(" \t\r") == absl::string_view::npos) continue;
    const std::string where = absl::StrCat(input, ":", line_no);
    auto json = Json::Parse(raw);
    if (!json.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", json.status().message()));
    if (!json->is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected a JSON object"));
    Line line;
    GenerationRequest req;
    req.params = base;
    req.params.seed = static_cast<uint64_t>(seed) + requests.size();
    RETURN_IF_ERROR(ApplyOverrides(*json, where, req.params));
    const Json* id = json->find("id");
    line.id = id == nullptr ? std::to_string(requests.size()) : (id->is_string() ? id->as_string() : id->Dump());
    req.id = line.id;
    if (const Json* p = json->find("prompt_tokens")) {
      if (!p->is_array()) return absl::InvalidArgumentError(absl::StrCat(where, ": prompt_tokens must be a list"));
      for (size_t i = 0; i < p->size(); ++i) {
        const Json& t = p->as_array()[i];
        if (!t.is_int() || t.as_int() < INT32_MIN || t.as_int() > INT32_MAX) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": prompt_tokens[", i, "] = ", t.Dump(), " is not a token id"));
        }
        req.prompt.push_back(static_cast<int32_t>(t.as_int()));
      }
    } else if (const Json* p = json->find("prompt")) {
      if (!p->is_string()) return absl::InvalidArgumentError(absl::StrCat(where, ": prompt must be a string"));
      if (!tokenizer) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": text prompts need ", tok_path));
      }
      ASSIGN_OR_RETURN(req.prompt, tokenizer->Encode(p->as_string()));
      line.prompt_text = p->as_string();
      line.has_text = true;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(where, ": each line needs \"prompt\" or \"prompt_tokens\""));
    }
    line.json = std::move(*json);
    lines.push_back(std::move(line));
    requests.push_back(std::move(req));
  }

  ASSIGN_OR_RETURN(auto policy, PolicyModel::Load(model_dir, popts));
  ASSIGN_OR_RETURN(auto engine, Engine::Create(policy.get(), eopts, tokenizer ? &*tokenizer : nullptr));
  const bool tty = ::isatty(2);
  const auto start = std::chrono::steady_clock::now();
  auto progress = [&](const EngineProgress& p) {
    if (!tty) return;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "\r[generate] requests %lld/%lld  tokens %lld  %.0f tok/s  active %lld  preempted %lld ",
                 static_cast<long long>(p.requests_done), static_cast<long long>(p.requests_total),
                 static_cast<long long>(p.tokens_generated), p.tokens_generated / std::max(secs, 1e-9),
                 static_cast<long long>(p.active_seqs), static_cast<long long>(p.preemptions));
  };
  auto results = engine->Generate(requests, progress);
  if (tty) std::fprintf(stderr, "\n");

  std::string out;
  int failed = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    if (!results[i].status.ok()) {
      ++failed;
      Json j = Json::MakeObject();
      j.set("id", Json(lines[i].id));
      j.set("error", Json(std::string(results[i].status.message())));
      out += j.Dump() + "\n";
      std::cerr << "lightrl generate: " << results[i].status.message() << "\n";
      continue;
    }
    for (size_t k = 0; k < results[i].samples.size(); ++k) {
      const GeneratedSample& s = results[i].samples[k];
      Json j = Json::MakeObject();
      j.set("id", Json(lines[i].id));
      j.set("sample", Json(static_cast<int64_t>(k)));
      if (lines[i].has_text) j.set("prompt", Json(lines[i].prompt_text));
      Json ptoks = Json::MakeArray();
      for (int32_t t : requests[i].prompt) ptoks.push_back(Json(t));
      j.set("prompt_tokens", std::move(ptoks));
      Json toks = Json::MakeArray();
      for (int32_t t : s.tokens) toks.push_back(Json(t));
      j.set("tokens", std::move(toks));
      if (tokenizer) {
        auto decoded = tokenizer->Decode(s.tokens);
        if (decoded.ok()) j.set("text", Json(*decoded));
      }
      j.set("finish_reason", Json(FinishReasonName(s.finish_reason)));
      std::string line = j.Dump();
      line.pop_back();
      line += ",\"logprobs\":[";
      for (size_t t = 0; t < s.logprobs.size(); ++t) {
        if (t) line += ',';
        line += FormatFloat(s.logprobs[t]);
      }
      line += "]}\n";
      out += line;
    }
  }
  RETURN_IF_ERROR(WriteFileAtomic(output, out));
  const auto& st = engine->stats();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cerr << absl::StrFormat(
      "lightrl generate: %d requests (%d failed), %d tokens in %.2f s (%.1f tok/s), %d preemptions; "
      "state %d B/seq, KV %d B per %d-token page\n",
      results.size(), failed, st.generated_tokens, secs, st.generated_tokens / std::max(secs, 1e-9),
      st.preemptions, st.slot_bytes, st.page_bytes, st.page_size);
  if (failed > 0) {
    return absl::InvalidArgumentError(absl::StrCat(failed, " of ", results.size(), " requests failed; see ", output));
  }
  return absl::OkStatus();
}

}  // namespace

int RunGenerateCommand(const std::vector<std::string>& args) {
  return RunSubcommand("generate", kUsage, args, Run);
}

}  // namespace lightrl
