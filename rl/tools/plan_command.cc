// `lightrl plan`: the parallel layout, memory per GPU and estimated RL step time of a run
// config on a GPU cluster (rl/plan.h), as a table or JSON.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "rl/plan.h"
#include "rl/tools/commands.h"
#include "rl/tools/flags.h"

namespace lightrl {
namespace {

constexpr const char* kUsage =
    "usage: lightrl plan --config FILE.yaml --gpus N [--json] [--strict]\n"
    "Prints the parallel layout (rollout vs learner GPUs, TP/EP/DP sizes), memory per GPU per\n"
    "role and an estimated time per RL step for the run config's model and workload on N GPUs\n"
    "of the config's plan.hardware profile (default h800). Every figure is labelled computed,\n"
    "measured (with its source), extrapolated or assumed; docs/scale.md explains them.\n"
    "flags: --json        machine-readable output\n"
    "       --strict      exit 1 when the layout does not fit in GPU memory\n";

absl::Status Run(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args, {"config", "gpus"}, {"json", "strict"}));
  ASSIGN_OR_RETURN(std::string config, flags.Required("config"));
  if (!flags.Has("gpus")) return UsageError("--gpus is required");
  ASSIGN_OR_RETURN(int64_t gpus, flags.GetInt("gpus", 0));
  ASSIGN_OR_RETURN(PlanInput input, LoadPlanInput(config));
  absl::StatusOr<Plan> plan = MakePlan(input.model, input.options, gpus);
  if (!plan.ok()) return LocateInConfig(input.doc, plan.status());
  plan->model_source = input.model_source;
  if (flags.Has("json")) {
    std::cout << PlanToJson(*plan).Dump(2) << "\n";
  } else {
    std::cout << FormatPlan(*plan);
  }
  if (!plan->fits()) {
    for (const auto& w : plan->warnings) std::cerr << "lightrl plan: warning: " << w << "\n";
    if (flags.Has("strict")) {
      return absl::FailedPreconditionError(
          absl::StrCat("the layout for ", gpus, " GPUs does not fit in ",
                       input.options.hardware.memory_gb, " GB per GPU (--strict)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int RunPlanCommand(const std::vector<std::string>& args) {
  return RunSubcommand("plan", kUsage, args, Run);
}

}  // namespace lightrl
