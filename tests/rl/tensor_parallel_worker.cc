// One rank of the tensor-parallel tests (tests/python/tensor_parallel_test.py): joins a
// Gloo group of WORLD ranks with layout tp TP (dp = WORLD / TP), and checks this rank's
// shard of TinyParallelConfig against the whole model in this process, in FP32:
//   model:   rank 0 writes the whole random model of SEED as an HF checkpoint under DIR;
//            every rank loads its shard of it (PolicyModel::Load with ShardCoordsOf) and
//            runs forward and backward (with per-layer activation checkpointing) on ragged
//            documents of its DP group; its logprobs, aux loss and every parameter's
//            gradient must equal the whole model's (the gradients sliced with ShardBlock).
//   learner: one TrainRl (CISPO, 2 minibatches, clipped) and one TrainSft update on the
//            same global batch by the TP x DP learner and by a single-process learner on
//            the whole model; every shard must equal the slice of the whole model after,
//            and the parameters the TP group replicates must be bitwise alike on its
//            ranks; TrainRl again with ZeRO-1 over the DP group and activation
//            checkpointing.
//   *_sp:    model and learner again with sequence parallelism (ForwardOptions and
//            LearnerOptions::sequence_parallel): each TP rank runs norms, residuals and
//            the MoE on its block of the tokens (ragged batches pad); the replicated
//            parameters' gradients summed over the TP group equal the whole model's;
//            with token dropping (factor 0.9) where the forwards hold one process's
//            tokens (the model check; the learner's with one DP group, EP or not).
//   errors:  a shard given to a learner without its TP group, or at another TP rank.
// Prints one JSON line per check; exits 1 when a difference exceeds its tolerance.
//
//   EP > 1: the learner checks alone, sequence-parallel, with a layout of ep EP as well:
//            each rank holds and updates only its EP rank's experts.
// Usage: tensor_parallel_worker RANK WORLD TP PORT SEED DIR [EP]
#include <torch/torch.h>

#include <cstdio>
#include <random>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "policy/checkpoint.h"
#include "policy/minimax_model.h"
#include "policy/policy_model.h"
#include "rl/distributed.h"
#include "rl/distributed_internal.h"
#include "rl/learner.h"
#include "rl/parallel_layout.h"
#include "rl/tp_comm.h"
#include "tests/loopback_group.h"
#include "tests/test_models.h"
#include "tests/worker_args.h"

