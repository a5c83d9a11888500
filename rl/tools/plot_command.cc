// `lightrl plot`: PNG line charts of runs' metrics.jsonl, one per metric, runs overlaid.
#include <iostream>

#include "absl/strings/str_split.h"
#include "common/status.h"
#include "rl/metrics_plot.h"
#include "rl/tools/commands.h"
#include "rl/tools/flags.h"

namespace lightrl {
namespace {

constexpr const char* kUsage =
    "usage: lightrl plot --run DIR [--run DIR2 ...] --output OUT_DIR [flags]\n"
    "Writes OUT_DIR/<metric>.png ('/' as '_') for each metric: a line chart of each run's\n"
    "DIR/metrics.jsonl (or a metrics.jsonl named directly) by step, runs overlaid with a\n"
    "legend. sft/* metrics are drawn by SFT step (they are logged at steps <= 0).\n"
    "flags: --metrics a,b,c (default: reward/mean, reward/accuracy, eval/accuracy,\n"
    "       eval/accuracy_sampled, loss/policy, is/clip_fraction, response/length_mean,\n"
    "       sft/loss where some run logged them; docs/metrics.md lists them all)\n"
    "       --width PX (800) --height PX (480)\n";

// --run may repeat, which Flags does not allow: its values are taken out first.
absl::Status Run(const std::vector<std::string>& args) {
  PlotOptions options;
  std::vector<std::string> rest;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--run") {
      if (i + 1 >= args.size()) return UsageError("--run needs a value");
      options.runs.push_back(args[++i]);
    } else if (args[i].rfind("--run=", 0) == 0) {
      options.runs.push_back(args[i].substr(6));
    } else {
      rest.push_back(args[i]);
    }
  }
  ASSIGN_OR_RETURN(Flags flags, Flags::Parse(rest, {"output", "metrics", "width", "height"}));
  ASSIGN_OR_RETURN(options.output_dir, flags.Required("output"));
  for (absl::string_view m : absl::StrSplit(flags.Get("metrics"), ',', absl::SkipWhitespace())) {
    options.metrics.emplace_back(m);
  }
  ASSIGN_OR_RETURN(int64_t width, flags.GetInt("width", 800));
  ASSIGN_OR_RETURN(int64_t height, flags.GetInt("height", 480));
  if (width < 0 || width > 100000 || height < 0 || height > 100000) {
    return UsageError("--width and --height must be pixel counts");
  }
  options.width = static_cast<int>(width);
  options.height = static_cast<int>(height);
  ASSIGN_OR_RETURN(std::vector<std::string> written, PlotMetrics(options));
  for (const std::string& path : written) std::cout << path << "\n";
  return absl::OkStatus();
}

}  // namespace

int RunPlotCommand(const std::vector<std::string>& args) {
  return RunSubcommand("plot", kUsage, args, Run);
}

}  // namespace lightrl
