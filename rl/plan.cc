#include "rl/plan.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status.h"

namespace lightrl {
namespace {

// --- measured figures (one H200 or H100 here) and the specs that scale them ---

// Our fused lightning decode step, 256 sequences, state bytes read + written over time.
constexpr double kH200DecodeBytesPerS = 3509e9;
constexpr const char* kDecodeSource =
    "bench/lightning/RESULTS.md: lightning decode step at 3509 GB/s on an H200 (83.0% of "
    "measured copy bandwidth, 256 seqs)";
// Vendor specs of the machine the figures were measured on.
constexpr double kH200HbmSpecBytesPerS = 4.8e12;
constexpr double kH200Bf16Tflops = 989;
// Our lightning kernels, 64 heads x 128, 1 x 128K tokens, per layer.
constexpr double kH200LightningTrainS = 12.356e-3;    // forward + backward
constexpr double kH200LightningForwardS = 3.035e-3;   // prefill with final state
constexpr double kLightningBenchTokens = 131072;
constexpr const char* kLightningSource =
    "bench/lightning/RESULTS.md (run 5): ours 1 x 128K, 64 heads x 128, H200: train fwd+bwd "
    "12.36 ms, prefill 3.04 ms per layer";
// torch SDPA flash, causal, 64 heads x 128: forward at T = 131072; forward+backward over
// forward at B*T = 32768.
constexpr double kH200FlashForwardS = 0.496;
constexpr double kFlashSeq = 131072;
constexpr double kFlashBackwardRatio = 111.0 / 29.4;
constexpr const char* kFlashSource =
    "/work/shared/device/README.md: SDPA flash causal 64 x 128, H200: fwd 496 ms at T=131072; "
    "fwd+bwd / fwd = 111 / 29.4 ms at B*T=32768";
// The engine's whole decode step on the 0.5B bench model, 256 sequences, CUDA graphs
// (bench/engine/RESULTS.md, H200): an upper bound on the per-step fixed cost.
constexpr double kMeasuredEngineStepS = 3.326e-3;

constexpr double kGB = 1e9;

absl::Status Invalid(absl::string_view message) {
  return absl::InvalidArgumentError(message);
}

int64_t Gcd(int64_t a, int64_t b) { return std::gcd(a, b); }
int64_t Lcm(int64_t a, int64_t b) { return a / std::gcd(a, b) * b; }

Figure Fig(std::string name, double value, std::string unit, Basis basis, std::string note) {
  return Figure{std::move(name), value, std::move(unit), basis, std::move(note)};
}

double Sum(const std::vector<Figure>& figures) {
  double s = 0;
  for (const Figure& f : figures) s += f.value;
  return s;
}

// Activation bytes one token leaves per layer for the backward pass, bf16, no parallelism
// (docs/scale.md states the list of tensors).
double LightningActivationBytesPerToken(const ModelConfig& m) {
  const double h = m.hidden_size, i = m.num_attention_heads * m.head_dim;
  // norm input h; qkv before and after silu 3i + 3i; attention output i; its norm i;
  // output gate before sigmoid i; gated product i.
  return 2 * (h + 10 * i);
}
double SoftmaxActivationBytesPerToken(const ModelConfig& m) {
  const double h = m.hidden_size, i = m.num_attention_heads * m.head_dim;
  const double kv = m.num_key_value_heads * m.head_dim;
  // norm input h; q i; k, v 2kv; attention output i; plus the FP32 log-sum-exp per head.
  return 2 * (h + 2 * i + 2 * kv) + 4.0 * m.num_attention_heads;
}
double MoeActivationBytesPerToken(const ModelConfig& m, double capacity) {
  const double h = m.hidden_size, f = m.intermediate_size;
  const double k = m.num_experts_per_tok;
  // norm input h and FP32 router logits; per routed copy: the dispatched input h, w1 and
  // w3 outputs and their product 3f, the expert output h.
  return 2 * h + 4.0 * m.num_local_experts + capacity * k * 2 * (2 * h + 3 * f);
}

int64_t CountLayers(const ModelConfig& m, LayerKind kind) {
  return std::count(m.layer_kinds.begin(), m.layer_kinds.end(), kind);
}

struct Rates {
  double peak_flops;         // bf16, FLOP/s
  double decode_bytes_per_s; // achieved HBM streaming in decode
  double flash_forward_flops;
  double lightning_train_s_per_token_layer;
  double lightning_forward_s_per_token_layer;
};

Rates MakeRates(const ModelConfig& m, const HardwareProfile& hw, std::vector<Figure>& out) {
  Rates r;
  r.peak_flops = hw.bf16_tflops * 1e12;
  const double bw_ratio = hw.hbm_tb_s * 1e12 / kH200HbmSpecBytesPerS;
  const double flop_ratio = hw.bf16_tflops / kH200Bf16Tflops;
  r.decode_bytes_per_s = kH200DecodeBytesPerS * bw_ratio;
  const double bench_flash_flops = 2.0 * kFlashSeq * kFlashSeq * 64 * 128;
  r.flash_forward_flops = bench_flash_flops / kH200FlashForwardS * flop_ratio;
  // Time scales with heads and with the state size d x d per head.
  const double shape = (m.num_attention_heads / 64.0) * (m.head_dim / 128.0) *
                       (m.head_dim / 128.0);
  r.lightning_train_s_per_token_layer =
      kH200LightningTrainS / kLightningBenchTokens * shape / flop_ratio;
  r.lightning_forward_s_per_token_layer =
      kH200LightningForwardS / kLightningBenchTokens * shape / flop_ratio;
  out.push_back(Fig("bf16 peak", hw.bf16_tflops, "TFLOP/s", Basis::kAssumed,
                    absl::StrCat("hardware profile ", hw.profile, ": ", hw.source)));
  out.push_back(Fig("HBM bandwidth", hw.hbm_tb_s, "TB/s", Basis::kAssumed, "hardware profile"));
  out.push_back(Fig("decode streaming bandwidth", r.decode_bytes_per_s / kGB, "GB/s",
                    Basis::kExtrapolated,
                    absl::StrFormat("%s, x %.3f = HBM spec ratio %.2f / 4.8 TB/s (H200 spec)",
                                    kDecodeSource, bw_ratio, hw.hbm_tb_s)));
  out.push_back(Fig("softmax attention (flash) forward", r.flash_forward_flops / 1e12, "TFLOP/s",
                    Basis::kExtrapolated,
                    absl::StrFormat("%s; 2*T^2*H*d FLOPs / time, x %.3f = bf16 peak ratio "
                                    "(H200 989 TFLOP/s, same SMs as H100/H800)",
                                    kFlashSource, flop_ratio)));
  out.push_back(Fig("softmax attention fwd+bwd / fwd time", kFlashBackwardRatio, "x",
                    Basis::kMeasured, kFlashSource));
  out.push_back(Fig("lightning train, per token and layer", r.lightning_train_s_per_token_layer * 1e6,
                    "us", Basis::kExtrapolated,
                    absl::StrFormat("%s; x heads/64 x (d/128)^2 = %.3f, / bf16 peak ratio %.3f",
                                    kLightningSource, shape, flop_ratio)));
  out.push_back(Fig("lightning forward, per token and layer",
                    r.lightning_forward_s_per_token_layer * 1e6, "us", Basis::kExtrapolated,
                    "same source and scaling"));
  return r;
}

// Per-GPU parameter split of one role.
struct Shard {
  double dense = 0;   // attention, embeddings, LM head, norms, router held by this GPU
  double experts = 0; // expert weights held by this GPU
  double total() const { return dense + experts; }
};

Shard LearnerShard(const ParamCounts& p, const PlanLayout& l) {
  Shard s;
  s.dense = static_cast<double>(p.attention() + p.embedding + p.lm_head) / l.learner_tp +
            p.norms + p.router;
  s.experts = static_cast<double>(p.experts) / (l.learner_ep * l.learner_expert_tp);
  return s;
}

Shard RolloutShard(const ParamCounts& p, const PlanLayout& l) {
  Shard s;
  s.dense = static_cast<double>(p.attention() + p.embedding + p.lm_head) / l.rollout_tp +
            p.norms + p.router;
  s.experts = static_cast<double>(p.experts) / l.rollout_ep;
  return s;
}

// Ring all-reduce (or reduce-scatter + all-gather) time for `bytes` per GPU.
double RingAllReduceS(double bytes, int64_t n, double bytes_per_s, double latency_s) {
  if (n <= 1) return 0;
  return 2.0 * (n - 1) / n * bytes / bytes_per_s + 2.0 * (n - 1) * latency_s;
}

// Fills memory and time for a complete layout.
void Evaluate(const ModelConfig& m, const PlanOptions& o, Plan& plan) {
  const HardwareProfile& hw = o.hardware;
  const PlanLayout& l = plan.layout;
  const ParamCounts& p = plan.params;
  const double capacity = hw.memory_gb * kGB;
  const double reserve = o.memory_reserve_gb * kGB;
  const double capacity_factor = o.moe_capacity_factor > 0 ? o.moe_capacity_factor : 1.0;
  const int64_t n_lightning = CountLayers(m, LayerKind::kLightning);
  const int64_t n_softmax = CountLayers(m, LayerKind::kSoftmax);
  const double h = m.hidden_size;
  const double k = m.num_experts_per_tok;
  const double experts = m.num_local_experts;

  // --- learner memory ---
  const Shard ls = LearnerShard(p, l);
  RoleMemory& lm = plan.learner_memory;
  lm = RoleMemory{};
  lm.capacity_bytes = capacity;
  lm.terms.push_back(Fig("weights (bf16)", 2 * ls.total(), "B", Basis::kComputed,
                         absl::StrFormat("2 B x (non-expert / TP %d + experts / (EP %d x "
                                         "expert-TP %d)) = 2 x %.2f B params",
                                         l.learner_tp, l.learner_ep, l.learner_expert_tp,
                                         ls.total() / 1e9)));
  lm.terms.push_back(Fig("gradients (bf16)", 2 * ls.total(), "B", Basis::kComputed,
                         "2 B per local parameter, reduced in buckets"));
  const double opt = 12 * (ls.dense / l.learner_dp + ls.experts / l.learner_expert_dp);
  lm.terms.push_back(Fig("optimizer (FP32 master + Adam m, v; ZeRO-1)", opt, "B",
                         Basis::kComputed,
                         absl::StrFormat("12 B x (non-expert shard / DP %d + expert shard / "
                                         "expert-DP %d)",
                                         l.learner_dp, l.learner_expert_dp)));
  const double tokens_gpu = static_cast<double>(o.micro_batch_tokens) / l.learner_tp;
  const double full_layer_bytes[2] = {
      LightningActivationBytesPerToken(m) + MoeActivationBytesPerToken(m, capacity_factor),
      SoftmaxActivationBytesPerToken(m) + MoeActivationBytesPerToken(m, capacity_factor)};
  const double all_layers =
      n_lightning * full_layer_bytes[0] + n_softmax * full_layer_bytes[1];
  const double no_ckpt = tokens_gpu * all_layers;
  const double ckpt = tokens_gpu * (m.num_hidden_layers * 2 * h +
                                    std::max(full_layer_bytes[0], full_layer_bytes[1]));
  plan.learner_activations_no_checkpointing_bytes = no_ckpt;
  if (o.activation_checkpointing) {
    lm.terms.push_back(Fig(absl::StrCat("activations, ", o.micro_batch_tokens,
                                        "-token micro-batch, checkpointed"),
                           ckpt, "B", Basis::kComputed,
                           "T/TP x (layers x 2h B of layer inputs + one layer's full set, "
                           "recomputed); docs/scale.md lists the tensors"));
  } else {
    lm.terms.push_back(Fig(absl::StrCat("activations, ", o.micro_batch_tokens,
                                        "-token micro-batch, no checkpointing"),
                           no_ckpt, "B", Basis::kComputed,
                           "T/TP x sum over layers of the per-token tensors in docs/scale.md"));
  }
  const double vocab_local = static_cast<double>(m.vocab_size) / l.learner_tp;
  lm.terms.push_back(Fig("FP32 logits + their gradient, one chunk",
                         std::min<double>(o.logits_chunk_tokens, o.micro_batch_tokens) *
                             vocab_local * 4 * 2,
                         "B", Basis::kComputed,
                         absl::StrCat(o.logits_chunk_tokens,
                                      " tokens x vocab / TP x 4 B x 2 (LM head in chunks)")));
  lm.terms.push_back(Fig("reserve (context, NCCL, allocator)", reserve, "B", Basis::kAssumed,
                         "plan.memory_reserve_gb"));
  lm.total_bytes = Sum(lm.terms);

  // --- rollout memory ---
  const Shard rs = RolloutShard(p, l);
  const double state_gpu =
      static_cast<double>(LightningStateBytesPerSequence(m)) / l.rollout_tp;
  const double kv_gpu_token = static_cast<double>(KvBytesPerToken(m)) / l.rollout_tp;
  const double context = o.prompt_tokens + o.max_new_tokens;
  const double seqs_rank =
      std::ceil(static_cast<double>(o.max_num_seqs) / l.rollout_attention_dp);
  RoleMemory& rm = plan.rollout_memory;
  rm = RoleMemory{};
  rm.capacity_bytes = capacity;
  rm.terms.push_back(Fig("weights (bf16)", 2 * rs.total(), "B", Basis::kComputed,
                         absl::StrFormat("2 B x (non-expert / TP %d + experts / EP %d)",
                                         l.rollout_tp, l.rollout_ep)));
  rm.terms.push_back(Fig(absl::StrFormat("lightning states, %.0f seqs", seqs_rank),
                         seqs_rank * state_gpu, "B", Basis::kComputed,
                         absl::StrFormat("seqs x %d layers x %d heads / TP x %d x %d x 4 B "
                                         "(constant in length)",
                                         n_lightning, m.num_attention_heads, m.head_dim,
                                         m.head_dim)));
  rm.terms.push_back(Fig(absl::StrFormat("softmax KV, %.0f seqs x %.0f tokens", seqs_rank,
                                         context),
                         seqs_rank * context * kv_gpu_token, "B", Basis::kComputed,
                         absl::StrFormat("seqs x tokens x %d layers x %d KV heads / TP x %d "
                                         "x 2 x 2 B",
                                         n_softmax, m.num_key_value_heads, m.head_dim)));
  rm.terms.push_back(Fig("reserve (context, NCCL, activations)", reserve, "B",
                         Basis::kAssumed, "plan.memory_reserve_gb"));
  rm.total_bytes = Sum(rm.terms);
  const double per_seq = state_gpu + context * kv_gpu_token;
  const double room = capacity - 2 * rs.total() - reserve;
  plan.rollout_max_seqs_that_fit =
      room > 0 ? static_cast<int64_t>(std::floor(room / per_seq)) * l.rollout_attention_dp : 0;

  // --- rates ---
  plan.rates.clear();
  const Rates rate = MakeRates(m, hw, plan.rates);
  plan.rates.push_back(Fig("matmul efficiency (MFU)", o.mfu, "", Basis::kAssumed,
                           "plan.mfu; M1's expert and projection GEMM shapes alone measured "
                           "0.68-0.71 of peak on an H200 (bench/plan/RESULTS.md)"));
  plan.rates.push_back(Fig("collective latency, NVLink / InfiniBand",
                           o.nvlink_latency_us, "us", Basis::kAssumed,
                           absl::StrFormat("plan.nvlink_latency_us; InfiniBand %.0f us "
                                           "(plan.ib_latency_us). Graph-captured small NCCL "
                                           "all-reduce / all-to-all measured 12-19 us between 2 "
                                           "H200s, 40-60 us called eagerly "
                                           "(bench/plan/RESULTS.md)",
                                           o.ib_latency_us)));
  const double ib = hw.ib_bytes_per_s_per_gpu();
  const double nv = hw.nvlink_bytes_per_s();
  const double ib_lat = o.ib_latency_us * 1e-6, nv_lat = o.nvlink_latency_us * 1e-6;

  // --- generation ---
  const double response = o.response_tokens();
  const double seqs_total = static_cast<double>(o.prompts_per_step) * o.group_size;
  const double concurrent = static_cast<double>(l.rollout_instances) * o.max_num_seqs;
  const double touched = 1 - std::pow(1 - k / experts, static_cast<double>(o.max_num_seqs));
  const double ctx_avg = o.prompt_tokens + response / 2;
  const double weight_bytes = 2 * (rs.dense + rs.experts * touched);
  const double state_bytes = seqs_rank * (2 * state_gpu + ctx_avg * kv_gpu_token);
  const double t_mem = (weight_bytes + state_bytes) / rate.decode_bytes_per_s;
  // The TP group holds its node's tokens after the attention all-reduce; each of its GPUs
  // dispatches a 1/TP slice of them to the experts.
  const bool ep_across_nodes = l.rollout_instance_gpus > hw.gpus_per_node;
  const double ep_bw = ep_across_nodes ? ib : nv;
  const double ep_lat = ep_across_nodes ? ib_lat : nv_lat;
  const double t_comm =
      m.num_hidden_layers *
      (RingAllReduceS(seqs_rank * h * 2, l.rollout_tp, nv, 0) + nv_lat +
       2 * (ep_lat + seqs_rank / l.rollout_tp * k * h * 2 / ep_bw));
  const double t_overhead = o.decode_step_overhead_ms * 1e-3;
  const double steps =
      std::max(static_cast<double>(o.max_new_tokens), std::ceil(seqs_total * response / concurrent));
  const double prefill = seqs_total * o.prompt_tokens * 2.0 * p.active_matmul() /
                         (l.rollout_gpus * rate.peak_flops * o.mfu);
  plan.generation.clear();
  plan.generation.push_back(Fig("prefill", prefill, "s", Basis::kExtrapolated,
                                absl::StrFormat("%.0f seqs x %d prompt tokens x 2 x active "
                                                "matmul params / (rollout GPUs x peak x MFU)",
                                                seqs_total, o.prompt_tokens)));
  plan.generation.push_back(Fig("decode: memory traffic", steps * t_mem, "s",
                                Basis::kExtrapolated,
                                absl::StrFormat("%.0f steps x (%.1f GB weights read (%.0f%% of "
                                                "experts touched) + %.1f GB states and KV at "
                                                "mean context %.0f) per GPU / decode bandwidth",
                                                steps, weight_bytes / kGB, touched * 100,
                                                state_bytes / kGB, ctx_avg)));
  plan.generation.push_back(Fig("decode: TP all-reduce + EP all-to-all", steps * t_comm, "s",
                                Basis::kExtrapolated,
                                absl::StrFormat("%.0f steps x %d layers x (TP ring all-reduce + "
                                                "2 all-to-alls over %s), latency + bytes / bandwidth each",
                                                steps, m.num_hidden_layers,
                                                ep_across_nodes ? "InfiniBand" : "NVLink")));
  plan.generation.push_back(Fig("decode: per-step host overhead", steps * t_overhead, "s",
                                Basis::kAssumed,
                                absl::StrFormat("plan.decode_step_overhead_ms (%.1f) x steps: "
                                                "host cost of a CUDA-graph decode step (the "
                                                "whole 0.5B-model step measured 1.84 ms at 64 "
                                                "seqs, 3.33 ms at 256)",
                                                o.decode_step_overhead_ms)));
  plan.generation_s = Sum(plan.generation);
  const double generation_measured_overhead =
      plan.generation_s + steps * (kMeasuredEngineStepS - t_overhead);

  // --- training ---
  const double seq_len = o.prompt_tokens + response;
  const double tokens = seqs_total * seq_len;
  plan.tokens_per_step = static_cast<int64_t>(tokens);
  const double extra_forwards = 1 + (o.activation_checkpointing ? 1 : 0);
  const double matmul_flops = tokens * 2.0 * p.active_matmul() * (3 + extra_forwards);
  const double lg = l.learner_gpus;
  const double t_matmul = matmul_flops / (lg * rate.peak_flops * o.mfu);
  const double flash_fwd_per_seq =
      2.0 * seq_len * seq_len * m.num_attention_heads * m.head_dim * n_softmax /
      rate.flash_forward_flops;
  const double t_softmax =
      seqs_total * flash_fwd_per_seq * (extra_forwards + kFlashBackwardRatio) / lg;
  const double t_lightning =
      tokens * n_lightning *
      (rate.lightning_train_s_per_token_layer +
       extra_forwards * rate.lightning_forward_s_per_token_layer) / lg;
  const double tokens_per_gpu = tokens / lg;
  const bool learner_ep_across = l.learner_ep * l.learner_expert_tp > hw.gpus_per_node;
  const double a2a_count = m.num_hidden_layers * (2 * (extra_forwards + 1) + 2);
  const double a2a_bytes = tokens_per_gpu * k * h * 2 * capacity_factor *
                           (l.learner_ep - 1) / std::max<int64_t>(l.learner_ep, 1);
  const double t_a2a = a2a_count * a2a_bytes / (learner_ep_across ? ib : nv);
  const double t_etp = l.learner_expert_tp > 1
                           ? a2a_count * tokens_per_gpu * k * h * 2 * capacity_factor *
                                 (l.learner_expert_tp - 1) / nv
                           : 0;
  const double t_tp = l.learner_tp > 1 ? m.num_hidden_layers * 2 * (extra_forwards + 2) *
                                             (l.learner_tp - 1) * tokens_per_gpu * h * 2 / nv
                                       : 0;
  const double t_grad =
      o.minibatches * (RingAllReduceS(2 * ls.dense, l.learner_dp, ib, ib_lat) +
                       RingAllReduceS(2 * ls.experts, l.learner_expert_dp, ib, ib_lat));
  plan.training.clear();
  plan.training.push_back(Fig("matmuls", t_matmul, "s", Basis::kExtrapolated,
                              absl::StrFormat("%.3g tokens x 2 x %.2f B active matmul params x "
                                              "%.0f (fwd+bwd 3, old-logprob fwd 1%s) / "
                                              "(%d GPUs x peak x MFU)",
                                              tokens, p.active_matmul() / 1e9,
                                              3 + extra_forwards,
                                              o.activation_checkpointing ? ", recompute 1" : "",
                                              l.learner_gpus)));
  plan.training.push_back(Fig("softmax attention", t_softmax, "s", Basis::kExtrapolated,
                              absl::StrFormat("%.0f seqs x %d layers x 2 T^2 H d / flash rate, "
                                              "x (%.0f fwd + fwd+bwd ratio)",
                                              seqs_total, n_softmax, extra_forwards)));
  plan.training.push_back(Fig("lightning attention", t_lightning, "s", Basis::kExtrapolated,
                              "tokens x lightning layers x (measured train + extra forwards) "
                              "/ GPUs"));
  plan.training.push_back(Fig("expert all-to-all", t_a2a + t_etp, "s", Basis::kExtrapolated,
                              absl::StrFormat("%.0f all-to-alls x tokens/GPU x top-%d x h x 2 B "
                                              "x (EP-1)/EP over %s%s; not overlapped",
                                              a2a_count, m.num_experts_per_tok,
                                              learner_ep_across ? "InfiniBand" : "NVLink",
                                              l.learner_expert_tp > 1 ? " + expert-TP gather" : "")));
  plan.training.push_back(Fig("TP sequence-parallel gathers", t_tp, "s", Basis::kExtrapolated,
                              "all-gather + reduce-scatter per layer and pass over NVLink"));
  plan.training.push_back(Fig("gradient reduce-scatter + all-gather (ZeRO-1)", t_grad, "s",
                              Basis::kExtrapolated,
                              absl::StrFormat("%d updates x ring 2(N-1)/N x bf16 grads / "
                                              "InfiniBand per GPU (DP %d, expert-DP %d)",
                                              o.minibatches, l.learner_dp,
                                              l.learner_expert_dp)));
  plan.training_s = Sum(plan.training);

  // --- weight sync: every rollout GPU receives its bf16 shard by a pipelined broadcast ---
  plan.sync.clear();
  plan.sync.push_back(Fig("weight broadcast learner -> rollout", 2 * rs.total() / ib + ib_lat,
                          "s", Basis::kExtrapolated,
                          absl::StrFormat("%.1f GB per rollout GPU / %.0f GB/s InfiniBand per "
                                          "GPU (pipelined NCCL broadcast)",
                                          2 * rs.total() / kGB, ib / kGB)));
  plan.sync_s = Sum(plan.sync);

  auto combine = [&](double gen) {
    return o.max_staleness == 0 ? gen + plan.sync_s + plan.training_s
                                : std::max(gen, plan.training_s) + plan.sync_s;
  };
  plan.step_s = combine(plan.generation_s);
  plan.step_s_measured_engine_overhead = combine(generation_measured_overhead);
}

absl::StatusOr<PlanLayout> BaseLayout(const ModelConfig& m, const PlanOptions& o,
                                      int64_t gpus) {
  const HardwareProfile& hw = o.hardware;
  const int64_t gpn = hw.gpus_per_node;
  if (gpus <= 0 || gpus % gpn != 0) {
    return Invalid(absl::StrCat("--gpus must be a positive multiple of "
                                "plan.hardware.gpus_per_node (", gpn, "), got ", gpus));
  }
  if (gpus < 2 * gpn) {
    return Invalid(absl::StrCat("--gpus must be at least 2 nodes (", 2 * gpn,
                                " GPUs): one that generates and one that trains, got ", gpus));
  }
  PlanLayout l;
  l.gpus = gpus;
  l.nodes = gpus / gpn;
  const PlanLayoutOptions& lo = o.layout;
  l.learner_tp = lo.learner_tp > 0
                     ? lo.learner_tp
                     : Gcd(Gcd(gpn, m.num_attention_heads),
                           Gcd(m.num_key_value_heads, m.vocab_size));
  l.learner_ep = lo.learner_ep > 0 ? lo.learner_ep : m.num_local_experts;
  l.learner_expert_tp = std::max<int64_t>(lo.learner_expert_tp, 1);
  if (gpn % l.learner_tp != 0 || m.num_attention_heads % l.learner_tp != 0 ||
      m.num_key_value_heads % l.learner_tp != 0 || m.vocab_size % l.learner_tp != 0) {
    return Invalid(absl::StrCat("plan.layout.learner_tp must divide gpus_per_node (", gpn,
                                "), num_attention_heads (", m.num_attention_heads,
                                "), num_key_value_heads (", m.num_key_value_heads,
                                ") and vocab_size (", m.vocab_size, "), got ", l.learner_tp));
  }
  if (m.num_local_experts % l.learner_ep != 0) {
    return Invalid(absl::StrCat("plan.layout.learner_ep must divide num_local_experts (",
                                m.num_local_experts, "), got ", l.learner_ep));
  }
  if (gpn % l.learner_expert_tp != 0 || m.intermediate_size % l.learner_expert_tp != 0) {
    return Invalid(absl::StrCat("plan.layout.learner_expert_tp must divide gpus_per_node (",
                                gpn, ") and intermediate_size (", m.intermediate_size,
                                "), got ", l.learner_expert_tp));
  }
  return l;
}

// Completes `l` with a rollout split; returns an error naming the key when it is invalid.
absl::Status SetRollout(const ModelConfig& m, const PlanOptions& o, int64_t instance,
                        int64_t rollout_gpus, PlanLayout& l) {
  const int64_t gpn = o.hardware.gpus_per_node;
  if (instance <= 0 || instance % gpn != 0) {
    return Invalid(absl::StrCat("plan.layout.rollout_instance_gpus must be a positive multiple "
                                "of plan.hardware.gpus_per_node (", gpn, "), got ", instance));
  }
  if (rollout_gpus <= 0 || rollout_gpus % instance != 0 || rollout_gpus >= l.gpus) {
    return Invalid(absl::StrCat("plan.layout.rollout_gpus must be a positive multiple of the "
                                "rollout instance size (", instance, ") below --gpus (", l.gpus,
                                "), got ", rollout_gpus));
  }
  l.rollout_gpus = rollout_gpus;
  l.rollout_instance_gpus = instance;
  l.rollout_instances = rollout_gpus / instance;
  l.rollout_tp = Gcd(gpn, Gcd(m.num_attention_heads, m.num_key_value_heads));
  l.rollout_attention_dp = instance / l.rollout_tp;
  l.rollout_ep = Gcd(instance, m.num_local_experts);
  l.learner_gpus = l.gpus - rollout_gpus;
  const int64_t unit = Lcm(Lcm(l.learner_tp, l.learner_ep * l.learner_expert_tp), gpn);
  if (l.learner_gpus % unit != 0) {
    return Invalid(absl::StrCat("plan.layout.rollout_gpus leaves ", l.learner_gpus,
                                " learner GPUs, not a multiple of lcm(learner_tp, learner_ep x "
                                "learner_expert_tp, gpus_per_node) = ", unit, "; got ",
                                rollout_gpus));
  }
  l.learner_dp = l.learner_gpus / l.learner_tp;
  l.learner_expert_dp = l.learner_gpus / (l.learner_ep * l.learner_expert_tp);
  return absl::OkStatus();
}

}  // namespace

// --- hardware ---

absl::StatusOr<HardwareProfile> HardwareProfile::BuiltIn(const std::string& name) {
  HardwareProfile hw;
  hw.profile = name;
  if (name == "h800") {
    hw.source =
        "NVIDIA H800 SXM5: the H100 SXM's SMs (989 TFLOP/s dense bf16), 80 GB HBM3 at 3.35 TB/s, "
        "NVLink cut to 400 GB/s; 8 GPUs and typically 8 x 400 Gb/s InfiniBand per node";
  } else if (name == "h100") {
    hw.nvlink_gb_s = 900;
    hw.source = "NVIDIA H100 SXM5 datasheet: 989 TFLOP/s dense bf16, 80 GB HBM3 at 3.35 TB/s, "
                "NVLink 900 GB/s; 8 x 400 Gb/s InfiniBand per node";
  } else if (name == "h200") {
    hw.memory_gb = 141;
    hw.hbm_tb_s = 4.8;
    hw.nvlink_gb_s = 900;
    hw.source = "NVIDIA H200 SXM datasheet: 989 TFLOP/s dense bf16, 141 GB HBM3e at 4.8 TB/s, "
                "NVLink 900 GB/s; 8 x 400 Gb/s InfiniBand per node";
  } else {
    return Invalid(absl::StrCat("plan.hardware.profile must be h800, h100 or h200, got \"",
                                name, "\""));
  }
  return hw;
}

absl::Status HardwareProfile::Validate() const {
  auto positive = [](absl::string_view key, double v) -> absl::Status {
    if (std::isfinite(v) && v > 0) return absl::OkStatus();
    return Invalid(absl::StrCat("plan.hardware.", key, " must be > 0, got ", v));
  };
  RETURN_IF_ERROR(positive("memory_gb", memory_gb));
  RETURN_IF_ERROR(positive("bf16_tflops", bf16_tflops));
  RETURN_IF_ERROR(positive("hbm_tb_s", hbm_tb_s));
  RETURN_IF_ERROR(positive("nvlink_gb_s", nvlink_gb_s));
  RETURN_IF_ERROR(positive("gpus_per_node", static_cast<double>(gpus_per_node)));
  return positive("ib_gb_s_per_node", ib_gb_s_per_node);
}

absl::Status PlanOptions::Validate() const {
  RETURN_IF_ERROR(hardware.Validate());
  auto at_least = [](absl::string_view key, int64_t v, int64_t min) -> absl::Status {
    if (v >= min) return absl::OkStatus();
    return Invalid(absl::StrCat(key, " must be >= ", min, ", got ", v));
  };
  RETURN_IF_ERROR(at_least("plan.layout.rollout_gpus", layout.rollout_gpus, 0));
  RETURN_IF_ERROR(at_least("plan.layout.rollout_instance_gpus", layout.rollout_instance_gpus, 0));
  RETURN_IF_ERROR(at_least("plan.layout.learner_tp", layout.learner_tp, 0));
  RETURN_IF_ERROR(at_least("plan.layout.learner_ep", layout.learner_ep, 0));
  RETURN_IF_ERROR(at_least("plan.layout.learner_expert_tp", layout.learner_expert_tp, 0));
  RETURN_IF_ERROR(at_least("rollout.prompts_per_step", prompts_per_step, 1));
  RETURN_IF_ERROR(at_least("rollout.group_size", group_size, 1));
  RETURN_IF_ERROR(at_least("rollout.max_new_tokens", max_new_tokens, 1));
  RETURN_IF_ERROR(at_least("rollout.max_num_seqs", max_num_seqs, 1));
  RETURN_IF_ERROR(at_least("algorithm.minibatches", minibatches, 1));
  RETURN_IF_ERROR(at_least("rollout.max_staleness", max_staleness, 0));
  RETURN_IF_ERROR(at_least("plan.prompt_tokens", prompt_tokens, 1));
  RETURN_IF_ERROR(at_least("plan.mean_response_tokens", mean_response_tokens, 0));
  if (mean_response_tokens > max_new_tokens) {
    return Invalid(absl::StrCat("plan.mean_response_tokens must be <= rollout.max_new_tokens (",
                                max_new_tokens, "), got ", mean_response_tokens));
  }
  RETURN_IF_ERROR(at_least("plan.micro_batch_tokens", micro_batch_tokens, 1));
  RETURN_IF_ERROR(at_least("plan.logits_chunk_tokens", logits_chunk_tokens, 1));
  if (!(mfu > 0 && mfu <= 1)) {
    return Invalid(absl::StrCat("plan.mfu must be in (0, 1], got ", mfu));
  }
  auto non_negative = [](absl::string_view key, double v) -> absl::Status {
    if (std::isfinite(v) && v >= 0) return absl::OkStatus();
    return Invalid(absl::StrCat(key, " must be >= 0, got ", v));
  };
  RETURN_IF_ERROR(non_negative("plan.memory_reserve_gb", memory_reserve_gb));
  RETURN_IF_ERROR(non_negative("plan.decode_step_overhead_ms", decode_step_overhead_ms));
  RETURN_IF_ERROR(non_negative("plan.nvlink_latency_us", nvlink_latency_us));
  RETURN_IF_ERROR(non_negative("plan.ib_latency_us", ib_latency_us));
  return non_negative("optimizer.moe_capacity_factor", moe_capacity_factor);
}

// --- parameters ---

int64_t ParamCounts::total() const {
  return embedding + lm_head + attention() + norms + router + experts;
}
int64_t ParamCounts::active() const {
  return embedding + lm_head + attention() + norms + router + expert_active;
}
int64_t ParamCounts::active_non_embedding() const { return active() - embedding - lm_head; }
int64_t ParamCounts::active_matmul() const { return active() - embedding - norms; }

ParamCounts CountParameters(const ModelConfig& m) {
  ParamCounts p;
  const int64_t h = m.hidden_size;
  const int64_t inner = m.num_attention_heads * m.head_dim;
  const int64_t kv = m.num_key_value_heads * m.head_dim;
  const int64_t expert = 3 * h * m.intermediate_size;  // w1, w3: h -> f; w2: f -> h
  p.embedding = m.vocab_size * h;
  p.lm_head = m.tie_word_embeddings ? 0 : m.vocab_size * h;
  p.norms = h;  // final norm
  for (LayerKind kind : m.layer_kinds) {
    if (kind == LayerKind::kLightning) {
      // qkv h -> 3 inner, output gate h -> inner, out proj inner -> h, norm over inner.
      p.lightning_attention += 3 * h * inner + h * inner + inner * h + inner;
    } else {
      // q h -> inner, k and v h -> kv, o inner -> h.
      p.softmax_attention += h * inner + 2 * h * kv + inner * h;
    }
    p.norms += 2 * h;
    p.router += h * m.num_local_experts;
    p.experts += m.num_local_experts * expert;
    p.expert_active += m.num_experts_per_tok * expert;
  }
  return p;
}

int64_t LightningStateBytesPerSequence(const ModelConfig& m) {
  return CountLayers(m, LayerKind::kLightning) * m.num_attention_heads * m.head_dim *
         m.head_dim * 4;
}

int64_t KvBytesPerToken(const ModelConfig& m) {
  return CountLayers(m, LayerKind::kSoftmax) * m.num_key_value_heads * m.head_dim * 2 * 2;
}

const char* BasisName(Basis basis) {
  switch (basis) {
    case Basis::kComputed: return "computed";
    case Basis::kMeasured: return "measured";
    case Basis::kExtrapolated: return "extrapolated";
    case Basis::kAssumed: return "assumed";
  }
  return "?";
}

// --- the plan ---

absl::StatusOr<Plan> MakePlan(const ModelConfig& model, const PlanOptions& options,
                              int64_t gpus) {
  RETURN_IF_ERROR(options.Validate());
  ASSIGN_OR_RETURN(PlanLayout base, BaseLayout(model, options, gpus));
  const int64_t gpn = options.hardware.gpus_per_node;
  Plan proto;
  proto.hardware = options.hardware;
  proto.params = CountParameters(model);

  std::vector<int64_t> instances;
  if (options.layout.rollout_instance_gpus > 0) {
    instances.push_back(options.layout.rollout_instance_gpus);
  } else {
    for (int64_t r = gpn; r < gpus && r <= 16 * gpn; r *= 2) instances.push_back(r);
  }
  std::vector<int64_t> expert_tps;
  if (options.layout.learner_expert_tp > 0) {
    expert_tps.push_back(options.layout.learner_expert_tp);
  } else {
    for (int64_t e = 1; e <= gpn; e *= 2) {
      if (gpn % e == 0 && model.intermediate_size % e == 0) expert_tps.push_back(e);
    }
  }
  std::vector<std::string> searched;
  if (options.layout.rollout_gpus == 0) searched.push_back("rollout_gpus");
  if (options.layout.rollout_instance_gpus == 0) searched.push_back("rollout_instance_gpus");
  if (options.layout.learner_expert_tp == 0) searched.push_back("learner_expert_tp");
  const std::string chosen_by =
      searched.empty() ? "as given in plan.layout"
                       : absl::StrCat("searched ", absl::StrJoin(searched, ", "),
                                      ": the shortest step among layouts that fit");
  std::vector<Plan> candidates;
  absl::Status last_error = absl::OkStatus();
  // Every combination of the searched sizes (one value each for those given).
  for (int64_t expert_tp : expert_tps) {
    for (int64_t instance : instances) {
      std::vector<int64_t> splits;
      if (options.layout.rollout_gpus > 0) {
        splits.push_back(options.layout.rollout_gpus);
      } else {
        for (int64_t r = instance; r < gpus; r += instance) splits.push_back(r);
      }
      for (int64_t rollout_gpus : splits) {
        Plan plan = proto;
        plan.layout = base;
        plan.layout.learner_expert_tp = expert_tp;
        absl::Status s = SetRollout(model, options, instance, rollout_gpus, plan.layout);
        if (!s.ok()) {
          last_error = s;
          continue;
        }
        plan.layout.chosen_by = chosen_by;
        Evaluate(model, options, plan);
        candidates.push_back(std::move(plan));
      }
    }
  }
  if (candidates.empty()) {
    if (options.layout.rollout_gpus > 0) return last_error;
    const int64_t unit =
        Lcm(Lcm(base.learner_tp, base.learner_ep * expert_tps.front()), gpn);
    return Invalid(absl::StrCat("--gpus ", gpus, " has no rollout/learner split: the learner "
                                "needs a multiple of ", unit, " GPUs (lcm of learner_tp, "
                                "learner_ep x learner_expert_tp, gpus_per_node) and the "
                                "rollout at least one instance; last try: ",
                                last_error.message()));
  }
  // The shortest step among layouts that fit, else the shortest step at all.
  auto better = [](const Plan& a, const Plan& b) {
    if (a.fits() != b.fits()) return a.fits();
    return a.step_s < b.step_s;
  };
  Plan best = *std::min_element(candidates.begin(), candidates.end(), better);
  if (!best.learner_memory.fits()) {
    best.warnings.push_back(absl::StrFormat(
        "learner memory %.1f GB exceeds %.0f GB per GPU", best.learner_memory.total_bytes / kGB,
        best.hardware.memory_gb));
  }
  if (!best.rollout_memory.fits()) {
    best.warnings.push_back(absl::StrFormat(
        "rollout memory %.1f GB exceeds %.0f GB per GPU (rollout.max_num_seqs %d per instance; "
        "%d fit)",
        best.rollout_memory.total_bytes / kGB, best.hardware.memory_gb, options.max_num_seqs,
        best.rollout_max_seqs_that_fit));
  }
  const int64_t sequence = options.prompt_tokens + options.response_tokens();
  if (options.micro_batch_tokens < sequence) {
    best.warnings.push_back(absl::StrFormat(
        "plan.micro_batch_tokens (%d) is shorter than a mean sequence (plan.prompt_tokens + "
        "response = %d): the learner's activations are planned for a shorter micro-batch "
        "than one sequence needs",
        options.micro_batch_tokens, sequence));
  }
  if (!options.activation_checkpointing && !best.learner_memory.fits()) {
    best.warnings.push_back("activations without checkpointing dominate: set "
                            "plan.activation_checkpointing: true");
  }
  if (!searched.empty() && !best.fits()) {
    absl::StrAppend(&best.layout.chosen_by, "; none fits, the shortest step shown");
  }
  return best;
}

// --- loading ---

namespace {

ConfigField<HardwareProfile> ProfileField() {
  ConfigField<HardwareProfile> f =
      Field<HardwareProfile>("profile", &HardwareProfile::profile, "built-in profile: h800, h100 or h200");
  f.bind = [](const Json* v, const std::string& path, const ConfigSource& s,
              HardwareProfile& hw) {
    std::string name = "h800";
    if (v != nullptr) RETURN_IF_ERROR(config_table_internal::Read(*v, path, s, &name));
    absl::StatusOr<HardwareProfile> built_in = HardwareProfile::BuiltIn(name);
    if (!built_in.ok()) return s.ErrorAt(path, built_in.status().message());
    hw = *std::move(built_in);
    return absl::OkStatus();
  };
  return f;
}

}  // namespace

const ConfigTable<HardwareProfile>& HardwareProfile::Table() {
  using H = HardwareProfile;
  static const ConfigTable<H>* table = new ConfigTable<H>{
      ProfileField(),
      Field<H>("memory_gb", &H::memory_gb, "HBM per GPU, GB"),
      Field<H>("bf16_tflops", &H::bf16_tflops, "dense bf16 peak, TFLOP/s"),
      Field<H>("hbm_tb_s", &H::hbm_tb_s, "HBM bandwidth, TB/s"),
      Field<H>("nvlink_gb_s", &H::nvlink_gb_s, "NVLink per GPU, GB/s"),
      Field<H>("gpus_per_node", &H::gpus_per_node, "GPUs per node"),
      Field<H>("ib_gb_s_per_node", &H::ib_gb_s_per_node, "network per node, GB/s"),
  };
  return *table;
}

const ConfigTable<PlanLayoutOptions>& PlanLayoutOptions::Table() {
  using L = PlanLayoutOptions;
  static const ConfigTable<L>* table = new ConfigTable<L>{
      Field<L>("rollout_gpus", &L::rollout_gpus, "GPUs that generate; 0 = searched"),
      Field<L>("rollout_instance_gpus", &L::rollout_instance_gpus,
               "GPUs per copy of the weights for generation; 0 = searched"),
      Field<L>("learner_tp", &L::learner_tp, "learner tensor parallel; 0 = largest fitting"),
      Field<L>("learner_ep", &L::learner_ep, "learner expert parallel; 0 = the expert count"),
      Field<L>("learner_expert_tp", &L::learner_expert_tp, "each expert's FFN split"),
  };
  return *table;
}

const ConfigTable<PlanOptions>& PlanOptions::Table() {
  using P = PlanOptions;
  static const ConfigTable<P>* table = new ConfigTable<P>{
      Nested<P>("hardware", &P::hardware, "GPU profile and overrides"),
      Nested<P>("layout", &P::layout, "layout sizes; 0 = the plan chooses"),
      Field<P>("prompt_tokens", &P::prompt_tokens, "mean prompt length"),
      Field<P>("mean_response_tokens", &P::mean_response_tokens,
               "mean response length; 0 = rollout.max_new_tokens"),
      Field<P>("micro_batch_tokens", &P::micro_batch_tokens, "tokens per training micro-batch"),
      Field<P>("activation_checkpointing", &P::activation_checkpointing,
               "full per-layer activation checkpointing"),
      Field<P>("mfu", &P::mfu, "fraction of bf16 peak the learner reaches"),
      Field<P>("memory_reserve_gb", &P::memory_reserve_gb, "per-GPU reserve, GB"),
      Field<P>("decode_step_overhead_ms", &P::decode_step_overhead_ms,
               "host cost of one decode step, ms"),
      Field<P>("logits_chunk_tokens", &P::logits_chunk_tokens, "tokens per LM-head chunk"),
      Field<P>("nvlink_latency_us", &P::nvlink_latency_us, "small collective in a node, us"),
      Field<P>("ib_latency_us", &P::ib_latency_us, "small collective across nodes, us"),
  };
  return *table;
}

std::vector<std::string> PlanConfigKeys() { return TableKeys(PlanOptions::Table(), "plan."); }

absl::Status LocateInConfig(const YamlDocument& doc, const absl::Status& status) {
  if (status.ok()) return status;
  const std::string message(status.message());
  const std::string key = message.substr(0, message.find_first_of(" :"));
  if (key.find('.') == std::string::npos || doc.LineOf(key) == 0) return status;
  return absl::Status(status.code(), absl::StrCat(doc.Where(key), ": ", message));
}

namespace {

// Whether the config gives `section`.`key` (a non-null value).
bool Given(const Json& root, const char* section, const char* key) {
  const Json* s = root.find(section);
  if (s == nullptr || !s->is_object()) return false;
  const Json* v = s->find(key);
  return v != nullptr && !v->is_null();
}

bool GivenInPlanLayout(const Json& root, const char* key) {
  const Json* plan = root.find("plan");
  return plan != nullptr && plan->is_object() && Given(*plan, "layout", key);
}

// The run config's `parallel:` keys, where given, are the learner's layout; the same
// size in plan.layout too must agree. The model's shapes are checked against them with
// errors that name parallel.*.
absl::Status TakeRunLayout(const YamlDocument& doc, const ParallelLayout& run,
                           const ModelConfig& model, const ConfigSource& source,
                           PlanLayoutOptions& layout) {
  struct Key {
    const char* parallel;
    const char* plan;
    bool given;
    int64_t value;
    int64_t* field;
  };
  const Json& root = doc.root;
  const Key keys[] = {
      {"tp", "learner_tp", Given(root, "parallel", "tp"), run.tp, &layout.learner_tp},
      {"ep", "learner_ep",
       Given(root, "parallel", "ep") || Given(root, "distributed", "expert_parallel"), run.ep,
       &layout.learner_ep},
      {"expert_tp", "learner_expert_tp", Given(root, "parallel", "expert_tp"), run.expert_tp,
       &layout.learner_expert_tp},
  };
  ParallelLayout given;
  for (const Key& k : keys) {
    if (!k.given) continue;
    if (GivenInPlanLayout(root, k.plan) && *k.field != k.value) {
      return source.ErrorAt(absl::StrCat("parallel.", k.parallel),
                            absl::StrCat("parallel.", k.parallel, " (", k.value,
                                         ") and plan.layout.", k.plan, " (", *k.field,
                                         ") differ; give the learner's layout once, in "
                                         "parallel:"));
    }
    *k.field = k.value;
  }
  if (Given(root, "parallel", "tp")) given.tp = run.tp;
  if (keys[1].given) given.ep = run.ep;
  if (Given(root, "parallel", "expert_tp")) given.expert_tp = run.expert_tp;
  absl::Status fits = given.Validate();
  if (fits.ok()) fits = given.CheckModel(model);
  else fits = absl::Status(fits.code(), absl::StrCat("parallel.", fits.message()));
  return LocateInConfig(doc, fits);
}

}  // namespace

absl::StatusOr<PlanInput> LoadPlanInput(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    return absl::Status(text.status().code(), absl::StrCat(path, ": cannot read the config: ",
                                                           text.status().message()));
  }
  PlanInput in;
  ASSIGN_OR_RETURN(in.doc, ParseYaml(*text, path));
  // The run config's sections, bound by the run loader; files other than the model's
  // config.json need not exist where the plan is made.
  ASSIGN_OR_RETURN(RunConfig run, BindRunConfig(in.doc, /*strict=*/false));
  ConfigSource source;
  source.doc = &in.doc;

