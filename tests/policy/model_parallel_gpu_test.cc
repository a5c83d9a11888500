// The model-parallel code paths on one GPU (CUDA, bf16 weights): the vocabulary-parallel
// logprob and the expert-parallel MoE block run by a group of one rank against the
// model's own paths, and sharded checkpoint files written from a CUDA model's tensors and
// read back whole and as shards onto the GPU. Runs on several GPUs are
// tests/python/tensor_parallel_test.py and distributed_test.py's NCCL cases.
#include <gtest/gtest.h>

#include <stdlib.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/checkpoint_manifest.h"
#include "common/file_util.h"
#include "common/safetensors.h"
#include "policy/checkpoint.h"
#include "policy/expert_parallel.h"
#include "policy/minimax_model.h"
#include "policy/policy_model.h"
#include "policy/sharded_checkpoint.h"
#include "policy/vocab_parallel.h"
#include "tests/temp_dir.h"
#include "tests/test_models.h"

namespace lightrl {
namespace {

// The TP group of one rank: its all-reduces leave the tensor as it is.
class OneRankTp final : public TensorParallelComm {
 public:
  int64_t tp_size() const override { return 1; }
  int64_t tp_rank() const override { return 0; }
  void AllReduce(torch::Tensor&, Op) override { ++calls; }
  int calls = 0;
};

// The EP group of one rank: the gather is this rank's row, the all-to-all keeps its rows.
class OneRankEp final : public ExpertParallelComm {
 public:
  int64_t rank() const override { return 0; }
  int64_t world_size() const override { return 1; }
  int64_t ep_size() const override { return 1; }
  torch::Tensor AllGather(const torch::Tensor& local) override {
    ++calls;
    return local.to(torch::kCPU).unsqueeze(0);
  }
  torch::Tensor AllToAll(const torch::Tensor& input, const std::vector<int64_t>& send,
                         const std::vector<int64_t>& recv) override {
    ++calls;
    EXPECT_EQ(send, recv);
    return input.clone();
  }
  int calls = 0;
};

std::unique_ptr<PolicyModel> GpuModel(uint64_t seed) {
  PolicyOptions options;
  options.device = "cuda";
  options.dtype = "bfloat16";
  auto model = PolicyModel::Create(SmallGpuConfig(), seed, options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

class ModelParallelGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    seed_ = std::random_device{}();
    gen_ = at::make_generator<at::CPUGeneratorImpl>(seed_);
  }
  torch::Tensor Randn(std::vector<int64_t> shape) {
    return torch::randn(shape, gen_).to(torch::kCUDA, torch::kBFloat16);
  }
  uint64_t seed_ = 0;
  at::Generator gen_;
};

// The vocabulary-parallel logprob (FP32 log-softmax across ranks) of a TP group of one is
// the model's fused-kernel logprob, forward and backward.
TEST_F(ModelParallelGpuTest, VocabParallelLogprobOfOneRankIsTheModelsOnCuda) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  auto model = GpuModel(seed_);
  ASSERT_NE(model, nullptr);
  auto& m = model->module();
  const int64_t N = 777, H = m->config().hidden_size, V = m->config().vocab_size;
  auto hidden = Randn({N, H}).requires_grad_(true);
  auto targets = torch::randint(V, {N}, gen_).to(torch::kCUDA);
  auto w = m->lm_head->weight;
  w.mutable_grad() = torch::Tensor();
  auto want = m->TokenLogprobs(hidden, targets);
  want.sum().backward();
  auto want_dh = hidden.grad().clone(), want_dw = w.grad().clone();
  hidden.mutable_grad() = torch::Tensor();
  w.mutable_grad() = torch::Tensor();
  OneRankTp tp;
  auto got = VocabParallelTokenLogprobs(hidden, w, targets, 1.0, tp);
  got.sum().backward();
  EXPECT_GT(tp.calls, 0);  // the collective path ran
  EXPECT_EQ(got.scalar_type(), torch::kFloat32);
  EXPECT_LT(MaxAbsDiff(got, want), 1e-4);
  // Gradients in bf16: within a few bf16 ulps of their scale.
  EXPECT_LT(MaxAbsDiff(hidden.grad(), want_dh), 2e-2 * want_dh.abs().max().item<double>());
  EXPECT_LT(MaxAbsDiff(w.grad(), want_dw), 2e-2 * want_dw.abs().max().item<double>());
}

// The expert-parallel block of an EP group of one (dispatch plan, all-to-all both ways,
// the capacity rule) computes what the block's own sparse path does, output, aux loss
// and an expert's gradient, with and without dropping.
TEST_F(ModelParallelGpuTest, ExpertParallelBlockOfOneRankIsTheLocalBlockOnCuda) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  auto model = GpuModel(seed_);
  ASSERT_NE(model, nullptr);
  auto& block = model->module()->model->layers[0]->as<DecoderLayerImpl>()->block_sparse_moe;
  const int64_t T = 1500;  // past the dense path's assignment count: the grouped experts run
  for (double capacity : {0.0, 0.75}) {
    SCOPED_TRACE("capacity " + std::to_string(capacity));
    auto x = Randn({T, model->config().hidden_size}).requires_grad_(true);
    auto& w1 = block->expert(1)->w1->weight;
    w1.mutable_grad() = torch::Tensor();
    auto [want, want_aux] = block->forward(x, capacity);
    (want.to(torch::kFloat32).square().sum() + want_aux).backward();
    auto want_dx = x.grad().clone(), want_dw = w1.grad().clone();
    x.mutable_grad() = torch::Tensor();
    w1.mutable_grad() = torch::Tensor();
    OneRankEp ep;
    auto [got, got_aux] = block->ForwardExpertParallel(x, capacity, ep);
    (got.to(torch::kFloat32).square().sum() + got_aux).backward();
    EXPECT_GT(ep.calls, 0);
    const double scale = want.abs().max().item<double>();
    EXPECT_LT(MaxAbsDiff(got, want), 2e-2 * scale);
    EXPECT_LT(std::abs(got_aux.item<double>() - want_aux.item<double>()),
              1e-4 * std::abs(want_aux.item<double>()) + 1e-6);
    EXPECT_LT(MaxAbsDiff(x.grad(), want_dx), 3e-2 * want_dx.abs().max().item<double>());
    EXPECT_LT(MaxAbsDiff(w1.grad(), want_dw), 3e-2 * want_dw.abs().max().item<double>());
  }
}

