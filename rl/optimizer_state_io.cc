#include "rl/optimizer_state_io.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status.h"

namespace lightrl {

namespace {

std::string ShardPath(const std::string& path, int64_t rank, int64_t world) {
  return absl::StrCat(path, ".rank", rank, "-of-", world);
}

// `path`.experts<q>-of-<ep> for EP rank q; under expert-TP `.etp<t>-of-<expert_tp>` after it.
std::string ExpertStatePath(const std::string& path, const ExpertShards& e) {
  const int64_t t = e.shard() % e.expert_tp(), q = e.shard() / e.expert_tp();
  std::string file = absl::StrCat(path, ".experts", q, "-of-", e.ep());
  if (e.expert_tp() > 1) absl::StrAppend(&file, ".etp", t, "-of-", e.expert_tp());
  return file;
}

std::string MasterKey(size_t i) { return "lightrl.master." + std::to_string(i); }

// Sharded experts key their masters by name: a sharded model's parameter indices are not
// the whole model's.
std::string ExpertMasterKey(const ExpertShards& e, size_t i) {
  return e.sharded() ? "lightrl.master." + e.name(i) : MasterKey(i);
}

absl::Status SaveArchive(torch::serialize::OutputArchive& archive, const std::string& path) {
  const std::string tmp = path + ".tmp";
  archive.save_to(tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat(path, ": cannot rename optimizer state into place"));
  }
  return absl::OkStatus();
}

// What a checkpoint directory holds, for an error that says how it was written.
std::string DescribeSavedState(const std::string& path) {
  if (FileExists(path)) return "one optimizer state file (written without ZeRO-1)";
  for (int64_t n = 2; n <= 4096; ++n) {
    if (FileExists(ShardPath(path, 0, n))) {
      return absl::StrCat("ZeRO-1 shards of world_size ", n, " (", ShardPath(path, 0, n), ", ...)");
    }
  }
  // Tensor-parallel state: `path`.tp<t>-of-<T>, with or without ZeRO-1 shards after it.
  const std::filesystem::path p(path);
  const std::string prefix = p.filename().string() + ".tp";
  std::vector<std::string> tp_files;
  std::error_code error;
  for (std::filesystem::directory_iterator it(p.parent_path(), error), end; !error && it != end;
       it.increment(error)) {
    std::string name = it->path().filename().string();
    if (absl::StartsWith(name, prefix)) tp_files.push_back(std::move(name));
    if (tp_files.size() > 65536) break;
  }
  if (!tp_files.empty()) {
    std::sort(tp_files.begin(), tp_files.end());
    return absl::StrCat(tp_files.size(), " tensor-parallel state files (", tp_files.front(), ", ...)");
  }
  return "no optimizer state";
}

int64_t ExpertParallel(const OptimizerStateParts& p) { return p.experts ? p.experts->ep() : 1; }

// The files of this TP rank's state start with this name.
std::string TpPath(const std::string& path, const OptimizerStateParts& p) {
  return p.tp > 1 ? absl::StrCat(path, ".tp", p.tp_rank, "-of-", p.tp) : path;
}

// The collective that ends a save: rank 0 moves the checkpoint into place next, and
// every rank's files must be in it by then.
absl::Status AllWritten(const OptimizerStateParts& p) {
  if (p.group != nullptr && p.group->world_size() > 1) return p.group->Barrier();
  return absl::OkStatus();
}

// The first EP group writes every shard of the experts' state once.
absl::Status SaveExperts(const std::string& path, const OptimizerStateParts& p) {
  ExpertShards& e = *p.experts;
  torch::serialize::OutputArchive experts;
  experts.write("lightrl.expert_parallel", torch::tensor(e.ep()));
  experts.write("lightrl.expert_shard", torch::tensor(e.shard()));
  experts.write("lightrl.expert_tp", torch::tensor(e.expert_tp()));
  e.optimizer().save(experts);
  for (size_t i : e.local()) {
    if (p.masters->has_masters()) experts.write(ExpertMasterKey(e, i), p.masters->master(i));
  }
  return SaveArchive(experts, ExpertStatePath(path, e));
}

absl::Status LoadExperts(const std::string& path, const OptimizerStateParts& p) {
  ExpertShards& e = *p.experts;
  const std::string file = ExpertStatePath(path, e);
  if (!FileExists(file)) {
    return absl::FailedPreconditionError(absl::StrCat(
        file, " does not exist: this learner runs expert_parallel ", e.ep(), " x expert_tp ",
        e.expert_tp(), " and needs the state of expert shard ", e.shard()));
  }
  torch::serialize::InputArchive experts;
  experts.load_from(file);
  torch::Tensor shard;
  experts.read("lightrl.expert_shard", shard);
  if (shard.item<int64_t>() != e.shard()) {
    return absl::FailedPreconditionError(
        absl::StrCat(file, ": holds expert shard ", shard.item<int64_t>(), ", expected ", e.shard()));
  }
  e.optimizer().load(experts);
  for (size_t i : e.local()) {
    if (!p.masters->has_masters()) continue;
    torch::Tensor t;
    experts.read(ExpertMasterKey(e, i), t);
    p.masters->master(i).copy_(t);
  }
  return absl::OkStatus();
}

void WriteZero(torch::serialize::OutputArchive& archive, const OptimizerStateParts& p) {
  ZeroOptimizer& z = *p.zero;
  archive.write("lightrl.zero1.world_size", torch::tensor(p.world));
  archive.write("lightrl.zero1.rank", torch::tensor(p.rank));
  archive.write("lightrl.zero1.total", torch::tensor(z.total()));
  archive.write("lightrl.zero1.master", z.master());
  archive.write("lightrl.zero1.exp_avg", z.exp_avg());
  archive.write("lightrl.zero1.exp_avg_sq", z.exp_avg_sq());
  archive.write("lightrl.zero1.steps", torch::tensor(z.steps()));
}

absl::Status ReadZero(torch::serialize::InputArchive& archive, const std::string& file,
                      const OptimizerStateParts& p) {
  ZeroOptimizer& z = *p.zero;
  torch::Tensor world, rank, total, steps;
  archive.read("lightrl.zero1.world_size", world);
  archive.read("lightrl.zero1.rank", rank);
  archive.read("lightrl.zero1.total", total);
  if (world.item<int64_t>() != p.world || rank.item<int64_t>() != p.rank || total.item<int64_t>() != z.total()) {
    return absl::FailedPreconditionError(absl::StrCat(
        file, ": a shard of rank ", rank.item<int64_t>(), " of ", world.item<int64_t>(), " over ",
        total.item<int64_t>(), " parameters, but this is rank ", p.rank, " of ", p.world, " over ", z.total()));
  }
  torch::Tensor master, avg, avg_sq;
  archive.read("lightrl.zero1.master", master);
  archive.read("lightrl.zero1.exp_avg", avg);
  archive.read("lightrl.zero1.exp_avg_sq", avg_sq);
  archive.read("lightrl.zero1.steps", steps);
  torch::NoGradGuard no_grad;
  z.master().copy_(master);
  z.exp_avg().copy_(avg);
  z.exp_avg_sq().copy_(avg_sq);
  auto st = steps.to(torch::kInt64).contiguous();
  z.steps().assign(st.data_ptr<int64_t>(), st.data_ptr<int64_t>() + st.numel());
  return absl::OkStatus();
}

}  // namespace