  // The model: model.path/config.json or model.init_config.
  std::string config_json;
  std::string key;
  if (!run.model.path.empty()) {
    config_json = JoinPath(run.model.path, "config.json");
    key = "model.path";
  } else if (!run.model.init_config.empty()) {
    config_json = run.model.init_config;
    key = "model.init_config";
  } else {
    return source.ErrorAt("model", "model.path or model.init_config is required to plan");
  }
  if (!FileExists(config_json)) {
    return source.ErrorAt(key, absl::StrCat(key, ": ", config_json, " does not exist"));
  }
  ASSIGN_OR_RETURN(in.model, ModelConfig::FromFile(config_json));
  in.model_source = config_json;

  // The workload, as the run config has it.
  PlanOptions& o = in.options;
  o.prompts_per_step = run.rollout.prompts_per_step;
  o.group_size = run.rollout.group_size;
  o.max_new_tokens = run.rollout.max_new_tokens;
  o.max_num_seqs = run.rollout.max_num_seqs;
  o.max_staleness = run.rollout.max_staleness;
  o.minibatches = run.algorithm.minibatches;
  o.moe_capacity_factor = run.optimizer.moe_capacity_factor;

  RETURN_IF_ERROR(BindTable(PlanOptions::Table(), in.doc.root.find("plan"), "plan", source, o));
  RETURN_IF_ERROR(TakeRunLayout(in.doc, run.parallel, in.model, source, o.layout));
  absl::StatusOr<HardwareProfile> built_in = HardwareProfile::BuiltIn(o.hardware.profile);
  RETURN_IF_ERROR(built_in.status());
  const HardwareProfile& p = *built_in;
  const HardwareProfile& q = o.hardware;
  std::vector<std::string> overridden;
  if (q.memory_gb != p.memory_gb) overridden.push_back(absl::StrCat("memory_gb ", q.memory_gb));
  if (q.bf16_tflops != p.bf16_tflops) {
    overridden.push_back(absl::StrCat("bf16_tflops ", q.bf16_tflops));
  }
  if (q.hbm_tb_s != p.hbm_tb_s) overridden.push_back(absl::StrCat("hbm_tb_s ", q.hbm_tb_s));
  if (q.nvlink_gb_s != p.nvlink_gb_s) {
    overridden.push_back(absl::StrCat("nvlink_gb_s ", q.nvlink_gb_s));
  }
  if (q.gpus_per_node != p.gpus_per_node) {
    overridden.push_back(absl::StrCat("gpus_per_node ", q.gpus_per_node));
  }
  if (q.ib_gb_s_per_node != p.ib_gb_s_per_node) {
    overridden.push_back(absl::StrCat("ib_gb_s_per_node ", q.ib_gb_s_per_node));
  }
  if (!overridden.empty()) {
    absl::StrAppend(&o.hardware.source, "; overridden in ", path, ": ",
                    absl::StrJoin(overridden, ", "));
  }
  RETURN_IF_ERROR(LocateInConfig(in.doc, o.Validate()));
  return in;
}