// Shard files written from a CUDA model's tensors (every rank of tp 2 x ep 2 x expert_tp 2,
// each its ShardOf blocks, copied to the host) read back onto the GPU: whole, with the
// same logprobs bit for bit, and as a rank's shard, with its blocks bit for bit.
TEST_F(ModelParallelGpuTest, ShardedCheckpointOfCudaTensorsLoadsWholeAndAsShards) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  auto model = GpuModel(seed_);
  ASSERT_NE(model, nullptr);
  const ModelConfig& config = model->config();
  TempDir dir("lightrl_mp_gpu");
  // The whole checkpoint first (config.json and the decay buffers), then its shards.
  ASSERT_TRUE(model->Save(dir.path(), DType::kBF16).ok());
  auto hf = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_TRUE(hf.ok()) << hf.status();
  const ShardLayout layout{2, 2, 2};
  auto params = model->module()->named_parameters();
  for (int64_t t = 0; t < 2; ++t) {
    for (int64_t e = 0; e < 2; ++e) {
      for (int64_t k = 0; k < 2; ++k) {
        const ShardCoords coords{2, t, 2, e, 2, k};
        std::vector<torch::Tensor> keep;
        std::vector<TensorData> local;
        for (const std::string& name : hf->Names()) {
          auto shard = CheckpointShardOf(name, config, coords);
          ASSERT_TRUE(shard.ok()) << shard.status();
          if (!shard->held) continue;
          // The parameters from the GPU; the buffers the whole file has from the host.
          torch::Tensor full;
          if (params.contains(name)) {
            full = params[name].detach().to(torch::kCPU);
          } else {
            const TensorInfo* info = hf->Find(name);
            ASSERT_TRUE(info->dtype == DType::kF32 || info->dtype == DType::kBF16) << name;
            full = torch::from_blob(const_cast<uint8_t*>(info->data), info->shape,
                                    info->dtype == DType::kF32 ? torch::kFloat32 : torch::kBFloat16);
          }
          if (!shard->whole()) {
            const int64_t n = full.size(shard->dim);
            full = full.narrow(shard->dim, shard->begin(n), shard->length(n));
          }
          keep.push_back(full.contiguous());
          const torch::Tensor& b = keep.back();
          local.push_back({name, b.scalar_type() == torch::kBFloat16 ? DType::kBF16 : DType::kF32,
                           b.sizes().vec(), b.data_ptr(), static_cast<size_t>(b.nbytes())});
        }
        ASSERT_TRUE(WriteRankShards(dir.path(), config, coords, local).ok()) << coords.ToString();
      }
    }
  }
  hf = absl::InternalError("closed");  // its files are replaced next
  ASSERT_TRUE(WriteShardedIndex(dir.path(), config, layout).ok());
  ASSERT_TRUE(WriteCheckpointManifest(dir.path()).ok());

  PolicyOptions options;
  options.device = "cuda";
  options.dtype = "bfloat16";
  auto whole = PolicyModel::Load(dir.path(), options);
  ASSERT_TRUE(whole.ok()) << whole.status();
  std::mt19937 rng(static_cast<uint32_t>(seed_));
  std::vector<std::vector<int32_t>> seqs(3);
  for (auto& s : seqs) {
    s.resize(40 + rng() % 60);
    for (auto& tok : s) tok = static_cast<int32_t>(rng() % config.vocab_size);
  }
  auto want = model->TokenLogprobs(seqs);
  auto got = (*whole)->TokenLogprobs(seqs);
  ASSERT_TRUE(want.ok() && got.ok());
  // The same bf16 bytes in, the same numbers out, bit for bit (entry 0 is NaN in both).
  ASSERT_EQ(got->size(), want->size());
  for (size_t i = 0; i < want->size(); ++i) {
    ASSERT_EQ((*got)[i].size(), (*want)[i].size()) << "sequence " << i;
    EXPECT_EQ(std::memcmp((*got)[i].data(), (*want)[i].data(), (*want)[i].size() * sizeof(float)), 0)
        << "sequence " << i;
  }

  const ShardCoords rank{2, 1, 1, 0, 1, 0};  // a TP rank of a TP-only layout
  auto shard = PolicyModel::Load(dir.path(), options, rank);
  ASSERT_TRUE(shard.ok()) << shard.status();
  for (auto& p : (*shard)->module()->named_parameters()) {
    auto block = ShardBlock(p.key(), params[p.key()], config, rank);
    ASSERT_TRUE(block.ok()) << block.status();
    EXPECT_TRUE(p.value().is_cuda()) << p.key();
    EXPECT_TRUE(torch::equal(p.value(), *block)) << p.key();
  }
}

}  // namespace
}  // namespace lightrl
