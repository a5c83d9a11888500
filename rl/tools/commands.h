// The subcommands of the `lightrl` executable. Each parses its own flags into an options
// struct and returns the process exit code; libraries below never read flags.
#pragma once

#include <string>
#include <vector>

namespace lightrl {

// `args` excludes the program and subcommand names.
int RunLogprobsCommand(const std::vector<std::string>& args);
int RunTokenizeCommand(const std::vector<std::string>& args);
int RunGenerateCommand(const std::vector<std::string>& args);
int RunRunCommand(const std::vector<std::string>& args);
int RunReplayCommand(const std::vector<std::string>& args);
int RunInitCommand(const std::vector<std::string>& args);
int RunConvertCommand(const std::vector<std::string>& args);
int RunRolloutsCommand(const std::vector<std::string>& args);
int RunRewardWorkerCommand(const std::vector<std::string>& args);
int RunRolloutWorkerCommand(const std::vector<std::string>& args);
int RunPlanCommand(const std::vector<std::string>& args);
int RunPlotCommand(const std::vector<std::string>& args);

}  // namespace lightrl