// --- output ---

ParallelLayout LearnerParallelLayout(const PlanLayout& l) {
  ParallelLayout p;
  p.tp = l.learner_tp;
  p.dp = l.learner_dp;
  p.ep = l.learner_ep;
  p.expert_tp = l.learner_expert_tp;
  // The plan's activation and communication figures assume it whenever TP splits.
  p.sequence_parallel = l.learner_tp > 1;
  return p;
}

namespace {

Json FigureJson(const Figure& f) {
  Json j = Json::MakeObject();
  j.set("name", Json(f.name));
  j.set("value", Json(f.value));
  j.set("unit", Json(f.unit));
  j.set("basis", Json(BasisName(f.basis)));
  j.set("note", Json(f.note));
  return j;
}

Json FiguresJson(const std::vector<Figure>& figures) {
  Json a = Json::MakeArray();
  for (const Figure& f : figures) a.push_back(FigureJson(f));
  return a;
}

Json MemoryJson(const RoleMemory& m) {
  Json j = Json::MakeObject();
  j.set("terms_bytes", FiguresJson(m.terms));
  j.set("total_gb", Json(m.total_bytes / kGB));
  j.set("capacity_gb", Json(m.capacity_bytes / kGB));
  j.set("fits", Json(m.fits()));
  return j;
}

std::string Gb(double bytes) { return absl::StrFormat("%.1f GB", bytes / kGB); }

std::string Duration(double s) {
  if (s >= 3600) return absl::StrFormat("%.2f h", s / 3600);
  if (s >= 60) return absl::StrFormat("%.1f min", s / 60);
  return absl::StrFormat("%.2f s", s);
}

void Row(std::string& out, const std::string& name, const std::string& value,
         const Figure* f) {
  absl::StrAppend(&out, absl::StrFormat("  %-52s %12s", name, value));
  if (f != nullptr) absl::StrAppend(&out, absl::StrFormat("  [%s] %s", BasisName(f->basis), f->note));
  absl::StrAppend(&out, "\n");
}

}  // namespace