namespace lightrl {
namespace {

// FP32 relative tolerance of logprobs and gradients (against the largest entry of the
// whole model's tensor), and of weights after an update as a fraction of lr (AdamW's
// early steps move each weight by about lr, whatever its gradient's size, so a wrong
// gradient shows as differences near 1; summation-order rounding shows as about 1e-5,
// the weights' own FP32 rounding).
constexpr double kGradTolerance = 2e-5;
// Below 1: some assignments are always dropped.
constexpr double kCapacityFactor = 0.9;
constexpr double kUpdateTolerance = 1e-4;

double MaxAbs(const torch::Tensor& t) { return t.numel() ? t.abs().max().item<double>() : 0; }

// Documents of random lengths and tokens, the same for one `seed` on every rank.
std::vector<int64_t> Lengths(std::mt19937_64& rng) {
  std::vector<int64_t> lengths;
  for (int i = 0; i < 3; ++i) lengths.push_back(3 + static_cast<int64_t>(rng() % 9));
  return lengths;
}

struct Result {
  double worst = 0;   // largest relative difference
  std::string name;   // of the tensor it was found in
  int64_t tensors = 0;
};

void Compare(Result& r, const std::string& name, const torch::Tensor& got, const torch::Tensor& want) {
  TORCH_CHECK(got.sizes() == want.sizes(), name, ": shape ", got.sizes(), " vs ", want.sizes());
  const double rel = MaxAbs(got - want) / std::max(MaxAbs(want), 1e-12);
  ++r.tensors;
  if (rel >= r.worst) r.worst = rel, r.name = name;
}

bool ModelCheck(int64_t rank, ProcessGroup& group, const ShardCoords& coords, int64_t dp_rank,
                uint64_t seed, const std::string& dir, ProcessGroupTpComm& comm, bool sp) {
  const ModelConfig config = TinyParallelConfig();
  auto whole = Value(PolicyModel::Create(config, seed), "whole model");
  const std::string ckpt = JoinPath(dir, "model");
  if (rank == 0 && !sp) Check(whole->Save(ckpt), "saving the whole model");
  Check(group.Barrier(), "barrier");
  auto shard = Value(PolicyModel::Load(ckpt, {}, coords), "loading the shard");

  // Each DP group its own documents.
  std::mt19937_64 rng(seed * 31 + static_cast<uint64_t>(dp_rank));
  const PackedLayout layout = PackedLayout::FromLengths(Lengths(rng));
  std::vector<int64_t> ids;
  for (int64_t t = 0; t < layout.num_tokens(); ++t) ids.push_back(static_cast<int64_t>(rng() % 48));
  ids[0] = 0, ids[1] = 47;  // the first and the last vocabulary block
  const auto tokens = torch::tensor(ids, torch::kInt64);
  const auto targets = torch::roll(tokens, -1);
  torch::manual_seed(seed + static_cast<uint64_t>(dp_rank));
  const auto upstream = torch::randn({layout.num_tokens()});

  auto run = [&](PolicyModel& p, TensorParallelComm* tp) {
    auto& m = p.module();
    m->train();
    ForwardOptions o;
    o.train_lightning = true;
    o.tensor_parallel = tp;
    o.sequence_parallel = sp && tp != nullptr;
    // Sequence parallel: with token dropping, which must drop what one forward drops.
    o.moe_capacity_factor = sp ? kCapacityFactor : 0;
    // The shard checkpoints its layers: their TP collectives run again in backward.
    o.checkpoint_layers = tp != nullptr;
    auto out = m->Forward(tokens, layout, o);
    auto logp = m->TokenLogprobs(out.hidden, targets, /*chunk=*/7, 0.8, tp);  // several chunks
    ((logp * upstream).sum() + 0.5 * out.aux_loss).backward();
    return std::make_pair(logp.detach(), out.aux_loss.detach());
  };
  auto [logp_ref, aux_ref] = run(*whole, nullptr);
  auto [logp, aux] = run(*shard, &comm);
  if (sp) {
    // The factor drops something: the whole model without it gives other logprobs (by
    // ~1e-5 here: the tiny model's MoE output is small beside the residual; a wrong drop
    // shows in the experts' gradients, off by the dropped tokens' whole share).
    torch::NoGradGuard no_grad;
    auto& m = whole->module();
    ForwardOptions o;
    o.train_lightning = true;
    auto undropped = m->TokenLogprobs(m->Forward(tokens, layout, o).hidden, targets, 7, 0.8);
    const double moved = (undropped - logp_ref).abs().max().item<double>();
    Check(moved > 1e-6 ? absl::OkStatus()
                       : absl::InternalError(absl::StrCat(
                             "moe_capacity_factor moved no logprob past 1e-6 (largest ", moved, ")")),
          "token dropping");
  }

  Result outputs, grads;
  Compare(outputs, "logprobs", logp, logp_ref);
  Compare(outputs, "aux_loss", aux, aux_ref);
  const auto full = whole->module()->named_parameters();
  for (auto& p : shard->module()->named_parameters()) {
    auto block = Value(ShardBlock(p.key(), full[p.key()].grad(), config, coords), "slicing");
    torch::Tensor grad = p.value().grad();
    // Sequence parallel: a replicated parameter's gradient is its rank's tokens' part.
    if (sp && Value(ShardOf(p.key(), config, coords), "shard of").whole()) {
      grad = grad.clone();
      comm.AllReduce(grad, TensorParallelComm::Op::kSum);
    }
    Compare(grads, p.key(), grad, block);
  }
  std::printf("{\"check\": \"%s\", \"rank\": %ld, \"tp_rank\": %ld, \"output_diff\": %.3g, "
              "\"output_worst\": \"%s\", \"grad_diff\": %.3g, \"grad_worst\": \"%s\", "
              "\"grads\": %ld, \"tokens\": %ld, \"logp_mean\": %.6f}\n",
              sp ? "model_sp" : "model", static_cast<long>(rank), static_cast<long>(coords.tp_rank), outputs.worst,
              outputs.name.c_str(), grads.worst, grads.name.c_str(), static_cast<long>(grads.tensors),
              static_cast<long>(layout.num_tokens()), logp_ref.mean().item<double>());
  return outputs.worst <= kGradTolerance && grads.worst <= kGradTolerance && grads.tensors > 0;
}

std::vector<TrainSample> RandomBatch(uint64_t seed, int64_t n) {
  std::mt19937_64 rng(seed);
  std::vector<TrainSample> batch(n);
  for (auto& s : batch) {
    const int prompt = 2 + static_cast<int>(rng() % 6), response = 1 + static_cast<int>(rng() % 9);
    for (int i = 0; i < prompt; ++i) s.prompt.push_back(static_cast<int32_t>(rng() % 48));
    for (int i = 0; i < response; ++i) {
      s.response.push_back(static_cast<int32_t>(rng() % 48));
      s.rollout_logprobs.push_back(-1.f - static_cast<float>(rng() % 1000) / 1000.f);
    }
    s.advantage = std::normal_distribution<double>()(rng);
    s.keep = rng() % 8 != 0;
  }
  return batch;
}

bool LearnerCheck(int64_t rank, ProcessGroup& group, const ShardCoords& coords, uint64_t seed,
                  const std::string& mode, bool zero1 = false, bool sp = false) {
  const bool experts_sharded = coords.ep > 1;
  const ModelConfig config = TinyParallelConfig();
  LearnerOptions opts;
  opts.optimizer.lr = 1e-2;
  // Adam's first steps are lr * g / (|g| + eps): an eps above the rounding of tiny
  // gradients keeps it from turning their summation order into whole steps.
  opts.optimizer.eps = 1e-4;
  opts.optimizer.grad_clip = 0.5;
  opts.optimizer.weight_decay = 0.01;
  // Per forward, so it depends on how samples group into forwards; DP groups them otherwise.
  opts.optimizer.aux_loss_coef = 0;
  opts.minibatches = 2;
  opts.temperature = 0.9;
  opts.data_parallel.zero1 = zero1;
  opts.sequence_parallel = sp;
  opts.data_parallel.expert_parallel = coords.ep;
  // Sequence parallel with one DP group (whose forwards hold one process's samples, which
  // token dropping depends on), with or without EP: with token dropping.
  if (sp && group.layout_groups()->dp.size() == 1) {
    opts.optimizer.moe_capacity_factor = kCapacityFactor;
  }
  // The ZeRO-1 run also checkpoints its layers (the learner's key to the model's).
  opts.optimizer.activation_checkpointing = zero1;
  const auto batch = RandomBatch(seed * 7 + 1, 9);

  auto whole = Value(PolicyModel::Create(config, seed), "whole model");
  auto shard = Value(PolicyModel::Create(config, seed, {}, coords), "shard");
  auto before = shard->module()->named_parameters();
  std::vector<torch::Tensor> start;
  for (auto& p : before) start.push_back(p.value().detach().clone());
  LearnerOptions ref_opts = opts;
  ref_opts.sequence_parallel = false;  // one process has no TP group to split over
  ref_opts.data_parallel.expert_parallel = 1;
  auto ref = Value(Learner::Create(whole.get(), ref_opts), "single-process learner");
  auto tp = Value(Learner::Create(shard.get(), opts, &group), "tensor-parallel learner");
  LearnerStats want, got;
  if (mode == "rl") {
    want = Value(ref->TrainRl(batch), "single-process TrainRl");
    got = Value(tp->TrainRl(batch), "tensor-parallel TrainRl");
  } else {
    want = Value(ref->TrainSft(batch), "single-process TrainSft");
    got = Value(tp->TrainSft(batch), "tensor-parallel TrainSft");
  }
  Result weights;
  double moved = 0;
  const auto full = whole->module()->named_parameters();
  size_t i = 0;
  for (auto& p : shard->module()->named_parameters()) {
    auto block = Value(ShardBlock(p.key(), full[p.key()], config, coords), "slicing");
    const double step = MaxAbs(block - start[i++]);
    moved = std::max(moved, step);
    // Relative to the update's size: lr bounds Adam's first step.
    const double rel = MaxAbs(p.value() - block) / opts.optimizer.lr;
    ++weights.tensors;
    if (rel >= weights.worst) weights.worst = rel, weights.name = p.key();
  }
  // The parameters the TP group replicates stay bitwise alike on its ranks: a fingerprint
  // of each, reduced MIN and MAX over the group.
  std::vector<double> lo;
  for (auto& p : shard->module()->named_parameters()) {
    auto part = Value(ShardOf(p.key(), config, coords), "shard of");
    // Experts under expert parallelism belong to their EP rank, not to the TP group.
    if (!part.whole() || (experts_sharded && ExpertIndexOf(p.key()) >= 0)) continue;
    auto v = p.value().detach().to(torch::kFloat64).flatten();
    lo.push_back((v * torch::arange(1, v.numel() + 1, v.options()).remainder(13).add(1)).sum().item<double>());
  }
  std::vector<double> hi = lo;
  Check(group.AllReduce(LayoutGroup::kTp, &lo, ReduceOp::kMin), "fingerprint min");
  Check(group.AllReduce(LayoutGroup::kTp, &hi, ReduceOp::kMax), "fingerprint max");
  const bool replicated_alike = !lo.empty() && lo == hi;
  const double loss_diff = std::abs(got.loss - want.loss) / std::max(std::abs(want.loss), 1e-12);
  const double norm_diff = std::abs(got.grad_norm - want.grad_norm) / std::max(want.grad_norm, 1e-12);
  const std::string check = absl::StrCat("learner_", mode, zero1 ? "_zero1" : "", sp ? "_sp" : "",
                                         experts_sharded ? "_ep" : "");
  std::printf("{\"check\": \"%s\", \"rank\": %ld, \"tp_rank\": %ld, \"weight_diff\": %.3g, "
              "\"weight_worst\": \"%s\", \"moved\": %.3g, \"loss\": %.6f, \"loss_diff\": %.3g, "
              "\"grad_norm\": %.6f, \"grad_norm_diff\": %.3g, \"entropy\": %.6f, \"entropy_ref\": %.6f, "
              "\"updates\": %ld, \"replicated_alike\": %s}\n",
              check.c_str(), static_cast<long>(rank), static_cast<long>(coords.tp_rank), weights.worst,
              weights.name.c_str(), moved, got.loss, loss_diff, got.grad_norm, norm_diff, got.entropy,
              want.entropy, static_cast<long>(got.updates), replicated_alike ? "true" : "false");
  return weights.worst <= kUpdateTolerance && loss_diff <= kGradTolerance &&
         norm_diff <= kGradTolerance && std::abs(got.entropy - want.entropy) <= 1e-5 &&
         got.updates == want.updates && moved > 1e-3 && replicated_alike;
}

// A shard without its TP group, and a shard of another TP rank, are refused before any
// collective, with errors naming both places.
bool ErrorsCheck(int64_t rank, ProcessGroup& group, const ShardCoords& coords, uint64_t seed) {
  const ModelConfig config = TinyParallelConfig();
  auto shard = Value(PolicyModel::Create(config, seed, {}, coords), "shard");
  const auto alone = Learner::Create(shard.get(), LearnerOptions{}, nullptr).status();
  ShardCoords other = coords;
  other.tp_rank = (coords.tp_rank + 1) % coords.tp;
  auto wrong = Value(PolicyModel::Create(config, seed, {}, other), "other shard");
  const auto misplaced = Learner::Create(wrong.get(), LearnerOptions{}, &group).status();
  const bool ok =
      alone.code() == absl::StatusCode::kFailedPrecondition &&
      alone.ToString().find("no process group with a TP layout") != std::string::npos &&
      misplaced.code() == absl::StatusCode::kFailedPrecondition &&
      misplaced.ToString().find(absl::StrCat("puts this rank at tp ", coords.tp_rank, " of ",
                                             coords.tp)) != std::string::npos &&
      misplaced.ToString().find(other.ToString()) != std::string::npos;
  std::printf("{\"check\": \"errors\", \"rank\": %ld, \"ok\": %s}\n", static_cast<long>(rank),
              ok ? "true" : "false");
  if (!ok) std::fprintf(stderr, "%s\n%s\n", alone.ToString().c_str(), misplaced.ToString().c_str());
  return ok;
}

int Run(int64_t rank, int64_t world, int64_t tp, int64_t port, int64_t seed, const std::string& dir,
        int64_t ep) {
  auto group = Value(LoopbackGroup(rank, world, port, /*timeout_s=*/120), "process group");
  ParallelLayout layout;
  layout.tp = tp;
  layout.ep = ep;
  Check(group->JoinLayoutGroups(layout), "layout groups");
  const LayoutGroups& groups = *group->layout_groups();
  const ShardCoords coords = ShardCoordsOf(layout, groups);
  ProcessGroupTpComm comm(group.get());
  const uint64_t s = static_cast<uint64_t>(seed);
  if (ep > 1) {
    // Tensor and expert parallelism together (sequence parallelism required): each rank
    // holds its TP shard of the dense weights and its EP rank's experts.
    bool ok = LearnerCheck(rank, *group, coords, s, "rl", /*zero1=*/false, /*sp=*/true);
    ok = LearnerCheck(rank, *group, coords, s, "sft", /*zero1=*/false, /*sp=*/true) && ok;
    ok = LearnerCheck(rank, *group, coords, s, "rl", /*zero1=*/true, /*sp=*/true) && ok;
    std::fflush(stdout);
    return ok ? 0 : 1;
  }
  bool ok = ModelCheck(rank, *group, coords, groups.dp_rank, s, dir, comm, /*sp=*/false);
  ok = LearnerCheck(rank, *group, coords, s, "rl") && ok;
  ok = LearnerCheck(rank, *group, coords, s, "sft") && ok;
  ok = LearnerCheck(rank, *group, coords, s, "rl", /*zero1=*/true) && ok;
  // Sequence parallelism: the same checks with each TP rank's block of the tokens.
  ok = ModelCheck(rank, *group, coords, groups.dp_rank, s, dir, comm, /*sp=*/true) && ok;
  ok = LearnerCheck(rank, *group, coords, s, "rl", /*zero1=*/false, /*sp=*/true) && ok;
  ok = LearnerCheck(rank, *group, coords, s, "sft", /*zero1=*/false, /*sp=*/true) && ok;
  ok = LearnerCheck(rank, *group, coords, s, "rl", /*zero1=*/true, /*sp=*/true) && ok;
  ok = ErrorsCheck(rank, *group, coords, s) && ok;
  std::fflush(stdout);
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace lightrl

int main(int argc, char** argv) {
  int64_t v[5];
  // An optional EP after DIR: the learner checks under tensor x expert parallelism.
  const int args = argc == 8 ? 7 : argc;
  if (!lightrl::ParseWorkerArgs(args, argv, 7, "RANK WORLD TP PORT SEED DIR [EP]", 5, v)) return 2;
  int64_t ep = 1;
  if (argc == 8 && (!absl::SimpleAtoi(argv[7], &ep) || ep < 1)) {
    std::fprintf(stderr, "EP must be an integer >= 1, got \"%s\"\n", argv[7]);
    return 2;
  }
  try {
    return lightrl::Run(v[0], v[1], v[2], v[3], v[4], argv[6], ep);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %s: %s\n", argv[1], e.what());
    return 2;
  }
}
