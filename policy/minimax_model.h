// The MiniMax hybrid MoE causal LM as LibTorch modules, registered under transformers'
// checkpoint names. Internal to torch-linking targets (policy, engine backends, learner);
// everything else goes through the torch-free PolicyModel of policy/policy_model.h.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

#include "policy/model_config.h"
#include "policy/shard_spec.h"

namespace lightrl {

class ExpertParallelComm;
class TensorParallelComm;

// Document boundaries of a packed batch: tokens [cu[i], cu[i+1]) form document i. Every
// layer resets at a boundary: the lightning state starts from zero and softmax attention
// never looks across.
struct PackedLayout {
  std::vector<int64_t> cu_seqlens;
  // Trailing tokens, a document of their own, that only pad the batch (sequence
  // parallelism pads it to a multiple of the TP size): the MoE leaves them out of its
  // statistics and the forward drops their rows.
  int64_t padding = 0;
  int64_t num_docs() const { return static_cast<int64_t>(cu_seqlens.size()) - 1; }
  int64_t num_tokens() const { return cu_seqlens.empty() ? 0 : cu_seqlens.back(); }
  int64_t max_len() const;
  static PackedLayout FromLengths(const std::vector<int64_t>& lengths);
};

// Options of one forward pass.
struct ForwardOptions {
  // Lightning attention through the training op (hand-written backward) instead of the
  // autograd-traced chunked form; same values.
  bool train_lightning = false;
  // MoE capacity factor for token dropping (MiniMax-01 training); <= 0 disables dropping.
  double moe_capacity_factor = 0;
  // Expert parallel (not owned): each MoE block runs only this rank's experts, on the
  // tokens every rank routes to them, and counts capacity and the aux loss over all
  // ranks (policy/expert_parallel.h). Every rank must then run the same number of
  // forwards and backwards, in the same order, empty ones included. Null: all local.
  ExpertParallelComm* expert_parallel = nullptr;
  // Tensor parallel (not owned): the TP group of a model built for ShardCoords with
  // tp > 1, whose forward and backward are then collectives of that group (every member
  // runs the same forwards on the same tokens). Must be set exactly when the model is
  // sharded over TP; its size and rank must be the model's.
  TensorParallelComm* tensor_parallel = nullptr;
  // Sequence parallelism (Megatron's, with tensor_parallel): between the attention blocks
  // each TP rank holds a block of the tokens (the batch padded to a multiple of the TP
  // size), so norms, residuals and the MoE run on 1/tp of them; all-gather before the
  // column-parallel projections, reduce-scatter after the row-parallel ones. The replicated
  // parameters' (norms, router, replicated experts) gradients are then partial on each
  // rank: the caller sums them over the TP group (the learner does). The aux loss is
  // counted over the whole batch, as without, and so is the capacity of token dropping.
  // With expert_parallel too, each rank dispatches its own block of the tokens to the
  // experts (the tokens of a TP group are no longer repeated on its ranks), padding left
  // out; the aux loss and the capacity are then expert parallelism's (all ranks' tokens in
  // rank order).
  bool sequence_parallel = false;
  // Activation checkpointing per decoder layer: when the forward records gradients, each
  // layer keeps only its input and runs its forward again in backward (its collectives
  // too, in the same order on every rank), trading one more forward for the layers'
  // activations. Same values and gradients.
  bool checkpoint_layers = false;
  // numerics.batch_invariant: the blocks of policy/invariant_model.h, whose every token's
  // values do not depend on the batch, the same bits as the engine's in that mode (CPU).
  bool batch_invariant = false;
};

struct ForwardOutput {
  torch::Tensor hidden;    // [T, hidden] after the final norm
  torch::Tensor aux_loss;  // scalar: the router load-balancing loss summed over layers
};

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// Under tensor parallelism (shard.tp > 1) each attention module holds its rank's heads
// (policy/shard_spec.h): num_heads (and num_kv_heads) count those, and the output
// projection is this rank's block of input columns, its output a partial sum that the
// forward all-reduces over the TP group.
class LightningAttentionImpl : public torch::nn::Module {
 public:
  LightningAttentionImpl(const ModelConfig& config, int64_t layer, const ShardCoords& shard = {});
  // x [T, hidden] packed by `layout`.
  torch::Tensor forward(const torch::Tensor& x, const PackedLayout& layout,
                        const ForwardOptions& options);
  // The fused projection split into per-head q, k, v [T, H, d] after SiLU.
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> Project(const torch::Tensor& x);
  // Norm, gate and output projection of attention output o [T, H * d]; with `tp` (this
  // rank's heads) the norm's statistics and the projection's sum run over the TP group.
  torch::Tensor Finish(const torch::Tensor& x, const torch::Tensor& o,
                       TensorParallelComm* tp = nullptr, bool sequence_parallel = false);