Json PlanToJson(const Plan& p) {
  Json j = Json::MakeObject();
  j.set("model_config", Json(p.model_source));
  Json hw = Json::MakeObject();
  hw.set("profile", Json(p.hardware.profile));
  hw.set("memory_gb", Json(p.hardware.memory_gb));
  hw.set("bf16_tflops", Json(p.hardware.bf16_tflops));
  hw.set("hbm_tb_s", Json(p.hardware.hbm_tb_s));
  hw.set("nvlink_gb_s", Json(p.hardware.nvlink_gb_s));
  hw.set("gpus_per_node", Json(p.hardware.gpus_per_node));
  hw.set("ib_gb_s_per_node", Json(p.hardware.ib_gb_s_per_node));
  hw.set("source", Json(p.hardware.source));
  j.set("hardware", std::move(hw));
  Json params = Json::MakeObject();
  params.set("total", Json(p.params.total()));
  params.set("active_per_token", Json(p.params.active()));
  params.set("active_non_embedding", Json(p.params.active_non_embedding()));
  params.set("active_matmul", Json(p.params.active_matmul()));
  params.set("embedding", Json(p.params.embedding));
  params.set("lm_head", Json(p.params.lm_head));
  params.set("lightning_attention", Json(p.params.lightning_attention));
  params.set("softmax_attention", Json(p.params.softmax_attention));
  params.set("norms", Json(p.params.norms));
  params.set("router", Json(p.params.router));
  params.set("experts", Json(p.params.experts));
  params.set("experts_active", Json(p.params.expert_active));
  j.set("parameters", std::move(params));
  const PlanLayout& l = p.layout;
  Json layout = Json::MakeObject();
  layout.set("gpus", Json(l.gpus));
  layout.set("nodes", Json(l.nodes));
  layout.set("chosen_by", Json(l.chosen_by));
  Json rollout = Json::MakeObject();
  rollout.set("gpus", Json(l.rollout_gpus));
  rollout.set("instance_gpus", Json(l.rollout_instance_gpus));
  rollout.set("instances", Json(l.rollout_instances));
  rollout.set("tp", Json(l.rollout_tp));
  rollout.set("attention_dp", Json(l.rollout_attention_dp));
  rollout.set("ep", Json(l.rollout_ep));
  layout.set("rollout", std::move(rollout));
  Json learner = Json::MakeObject();
  learner.set("gpus", Json(l.learner_gpus));
  learner.set("tp", Json(l.learner_tp));
  learner.set("dp", Json(l.learner_dp));
  learner.set("ep", Json(l.learner_ep));
  learner.set("expert_tp", Json(l.learner_expert_tp));
  learner.set("expert_dp", Json(l.learner_expert_dp));
  learner.set("pipeline", Json(l.pipeline));
  layout.set("learner", std::move(learner));
  // The learner's layout as the run config's `parallel:` section writes it.
  layout.set("parallel", DumpTable(ParallelLayout::Table(), LearnerParallelLayout(l)));
  j.set("layout", std::move(layout));
  Json memory = Json::MakeObject();
  memory.set("learner", MemoryJson(p.learner_memory));
  memory.set("learner_activations_no_checkpointing_gb",
             Json(p.learner_activations_no_checkpointing_bytes / kGB));
  memory.set("rollout", MemoryJson(p.rollout_memory));
  memory.set("rollout_max_seqs_per_instance", Json(p.rollout_max_seqs_that_fit));
  j.set("memory", std::move(memory));
  j.set("rates", FiguresJson(p.rates));
  Json time = Json::MakeObject();
  time.set("generation_s", Json(p.generation_s));
  time.set("training_s", Json(p.training_s));
  time.set("weight_sync_s", Json(p.sync_s));
  time.set("step_s", Json(p.step_s));
  time.set("step_s_with_measured_engine_overhead", Json(p.step_s_measured_engine_overhead));
  time.set("tokens_per_step", Json(p.tokens_per_step));
  time.set("generation", FiguresJson(p.generation));
  time.set("training", FiguresJson(p.training));
  time.set("weight_sync", FiguresJson(p.sync));
  j.set("time", std::move(time));
  j.set("fits", Json(p.fits()));
  Json warnings = Json::MakeArray();
  for (const auto& w : p.warnings) warnings.push_back(Json(w));
  j.set("warnings", std::move(warnings));
  return j;
}

