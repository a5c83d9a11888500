// Runs a fuzz target without libFuzzer: the seeds, then random and mutated inputs from a
// fixed seed until an iteration or time bound, so CTest runs it in bounded time on every
// CI build. A crash, a failed check or an input slower than --max-input-ms fails the run
// and names the iteration and the input's size (rerun with the same --seed to reproduce).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_target.h"

namespace lightrl::fuzz {
namespace {

struct DriverOptions {
  uint64_t seed = 1;          // the generator's seed; a run is reproducible from it
  int64_t iterations = 20000; // inputs after the seeds
  double seconds = 10;        // stop earlier at this wall time
  double max_input_ms = 2000; // one input slower than this is a finding
  size_t max_len = 100000;    // longest generated input
};

// Bytes that steer the parsers into their recursive and edge paths.
const char kAlphabet[] = "()[]{}+-*/^.,:;=\\ \n\t\"'0123456789eE-abcxyz#%$!&|_nulltruefalse";

class Mutator {
 public:
  Mutator(uint64_t seed, std::vector<std::string> seeds, size_t max_len)
      : rng_(seed), seeds_(std::move(seeds)), max_len_(max_len) {
    for (const std::string& s : seeds_) {
      for (size_t i = 0; i + 1 < s.size(); i += 3) tokens_.push_back(s.substr(i, 1 + rng_() % 8));
    }
    if (tokens_.empty()) tokens_.push_back("(");
  }

  std::string Next() {
    std::string s;
    switch (rng_() % 4) {
      case 0: s = RandomBytes(); break;
      case 1: s = Nested(); break;
      default: s = seeds_.empty() ? RandomBytes() : seeds_[rng_() % seeds_.size()]; break;
    }
    for (int n = 1 + static_cast<int>(rng_() % 8); n > 0; --n) Mutate(&s);
    if (s.size() > max_len_) s.resize(max_len_);
    return s;
  }

 private:
  size_t Below(size_t n) { return n == 0 ? 0 : rng_() % n; }

  std::string RandomBytes() {
    std::string s(Below(256), '\0');
    const bool printable = rng_() % 2 == 0;
    for (char& c : s) {
      c = printable ? kAlphabet[Below(sizeof(kAlphabet) - 1)] : static_cast<char>(rng_());
    }
    return s;
  }

  // Deep nesting of one bracket kind around a seed, balanced or not: the input class that
  // crashed the countdown parser.
  std::string Nested() {
    static const char* kOpen[] = {"(", "[", "{", "\\frac{", "\\sqrt{", "-", "[{\"a\":", "\\boxed{"};
    static const char* kClose[] = {")", "]", "}", "}{1}", "}", "", "}]", "}"};
    const size_t kind = Below(sizeof(kOpen) / sizeof(kOpen[0]));
    const size_t depth = rng_() % 2 ? Below(100) : Below(50000);
    std::string s;
    for (size_t i = 0; i < depth && s.size() < max_len_ / 2; ++i) s += kOpen[kind];
    s += seeds_.empty() ? "1" : seeds_[Below(seeds_.size())];
    if (rng_() % 4 != 0) {
      for (size_t i = 0; i < depth && s.size() < max_len_; ++i) s += kClose[kind];
    }
    return s;
  }

  void Mutate(std::string* s) {
    const size_t pos = Below(s->size() + 1);
    switch (rng_() % 7) {
      case 0: s->insert(pos, 1, static_cast<char>(rng_())); break;
      case 1: s->insert(pos, 1, kAlphabet[Below(sizeof(kAlphabet) - 1)]); break;
      case 2: if (!s->empty()) s->erase(pos == s->size() ? pos - 1 : pos, 1 + Below(16)); break;
      case 3: if (pos < s->size()) (*s)[pos] = static_cast<char>(rng_()); break;
      case 4: s->insert(pos, tokens_[Below(tokens_.size())]); break;
      case 5: {  // duplicate a slice, sometimes many times
        if (s->empty()) break;
        const size_t begin = Below(s->size()), len = 1 + Below(std::min<size_t>(32, s->size() - begin));
        const std::string slice = s->substr(begin, len);
        for (size_t n = rng_() % 3 == 0 ? Below(2000) : 1; n > 0 && s->size() < max_len_; --n) {
          s->insert(pos, slice);
        }
        break;
      }
      default: if (!seeds_.empty()) s->insert(pos, seeds_[Below(seeds_.size())]); break;
    }
  }

  std::mt19937_64 rng_;
  std::vector<std::string> seeds_;
  std::vector<std::string> tokens_;
  size_t max_len_;
};

bool ParseFlag(const char* arg, const char* name, std::string* value) {
  const size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  *value = arg + n + 1;
  return true;
}

int Main(int argc, char** argv) {
  DriverOptions options;
  for (int i = 1; i < argc; ++i) {
    std::string v;
    if (ParseFlag(argv[i], "--seed", &v)) {
      options.seed = std::strtoull(v.c_str(), nullptr, 10);
    } else if (ParseFlag(argv[i], "--iterations", &v)) {
      options.iterations = std::strtoll(v.c_str(), nullptr, 10);
    } else if (ParseFlag(argv[i], "--seconds", &v)) {
      options.seconds = std::strtod(v.c_str(), nullptr);
    } else if (ParseFlag(argv[i], "--max-input-ms", &v)) {
      options.max_input_ms = std::strtod(v.c_str(), nullptr);
    } else {
      std::fprintf(stderr,
                   "usage: %s [--seed=N] [--iterations=N] [--seconds=S] [--max-input-ms=MS]\n",
                   argv[0]);
      return 2;
    }
  }
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto run_one = [&](const std::string& input, int64_t iteration) {
    const auto t0 = Clock::now();
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    if (ms > options.max_input_ms) {
      std::fprintf(stderr, "iteration %lld (seed %llu): a %zu-byte input took %.0f ms > %.0f ms\n",
                   static_cast<long long>(iteration), static_cast<unsigned long long>(options.seed),
                   input.size(), ms, options.max_input_ms);
      std::exit(1);
    }
  };
  const std::vector<std::string> seeds = Seeds();
  for (const std::string& s : seeds) run_one(s, -1);
  Mutator mutator(options.seed, seeds, options.max_len);
  int64_t done = 0;
  for (; done < options.iterations; ++done) {
    if (std::chrono::duration<double>(Clock::now() - start).count() > options.seconds) break;
    run_one(mutator.Next(), done);
  }
  std::printf("%zu seeds and %lld generated inputs in %.1f s, seed %llu: no crash, no failed check\n",
              seeds.size(), static_cast<long long>(done),
              std::chrono::duration<double>(Clock::now() - start).count(),
              static_cast<unsigned long long>(options.seed));
  return 0;
}

}  // namespace
}  // namespace lightrl::fuzz

int main(int argc, char** argv) { return lightrl::fuzz::Main(argc, argv); }
