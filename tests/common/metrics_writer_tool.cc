// Test driver for the metrics writers: writes scalars (random from --seed, and/or given as
// --value STEP:TAG=VALUE) to a TensorBoard logdir and a JSONL file, then prints what it
// wrote as JSON so tests/python/metrics_test.py can check it against TensorBoard's reader.
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <map>
#include <random>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/metrics.h"

namespace {

int Fail(const std::string& message) {
  std::cerr << "metrics_writer_tool: " << message << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string logdir, jsonl;
  uint64_t seed = 0;
  int64_t steps = 0, first_step = 0, num_tags = 3;
  std::map<int64_t, lightrl::Scalars> by_step;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (i + 1 >= argc) return Fail(absl::StrCat(flag, " needs a value"));
    std::string value = argv[++i];
    bool ok = true;
    if (flag == "--logdir") {
      logdir = value;
    } else if (flag == "--jsonl") {
      jsonl = value;
    } else if (flag == "--seed") {
      ok = absl::SimpleAtoi(value, &seed);
    } else if (flag == "--steps") {
      ok = absl::SimpleAtoi(value, &steps);
    } else if (flag == "--first-step") {
      ok = absl::SimpleAtoi(value, &first_step);
    } else if (flag == "--tags") {
      ok = absl::SimpleAtoi(value, &num_tags);
    } else if (flag == "--value") {
      // STEP:TAG=VALUE; strtod so that nan and inf can be given.
      size_t colon = value.find(':'), eq = value.rfind('=');
      int64_t step;
      ok = colon != std::string::npos && eq != std::string::npos && eq > colon &&
           absl::SimpleAtoi(value.substr(0, colon), &step);
      if (ok) {
        by_step[step].emplace_back(value.substr(colon + 1, eq - colon - 1),
                                   std::strtod(value.c_str() + eq + 1, nullptr));
      }
    } else {
      return Fail(absl::StrCat("unknown flag ", flag));
    }
    if (!ok) return Fail(absl::StrCat("bad value for ", flag, ": ", value));
  }
  if (logdir.empty() || jsonl.empty()) return Fail("--logdir and --jsonl are required");

  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> magnitude(-6.0, 6.0);
  for (int64_t s = first_step; s < first_step + steps; ++s) {
    for (int64_t t = 0; t < num_tags; ++t) {
      // Values spread over twelve orders of magnitude, either sign.
      double v = std::pow(10.0, magnitude(rng)) * ((rng() & 1) ? 1.0 : -1.0);
      by_step[s].emplace_back(absl::StrCat(t % 2 ? "train/" : "rollout/", "metric_", t), v);
    }
  }

  auto tb = lightrl::TensorBoardWriter::Open(logdir);
  if (!tb.ok()) return Fail(std::string(tb.status().message()));
  const std::string tb_path = (*tb)->path();
  auto jl = lightrl::JsonlMetricsWriter::Open(jsonl);
  if (!jl.ok()) return Fail(std::string(jl.status().message()));
  std::vector<lightrl::MetricsWriterPtr> writers;
  writers.push_back(*std::move(tb));
  writers.push_back(*std::move(jl));
  lightrl::MultiMetricsWriter writer(std::move(writers));

  lightrl::Json events = lightrl::Json::MakeArray();
  for (const auto& [step, scalars] : by_step) {
    if (absl::Status st = writer.Write(step, scalars); !st.ok()) {
      return Fail(std::string(st.message()));
    }
    lightrl::Json values = lightrl::Json::MakeArray();
    for (const auto& [tag, v] : scalars) {
      values.push_back(lightrl::Json(lightrl::Json::Array{lightrl::Json(tag), lightrl::Json(v)}));
    }
    lightrl::Json event = lightrl::Json::MakeObject();
    event.set("step", lightrl::Json(step));
    event.set("scalars", std::move(values));
    events.push_back(std::move(event));
  }
  if (absl::Status st = writer.Flush(); !st.ok()) return Fail(std::string(st.message()));
  lightrl::Json out = lightrl::Json::MakeObject();
  out.set("tensorboard_file", lightrl::Json(tb_path));
  out.set("events", std::move(events));
  std::cout << out.Dump() << "\n";
  return 0;
}