std::string FormatPlan(const Plan& p) {
  std::string out;
  const PlanLayout& l = p.layout;
  const ParamCounts& c = p.params;
  absl::StrAppend(&out, absl::StrFormat("%d x %s (%d nodes of %d), model %s\n", l.gpus,
                                        p.hardware.profile, l.nodes, p.hardware.gpus_per_node,
                                        p.model_source));
  absl::StrAppend(&out, "Figures are [computed] from the config, [measured] on one H100/H200 here "
                        "(source named), [extrapolated] from measurements, or [assumed].\n\n");
  absl::StrAppend(&out, "Parameters [computed from config.json shapes]\n");
  auto b = [](int64_t n) {
    return n >= 1e9 ? absl::StrFormat("%.2f B", n / 1e9) : absl::StrFormat("%.3f M", n / 1e6);
  };
  Row(out, "total", b(c.total()), nullptr);
  Row(out, "active per token, without embedding and LM head", b(c.active_non_embedding()), nullptr);
  Row(out, "active per token, with LM head (FLOPs use this)", b(c.active_matmul()), nullptr);
  Row(out, "experts (all)", b(c.experts), nullptr);
  Row(out, "lightning attention", b(c.lightning_attention), nullptr);
  Row(out, "softmax attention", b(c.softmax_attention), nullptr);
  Row(out, "router", b(c.router), nullptr);
  Row(out, "embedding / LM head", absl::StrCat(b(c.embedding), " / ", b(c.lm_head)), nullptr);

  absl::StrAppend(&out, "\nLayout (", l.chosen_by, ")\n");
  absl::StrAppend(&out, absl::StrFormat(
      "  rollout: %d GPUs = %d instance%s x %d GPUs; per instance attention TP %d x %d "
      "replicas, experts EP %d\n",
      l.rollout_gpus, l.rollout_instances, l.rollout_instances == 1 ? "" : "s",
      l.rollout_instance_gpus, l.rollout_tp,
      l.rollout_attention_dp, l.rollout_ep));
  absl::StrAppend(&out, absl::StrFormat(
      "  learner: %d GPUs; attention/embeddings TP %d x DP %d; experts EP %d x expert-TP %d x "
      "expert-DP %d; ZeRO-1 over each DP group; no pipeline\n",
      l.learner_gpus, l.learner_tp, l.learner_dp, l.learner_ep, l.learner_expert_tp,
      l.learner_expert_dp));
  const ParallelLayout run_layout = LearnerParallelLayout(l);
  absl::StrAppend(&out, absl::StrFormat(
      "  learner as run config keys: parallel: {tp: %d, dp: %d, ep: %d, expert_tp: %d, "
      "sequence_parallel: %s}\n",
      run_layout.tp, run_layout.dp, run_layout.ep, run_layout.expert_tp,
      run_layout.sequence_parallel ? "true" : "false"));
  // A spawned instance is its EP group of rollout_tp-rank TP groups (or one TP group).
  if (l.rollout_ep == 1 || l.rollout_ep % l.rollout_tp == 0) {
    const int64_t per_worker = std::max(l.rollout_tp, l.rollout_ep);
    absl::StrAppend(&out, absl::StrFormat(
        "  rollout as run config keys: fleet: {mode: spawn, rollout_workers: %d, rollout_tp: "
        "%d, rollout_ep: %d}\n",
        l.rollout_gpus / per_worker, l.rollout_tp, l.rollout_ep));
  }

  auto memory = [&](const char* role, const RoleMemory& m) {
    absl::StrAppend(&out, absl::StrFormat("\nMemory per %s GPU: %s of %s %s\n", role,
                                          Gb(m.total_bytes), Gb(m.capacity_bytes),
                                          m.fits() ? "(fits)" : "(DOES NOT FIT)"));
    for (const Figure& f : m.terms) Row(out, f.name, Gb(f.value), &f);
  };
  memory("learner", p.learner_memory);
  Row(out, "(activations without checkpointing, for comparison)",
      Gb(p.learner_activations_no_checkpointing_bytes), nullptr);
  memory("rollout", p.rollout_memory);
  Row(out, "(sequences at full context that fit per instance)",
      absl::StrCat(p.rollout_max_seqs_that_fit), nullptr);

  absl::StrAppend(&out, "\nRates\n");
  for (const Figure& f : p.rates) {
    Row(out, f.name, absl::StrFormat("%.4g %s", f.value, f.unit), &f);
  }
  auto phase = [&](const char* name, double total, const std::vector<Figure>& parts) {
    absl::StrAppend(&out, absl::StrFormat("\n%s: %s\n", name, Duration(total)));
    for (const Figure& f : parts) Row(out, f.name, Duration(f.value), &f);
  };
  phase("Generation", p.generation_s, p.generation);
  phase("Training", p.training_s, p.training);
  phase("Weight sync", p.sync_s, p.sync);
  absl::StrAppend(&out, absl::StrFormat(
      "\nStep: %s (%.3g tokens trained)\n"
      "  with the engine's whole measured 0.5B-model decode step (3.33 ms at 256 seqs, "
      "bench/engine/RESULTS.md) as the per-step overhead instead: %s\n",
      Duration(p.step_s), static_cast<double>(p.tokens_per_step),
      Duration(p.step_s_measured_engine_overhead)));
  for (const auto& w : p.warnings) absl::StrAppend(&out, "WARNING: ", w, "\n");
  return out;
}

}  // namespace lightrl
