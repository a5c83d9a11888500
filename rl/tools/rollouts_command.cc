// `lightrl rollouts`: reads the rollout log back for people. `show` prints a summary per
// prompt group; `export` writes every group as one JSON line, atomically.
#include <iostream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/status.h"
#include "rl/rollout_log.h"
#include "rl/tools/commands.h"
#include "rl/tools/flags.h"

namespace lightrl {
namespace {

constexpr const char* kUsage =
    "usage: lightrl rollouts show --rollouts DIR [--step N] [--limit K] [--width W]\n"
    "                             [--skip-corrupt]\n"
    "       lightrl rollouts export --rollouts DIR --output OUT.jsonl [--step N]\n"
    "                               [--skip-corrupt]\n"
    "DIR holds the rollout log segments (rollouts-000001.log, ...).\n"
    "show: one summary per prompt group (step, policy version, prompt, and per sample its\n"
    "  reward, advantage, finish reason, length and text). --step keeps only that step;\n"
    "  --limit caps the groups shown (default 20, 0 = all); --width caps each text shown\n"
    "  (default 160 bytes).\n"
    "export: one JSON group per line; OUT appears only once every group is written.\n"
    "A record that fails its checksum is an error naming the file and byte offset (a torn\n"
    "record at the very end, left by an interrupted append, is skipped with a warning).\n"
    "--skip-corrupt: skip corrupt records (each with a warning, then a count) instead.\n";

// At most `width` bytes of `text`, cut on a UTF-8 character boundary, as a quoted and
// escaped one-line string.
std::string Excerpt(const std::string& text, int64_t width) {
  std::string cut = text;
  if (width >= 0 && static_cast<int64_t>(text.size()) > width) {
    size_t end = static_cast<size_t>(width);
    while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
    cut = text.substr(0, end);
  }
  std::string out;
  AppendJsonString(out, cut);
  if (cut.size() < text.size()) absl::StrAppend(&out, "... (", text.size(), " bytes)");
  return out;
}

void PrintGroup(const RolloutGroup& g, const RolloutLogPosition& where, int64_t width) {
  std::cout << absl::StrFormat("group %s  step %d  policy_version %d  samples %d  (%s @ %d)\n",
                               g.group_id, g.step, g.policy_version, g.samples.size(),
                               where.file, where.offset);
  std::cout << "  prompt (" << g.prompt_tokens.size() << " tokens): "
            << Excerpt(g.prompt_text, width) << "\n";
  if (!g.ground_truth.empty()) {
    std::cout << "  ground_truth: " << Excerpt(g.ground_truth, width) << "\n";
  }
  for (size_t i = 0; i < g.samples.size(); ++i) {
    const RolloutSample& s = g.samples[i];
    std::string components;
    for (const auto& [name, value] : s.reward_components) {
      absl::StrAppend(&components, components.empty() ? " (" : ", ", name, "=",
                      absl::StrFormat("%.4g", value));
    }
    if (!components.empty()) components += ")";
    std::cout << absl::StrFormat("  [%d] reward %.4g%s  advantage %+.4f  finish %s  tokens %d\n",
                                 i, s.reward, components, s.advantage,
                                 s.finish_reason.empty() ? "-" : s.finish_reason,
                                 s.tokens.size());
    std::cout << "      " << Excerpt(s.text, width) << "\n";
  }
}

void ReportSkipped(const RolloutLogReader& reader, const std::string& dir) {
  if (reader.corrupt_skipped() > 0) {
    std::cerr << "--skip-corrupt: skipped " << reader.corrupt_skipped() << " corrupt records of "
              << dir << "\n";
  }
}

absl::Status Run(const std::vector<std::string>& args) {
  if (args.empty()) return UsageError("expected a subcommand: show or export");
  const std::string& sub = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (sub != "show" && sub != "export") {
    return UsageError(
        absl::StrCat("unknown subcommand \"", sub, "\" (expected show or export)"));
  }
  std::set<std::string> known = {"rollouts", "step"};
  if (sub == "show") known.insert({"limit", "width"});
  if (sub == "export") known.insert("output");
  ASSIGN_OR_RETURN(Flags flags, Flags::Parse(rest, known, {"skip-corrupt"}));
  ASSIGN_OR_RETURN(std::string dir, flags.Required("rollouts"));
  ASSIGN_OR_RETURN(int64_t step, flags.GetInt("step", -1));
  // Flags are checked before the log is opened: a usage error is one without I/O.
  ASSIGN_OR_RETURN(int64_t limit, flags.GetInt("limit", 20));
  ASSIGN_OR_RETURN(int64_t width, flags.GetInt("width", 160));
  if (limit < 0) return UsageError(absl::StrCat("--limit must be >= 0, got ", limit));
  if (width < 0) return UsageError(absl::StrCat("--width must be >= 0, got ", width));
  std::string output;
  if (sub == "export") {
    ASSIGN_OR_RETURN(output, flags.Required("output"));
  }
  const bool filter_step = flags.Has("step");
  RolloutLogReadOptions read_options;
  read_options.skip_corrupt = flags.Has("skip-corrupt");
  ASSIGN_OR_RETURN(RolloutLogReaderPtr reader, RolloutLogReader::Open(dir, read_options));

  RolloutGroup group;
  if (sub == "show") {
    int64_t shown = 0, matched = 0;
    while (true) {
      ASSIGN_OR_RETURN(bool found, reader->Next(&group));
      if (!found) break;
      if (filter_step && group.step != step) continue;
      ++matched;
      if (limit > 0 && shown >= limit) continue;  // keep counting for the footer
      PrintGroup(group, reader->position(), width);
      ++shown;
    }
    std::cout << absl::StrFormat("%d of %d matching groups shown\n", shown, matched);
    ReportSkipped(*reader, dir);
    return absl::OkStatus();
  }

  ASSIGN_OR_RETURN(AtomicFileWriter out, AtomicFileWriter::Open(output));
  int64_t exported = 0;
  while (true) {
    ASSIGN_OR_RETURN(bool found, reader->Next(&group));
    if (!found) break;
    if (filter_step && group.step != step) continue;
    std::string line = group.ToJson().Dump();
    line += '\n';
    RETURN_IF_ERROR(out.Write(line.data(), line.size()));
    ++exported;
  }
  RETURN_IF_ERROR(out.Commit());
  std::cerr << "exported " << exported << " groups to " << output << "\n";
  ReportSkipped(*reader, dir);
  return absl::OkStatus();
}

}  // namespace

int RunRolloutsCommand(const std::vector<std::string>& args) {
  return RunSubcommand("rollouts", kUsage, args, Run);
}

}  // namespace lightrl