  torch::nn::Linear qkv_proj{nullptr}, out_proj{nullptr}, output_gate{nullptr};
  RMSNorm norm{nullptr};
  // [num_heads] FP32, this rank's heads' slopes (head i is the model's head
  // tp_rank * num_heads + i); a buffer, not a parameter.
  torch::Tensor slope;
  int64_t num_heads, head_dim, block_size;
  int64_t tp = 1;  // the TP group's size the module was built for
};
TORCH_MODULE(LightningAttention);

class SoftmaxAttentionImpl : public torch::nn::Module {
 public:
  explicit SoftmaxAttentionImpl(const ModelConfig& config, const ShardCoords& shard = {});
  // Of `options` only tensor_parallel is read.
  torch::Tensor forward(const torch::Tensor& x, const PackedLayout& layout,
                        const ForwardOptions& options = {});
  // Rotates the first rotary_dim dims of x [T, heads, d] at `positions` [T] (NeoX style).
  torch::Tensor ApplyRope(const torch::Tensor& x, const torch::Tensor& positions) const;
  // The cos and sin ApplyRope multiplies by: [T, rotary_dim] each in `dtype`, for
  // `positions` [T] (the engine's decode step keeps them as tables over all positions).
  std::pair<torch::Tensor, torch::Tensor> RopeCosSin(const torch::Tensor& positions,
                                                     torch::ScalarType dtype) const;

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int64_t num_heads, num_kv_heads, head_dim, rotary_dim;
  double rope_theta;
  int64_t tp = 1;
};
TORCH_MODULE(SoftmaxAttention);

// One expert's FFN, or under expert-TP its block of `ffn` columns of the FFN width (w1 /
// w3 rows, w2 columns): the blocks' outputs sum to the whole expert's.
class ExpertImpl : public torch::nn::Module {
 public:
  ExpertImpl(int64_t hidden, int64_t ffn);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear w1{nullptr}, w2{nullptr}, w3{nullptr};
};
TORCH_MODULE(Expert);

// The numerics of an expert-parallel MoE forward (SparseMoeImpl::ForwardExpertParallel):
// routing, one expert on its rows, and each token's output from the rows that came back.
// An empty member takes the block's own (Route, ExpertImpl::forward, a weighted index_add);
// the batch-invariant mode gives its ops (policy/invariant_model.h).
struct MoeNumerics {
  // (probs [T, E] FP32, top_w [T, k] FP32, top_i [T, k] int64) of x [T, H].
  std::function<std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>(const torch::Tensor& x)>
      route;
  std::function<torch::Tensor(ExpertImpl& expert, const torch::Tensor& rows)> run_expert;
  // Under expert-TP: run_expert returns each row's whole output (not this member's partial
  // sum over its block of the FFN width), so each member keeps its own rows' outputs
  // instead of summing the members' partial ones.
  bool expert_outputs_whole = false;
  // The output [T, H] in x's dtype: `returned` [n, H] holds the expert output of the kept
  // assignments `ids` [n] (assignment a = token a / k, slot a % k), top_w their weights.
  std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& returned,
                              const torch::Tensor& ids, const torch::Tensor& top_w)>
      combine;
};