absl::Status SaveOptimizerState(const std::string& whole_path, const OptimizerStateParts& p) {
  const std::string path = TpPath(whole_path, p);
  try {
    torch::serialize::OutputArchive archive;
    archive.write("lightrl.version", torch::tensor(p.clock->version));
    archive.write("lightrl.steps", torch::tensor(p.clock->steps));
    archive.write("lightrl.rl_steps", torch::tensor(p.clock->rl_steps));
    archive.write("lightrl.expert_parallel", torch::tensor(ExpertParallel(p)));
    // Expert shards are named by their EP and expert-TP coordinates alone.
    if (p.experts && p.experts->writes_state()) RETURN_IF_ERROR(SaveExperts(whole_path, p));
    if (p.zero) {
      WriteZero(archive, p);
      RETURN_IF_ERROR(SaveArchive(archive, ShardPath(path, p.rank, p.world)));
    } else if (p.rank == 0) {
      p.adamw->state().save(archive);
      if (p.masters->has_masters()) {
        for (size_t i = 0; i < p.masters->size(); ++i) {
          if ((*p.replicated)[i]) archive.write(MasterKey(i), p.masters->master(i));
        }
      }
      RETURN_IF_ERROR(SaveArchive(archive, path));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(path, ": saving optimizer state: ", e.what_without_backtrace()));
  }
  return AllWritten(p);
}

absl::Status LoadOptimizerState(const std::string& whole_path, const OptimizerStateParts& p) {
  const std::string path = TpPath(whole_path, p);
  const std::string file = p.zero ? ShardPath(path, p.rank, p.world) : path;
  if (!FileExists(file)) {
    const std::string tp = p.tp > 1 ? absl::StrCat(" at tp rank ", p.tp_rank, " of ", p.tp) : "";
    return absl::FailedPreconditionError(absl::StrCat(
        file, " does not exist: this learner", tp, " ",
        p.zero ? absl::StrCat("runs ZeRO-1 over ", p.world, " data-parallel ranks")
               : std::string("runs without ZeRO-1"),
        " and the checkpoint holds ", DescribeSavedState(whole_path),
        "; resume with the layout (parallel.tp, world size) and ZeRO-1 setting it was written with"));
  }
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(file);
    torch::Tensor v, s, r, ep;
    archive.read("lightrl.version", v);
    archive.read("lightrl.steps", s);
    const int64_t saved_ep = archive.try_read("lightrl.expert_parallel", ep) ? ep.item<int64_t>() : 1;
    if (saved_ep != ExpertParallel(p)) {
      return absl::FailedPreconditionError(absl::StrCat(
          file, ": optimizer state written with expert_parallel ", saved_ep,
          ", but this learner runs expert_parallel ", ExpertParallel(p),
          "; resume with the expert_parallel it was written with"));
    }
    if (p.experts) RETURN_IF_ERROR(LoadExperts(whole_path, p));
    if (p.zero) {
      RETURN_IF_ERROR(ReadZero(archive, file, p));
    } else {
      p.adamw->state().load(archive);
      if (p.masters->has_masters()) {
        for (size_t i = 0; i < p.masters->size(); ++i) {
          if (!(*p.replicated)[i]) continue;
          torch::Tensor t;
          archive.read(MasterKey(i), t);
          p.masters->master(i).copy_(t);
        }
      }
    }
    p.clock->version = v.item<int64_t>();
    p.clock->steps = s.item<int64_t>();
    // Checkpoints from before the RL-only schedule clock counted every update.
    p.clock->rl_steps = archive.try_read("lightrl.rl_steps", r) ? r.item<int64_t>() : p.clock->steps;
  } catch (const c10::Error& e) {
    return absl::DataLossError(absl::StrCat(file, ": loading optimizer state: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

}  // namespace lightrl
