// A custom reward server in C++: a RewardFunction with its own rule, served by
// lightrl's RewardServer (which brings batch validation, the auth token and the
// finite-score check). The rule: a response earns 1.0 when its last line is exactly
// "Answer: <ground truth>" and 0.2 when the answer is right but the format is not;
// responses with more than --max-words words lose 0.5.
#include <signal.h>

#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "reward/reward_function.h"
#include "reward/reward_service.h"
#include "reward/answer_parsers.h"

namespace {

class AnswerLineReward final : public lightrl::RewardFunction {
 public:
  explicit AnswerLineReward(int max_words) : max_words_(max_words) {}
  std::string Kind() const override { return "answer-line"; }

  absl::StatusOr<lightrl::RewardResult> Score(const lightrl::RewardInput& input) override {
    const absl::string_view text = absl::StripTrailingAsciiWhitespace(input.response);
    const size_t newline = text.rfind('\n');
    absl::string_view last_line =
        newline == absl::string_view::npos ? text : text.substr(newline + 1);
    last_line = absl::StripAsciiWhitespace(last_line);
    const bool formatted = absl::ConsumePrefix(&last_line, "Answer:");
    // Unformatted responses still get partial credit for the answer they commit to.
    const std::optional<std::string> extracted =
        formatted ? std::optional<std::string>(std::string(absl::StripAsciiWhitespace(last_line)))
                  : lightrl::ExtractFinalAnswer(text);
    const bool correct = extracted && lightrl::AnswersMatch(*extracted, input.ground_truth);
    const std::vector<absl::string_view> words =
        absl::StrSplit(text, absl::ByAnyChar(" \n\t"), absl::SkipEmpty());
    const double length = static_cast<int>(words.size()) > max_words_ ? -0.5 : 0.0;
    lightrl::RewardResult result;
    result.score = (correct ? (formatted ? 1.0 : 0.2) : 0.0) + length;
    result.components = {{"correct", correct ? 1.0 : 0.0},
                         {"format", formatted ? 1.0 : 0.0},
                         {"length", length}};
    return result;
  }

 private:
  int max_words_;
};

constexpr const char* kUsage =
    "usage: example_reward_server [--listen HOST:PORT] [--auth-token T] [--max-words N]\n";

}  // namespace

int main(int argc, char** argv) {
  lightrl::RewardServerOptions options;
  int max_words = 512;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help") {
      std::cout << kUsage;
      return 0;
    }
    if (i + 1 >= argc) {
      std::cerr << "example_reward_server: " << flag << " needs a value\n" << kUsage;
      return 2;
    }
    const std::string value = argv[++i];
    if (flag == "--listen") {
      options.listen_address = value;
    } else if (flag == "--auth-token") {
      options.auth_token = value;
    } else if (flag == "--max-words") {
      max_words = std::stoi(value);
    } else {
      std::cerr << "example_reward_server: unknown flag " << flag << "\n" << kUsage;
      return 2;
    }
  }

  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::StatusOr<std::unique_ptr<lightrl::RewardServer>> server = lightrl::RewardServer::Start(
      options, std::make_unique<AnswerLineReward>(max_words));
  if (!server.ok()) {
    std::cerr << "example_reward_server: " << server.status().message() << "\n";
    return 1;
  }
  std::cout << "listening on " << (*server)->address() << std::endl;
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  (*server)->Shutdown();
  return 0;
}