// The MoE block. With `shard` (policy/shard_spec.h) it holds only the experts of its EP
// rank (LocalExperts), each as its expert-TP block of the FFN width; the router is whole.
// The experts keep their global indices as module names (experts.E.w1.weight), so
// parameter names are the checkpoint's on every rank. Only ForwardExpertParallel runs a
// sharded block; the single-process paths need every expert whole.
class SparseMoeImpl : public torch::nn::Module {
 public:
  // Replicated over the TP group: every TP rank runs the whole block on the same tokens.
  explicit SparseMoeImpl(const ModelConfig& config, const ShardCoords& shard = {});
  // Returns (output, aux loss).
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x, double capacity_factor);
  // Whether the sparse path runs its experts as grouped GEMMs (CUDA bf16 with the kernels),
  // and that path: rows grouped by expert, lens[e] rows each (multiples of 128, 0 for an
  // expert without tokens), back to back; returns the experts' outputs in the same rows.
  bool GroupedExpertsSupported(const torch::Tensor& x);
  torch::Tensor GroupedExperts(const torch::Tensor& rows, const std::vector<int64_t>& lens);
  // The same block with its experts spread over the EP group of `comm`: this rank's
  // output and its part of the aux loss (the parts of all ranks sum to the aux loss of one
  // forward over every rank's tokens, laid end to end in rank order, and so does the
  // capacity rule). This rank's experts run, on an empty batch when no token came, so that
  // every rank's backward reaches every collective. Under expert-TP the members of an
  // expert-TP group run their blocks of the same experts on the union of the tokens they
  // received and sum the partial outputs. The block's shard must be the comm's layout.
  // With `valid` >= 0 only the first `valid` rows of x are tokens (sequence parallelism's
  // padding follows): the rest are routed nowhere, counted nowhere and output zero.
  // `numerics` (optional) replaces the routing, expert and combine ops.
  std::pair<torch::Tensor, torch::Tensor> ForwardExpertParallel(
      const torch::Tensor& x, double capacity_factor, ExpertParallelComm& comm,
      int64_t valid = -1, const MoeNumerics* numerics = nullptr);
  // The block on tokens x [T, H] that every rank of the comm holds alike (the ranks of an
  // expert-parallel rollout instance: one EP group, or under expert-TP one EP group per
  // expert-TP rank): each rank dispatches its block of ceil(T / (ep x expert_tp)) rows (the
  // last ones short or empty) through ForwardExpertParallel, and the blocks' outputs are
  // exchanged, so each token's experts run once in the instance and every rank returns the
  // whole output. No capacity rule, no aux loss; inference only.
  // `numerics` as ForwardExpertParallel's. With `rows_group` only the members of that TP
  // group hold x alike (attention data parallelism: the comm's EP group spans several TP
  // groups, each generating its own sequences): member t dispatches block t of
  // ceil(T / tp) rows and the group gathers its blocks' outputs. Every rank of the comm
  // must call it, one with no tokens with x of 0 rows.
  torch::Tensor ForwardReplicatedExpertParallel(const torch::Tensor& x, ExpertParallelComm& comm,
                                                const MoeNumerics* numerics = nullptr,
                                                TensorParallelComm* rows_group = nullptr);
  // Under sequence parallelism: the block on this TP rank's tokens x [n, H], of which the
  // first `valid` are the batch's (the rest padding). The aux loss is the whole batch's,
  // its statistics summed over the TP group, on every rank; backward, each rank's router
  // gets the gradient of its own tokens' part. The capacity rule (capacity_factor > 0)
  // counts the whole batch's tokens in order, the TP ranks' blocks in rank order, so the
  // same assignments are dropped as in one forward over the batch.
  std::pair<torch::Tensor, torch::Tensor> ForwardSequenceParallel(const torch::Tensor& x,
                                                                  int64_t valid,
                                                                  TensorParallelComm& comm,
                                                                  double capacity_factor = 0);
  // The router's logits [T, E] in FP32 (on CUDA bf16, an FP32-output GEMM).
  torch::Tensor RouterLogits(const torch::Tensor& x);
  // The router alone: FP32 softmax over experts, top-k, renormalised. Returns (probs [T, E],
  // top_w [T, k], top_i [T, k]).
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> Route(const torch::Tensor& x);
  // The experts' weighted output for a routing already made (forward is Route, the capacity
  // rule, then this; the engine routes with its own kernel): top_w [T, k] FP32 and top_i
  // [T, k] int64 as Route returns them, keep [T, k] bool (optional) the assignments within
  // capacity. No aux loss.
  torch::Tensor ForwardRouted(const torch::Tensor& x, const torch::Tensor& top_w,
                              const torch::Tensor& top_i, const torch::Tensor& keep = {});
  // The routing matrix [T, E] FP32: token t's weight for expert e, zero off its top-k.
  torch::Tensor CombineWeights(const torch::Tensor& x);
  // Expert `e` (global index); it must be one this block holds whole, or under EP its
  // block of (ForwardExpertParallel).
  ExpertImpl* expert(int64_t e);
  // Whether every expert is here whole (the single-process paths need that).
  bool holds_all_experts() const { return num_held == num_experts && shard.expert_tp == 1; }

  torch::nn::Linear gate{nullptr};
  torch::nn::ModuleDict experts;  // keyed by the global expert index
  int64_t num_experts, top_k;
  // The batch-invariant mode's device arrays of the experts' w1, w3 and w2 addresses (for
  // its grouped expert kernel), with the addresses they hold: policy/invariant_model.cc
  // makes them anew when a weight has moved.
  struct ExpertAddresses {
    std::vector<const void*> held;
    torch::Tensor w1, w3, w2;
    bool aligned = false;  // every weight 16-byte aligned
  };
  ExpertAddresses invariant_addresses;
  int64_t first_held, num_held;  // the held experts: [first_held, first_held + num_held)
  ShardCoords shard;
};
TORCH_MODULE(SparseMoe);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& config, int64_t layer, const ShardCoords& shard = {});
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x,
                                                  const PackedLayout& layout,
                                                  const ForwardOptions& options);
  // The layer around an attention computed by the caller (the engine's cached paths):
  // `attention` maps the normalised input to the attention output. Returns (out, aux).
  // `moe`, when given, replaces the MoE block's forward (the engine's grouped experts);
  // the aux loss is then not computed (an undefined tensor). Of `options` only the MoE
  // fields are read.
  using Block = std::function<torch::Tensor(const torch::Tensor&)>;
  std::pair<torch::Tensor, torch::Tensor> ForwardWith(const torch::Tensor& x, const Block& attention,
                                                      const ForwardOptions& options = {},
                                                      const Block& moe = nullptr);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  LightningAttention lightning{nullptr};
  SoftmaxAttention softmax{nullptr};
  SparseMoe block_sparse_moe{nullptr};
  double attn_alpha, attn_beta, mlp_alpha, mlp_beta;
  bool postnorm;
};
TORCH_MODULE(DecoderLayer);

