// Rollout throughput through the fleet: sends prompt groups to running rollout workers
// (`lightrl rollout-worker`) with RolloutFleet and reports generated tokens per second.
//   fleet_bench --workers HOST:PORT[,HOST:PORT...] --prompts prompts.jsonl
//               [--n 4] [--max-new-tokens 128] [--capacity 16] [--repeats 2]
// prompts.jsonl lines hold {"prompt_tokens": [...]}. Sampling at T = 1 with fixed
// seeds, no stop tokens, no early stop, so every sample generates max-new-tokens.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/json.h"
#include "rollout/rollout_client.h"

namespace {

int Fail(const std::string& what) {
  std::fprintf(stderr, "fleet_bench: %s\n", what.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string workers, prompts;
  int64_t n = 4, max_new = 128, capacity = 16, repeats = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    int64_t* target = flag == "--n" ? &n : flag == "--max-new-tokens" ? &max_new
                    : flag == "--capacity" ? &capacity : flag == "--repeats" ? &repeats : nullptr;
    if (flag == "--workers") {
      workers = value;
    } else if (flag == "--prompts") {
      prompts = value;
    } else if (target == nullptr || !absl::SimpleAtoi(value, target)) {
      return Fail("bad flag " + flag + " " + value);
    }
  }
  if (workers.empty() || prompts.empty()) return Fail("--workers and --prompts are required");

  std::vector<lightrl::GenerationRequest> requests;
  std::ifstream in(prompts);
  std::string line;
  while (std::getline(in, line)) {
    auto json = lightrl::Json::Parse(line);
    if (!json.ok() || json->find("prompt_tokens") == nullptr) return Fail("bad line in " + prompts);
    lightrl::GenerationRequest r;
    r.id = "g" + std::to_string(requests.size());
    for (const auto& t : json->find("prompt_tokens")->as_array()) {
      r.prompt.push_back(static_cast<int32_t>(t.as_int()));
    }
    r.params.temperature = 1.0;
    r.params.n = n;
    r.params.max_new_tokens = max_new;
    r.params.early_stop_window = 0;
    r.params.seed = requests.size() + 1;
    requests.push_back(std::move(r));
  }

  std::vector<lightrl::WorkerEndpoint> endpoints;
  for (absl::string_view address : absl::StrSplit(workers, ',')) {
    endpoints.push_back({"w" + std::to_string(endpoints.size()), std::string(address),
                         static_cast<int>(capacity)});
  }
  lightrl::RolloutFleetHooks hooks;
  hooks.list_workers = [&] { return endpoints; };
  auto fleet = lightrl::RolloutFleet::Create(lightrl::RolloutFleetOptions{}, hooks);
  if (!fleet.ok()) return Fail(std::string(fleet.status().message()));

  std::vector<std::unique_ptr<lightrl::RolloutClient>> clients;
  for (const auto& e : endpoints) {
    lightrl::RolloutClientOptions o;
    o.address = e.address;
    auto c = lightrl::RolloutClient::Create(o);
    if (!c.ok()) return Fail(std::string(c.status().message()));
    clients.push_back(*std::move(c));
  }
  // Engine batches the workers ran so far: how the groups of one call were batched.
  auto engine_batches = [&]() -> int64_t {
    int64_t total = 0;
    for (auto& c : clients) {
      auto h = c->Health();
      if (h.ok()) total += h->engine_batches;
    }
    return total;
  };

  for (int64_t rep = 0; rep < repeats; ++rep) {
    const int64_t batches_before = engine_batches();
    const auto start = std::chrono::steady_clock::now();
    auto outcomes = (*fleet)->Generate(requests, 0);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    int64_t tokens = 0;
    for (const auto& o : outcomes) {
      if (!o.status.ok()) return Fail(std::string(o.status.message()));
      for (const auto& s : o.output.samples) tokens += static_cast<int64_t>(s.tokens.size());
    }
    std::printf("{\"workers\": %zu, \"groups\": %zu, \"n\": %lld, \"tokens\": %lld, "
                "\"seconds\": %.3f, \"tokens_per_s\": %.1f, \"engine_batches\": %lld, "
                "\"repeat\": %lld}\n",
                endpoints.size(), requests.size(), static_cast<long long>(n),
                static_cast<long long>(tokens), seconds, tokens / seconds,
                static_cast<long long>(engine_batches() - batches_before),
                static_cast<long long>(rep));
  }
  return 0;
}