class MiniMaxModelImpl : public torch::nn::Module {
 public:
  // With shard.tp > 1 the embedding holds rows [tp_rank * vocab / tp, ...).
  explicit MiniMaxModelImpl(const ModelConfig& config, const ShardCoords& shard = {});
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers;
  RMSNorm norm{nullptr};
};
TORCH_MODULE(MiniMaxModel);

class MiniMaxForCausalLMImpl : public torch::nn::Module {
 public:
  // The whole model, or the part of it the rank at `shard` holds (policy/shard_spec.h:
  // attention heads, embedding and LM-head rows split over TP; experts as SparseMoe
  // holds them). Parameter names stay the checkpoint's, their shapes are the shards'.
  explicit MiniMaxForCausalLMImpl(const ModelConfig& config, const ShardCoords& shard = {});

  // tokens [T] int64 packed by `layout`.
  ForwardOutput Forward(const torch::Tensor& tokens, const PackedLayout& layout,
                        const ForwardOptions& options = {});
  // FP32 logits [N, vocab] of hidden states [N, hidden] (under TP: this rank's vocab / tp
  // columns).
  torch::Tensor Logits(const torch::Tensor& hidden);
  // log p(targets[i] | hidden[i]) in FP32, computed in chunks so the [T, vocab] logits
  // never exist at once (0: LogitChunkRows()). Differentiable. With `temperature` T the
  // distribution is softmax(logits / T), the one a sampler at T draws from and reports
  // logprobs of; T must be > 0. A model sharded over TP needs `tp`, its TP group: the
  // logprob is then computed across the ranks' vocabulary blocks (policy/vocab_parallel.h)
  // and is a collective, forward and backward.
  torch::Tensor TokenLogprobs(const torch::Tensor& hidden, const torch::Tensor& targets,
                              int64_t chunk = 0, double temperature = 1.0,
                              TensorParallelComm* tp = nullptr);
  // Rows of FP32 logits computed at once: about 2^27 logits, at least 1024 rows.
  int64_t LogitChunkRows() const;

  // Fills parameters with the initialisation transformers uses (normal, std 0.02).
  void InitRandom(uint64_t seed);

  const ModelConfig& config() const { return config_; }
  const ShardCoords& shard() const { return shard_; }
  // The TP comm of `options`, checked against the shard: null for a model not split
  // over TP, else the comm (its size and rank must be the shard's).
  TensorParallelComm* TpCommOf(TensorParallelComm* comm) const;
  MiniMaxModel model{nullptr};
  torch::nn::Linear lm_head{nullptr};

 private:
  // Forward's sequence-parallel form (ForwardOptions::sequence_parallel).
  ForwardOutput ForwardSequenceParallel(const torch::Tensor& tokens, const PackedLayout& layout,
                                        const ForwardOptions& options, TensorParallelComm& comm);

  ModelConfig config_;
  ShardCoords shard_;
};
TORCH_MODULE(MiniMaxForCausalLM);

// Positions 0..len-1 of each document, as [T] int64.
torch::Tensor PackedPositions(const PackedLayout& layout, const torch::Device& device);

}  // namespace lightrl
