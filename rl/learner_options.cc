#include "rl/learner_options.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace lightrl {
namespace {

using config_table_internal::Describe;
using config_table_internal::Invalid;

// `betas: [beta1, beta2]`, two members under one key.
ConfigField<OptimizerOptions> BetasField() {
  ConfigField<OptimizerOptions> f;
  f.key = "betas";
  f.doc = "AdamW [beta1, beta2], each in [0, 1) (M1: [0.9, 0.95])";
  f.bind = [](const Json* v, const std::string& path, const ConfigSource& s,
              OptimizerOptions& o) {
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_array() || v->size() != 2) {
      return s.ErrorAt(path, absl::StrCat(path, " must be a list of 2 numbers [beta1, beta2], "
                                                "got ", v->is_array() ? v->Dump() : Describe(*v)));
    }
    double* betas[2] = {&o.beta1, &o.beta2};
    for (size_t i = 0; i < 2; ++i) {
      const Json& beta = v->as_array()[i];
      const std::string at = absl::StrCat(path, "[", i, "]");
      if (!beta.is_number()) {
        return s.ErrorAt(at, absl::StrCat(at, " must be a number, got ", Describe(beta)));
      }
      *betas[i] = beta.as_double();
    }
    return absl::OkStatus();
  };
  f.dump = [](const OptimizerOptions& o) {
    Json betas = Json::MakeArray();
    betas.push_back(Json(o.beta1));
    betas.push_back(Json(o.beta2));
    return betas;
  };
  f.check = [](const OptimizerOptions& o, const std::string& key) {
    const double betas[2] = {o.beta1, o.beta2};
    for (size_t i = 0; i < 2; ++i) {
      if (!(betas[i] >= 0 && betas[i] < 1)) {
        return Invalid(absl::StrCat(key, "[", i, "] must be in [0, 1), got ", betas[i]));
      }
    }
    return absl::OkStatus();
  };
  return f;
}

}  // namespace

const ConfigTable<OptimizerOptions>& OptimizerOptions::Table() {
  using O = OptimizerOptions;
  static const ConfigTable<O>* table = new ConfigTable<O>{
      Field<O>("lr", &O::lr, "AdamW peak learning rate (after warmup)", Positive()),
      BetasField(),
      Field<O>("eps", &O::eps, "AdamW epsilon (M1: 1e-15)", Positive()),
      Field<O>("weight_decay", &O::weight_decay, "AdamW weight decay", NonNegative()),
      Field<O>("grad_clip", &O::grad_clip, "global gradient-norm clip; 0 = off", NonNegative()),
      Field<O>("schedule", &O::schedule, "learning rate after warmup: constant, cosine, linear",
               OneOf({"constant", "cosine", "linear"})),
      Field<O>("warmup_steps", &O::warmup_steps, "linear warmup steps", AtLeast(0)),
      Field<O>("min_lr_ratio", &O::min_lr_ratio,
               "where cosine/linear decay ends, as a fraction of lr", InClosedRange(0, 1)),
      Field<O>("aux_loss_coef", &O::aux_loss_coef, "weight of the MoE load-balancing loss",
               NonNegative()),
      Field<O>("moe_capacity_factor", &O::moe_capacity_factor,
               "expert capacity in training as a multiple of the even share (token drop); "
               "0 = none",
               NonNegative()),
      Field<O>("activation_checkpointing", &O::activation_checkpointing,
               "keep only each decoder layer's input in training forwards and run the layer "
               "again in backward"),
  };
  return *table;
}

absl::Status OptimizerOptions::Validate() const {
  return CheckTable(Table(), *this);
}

double OptimizerOptions::LearningRate(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) {
    return lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  }
  if (schedule == "constant") return lr;
  const double span = std::max<double>(1, static_cast<double>(total_steps - warmup_steps));
  const double t = std::min(1.0, static_cast<double>(step - warmup_steps) / span);
  const double decay = schedule == "cosine" ? 0.5 * (1 + std::cos(M_PI * t)) : 1 - t;
  return lr * (min_lr_ratio + (1 - min_lr_ratio) * decay);
}

const ConfigTable<DataParallelOptions>& DataParallelOptions::Table() {
  using D = DataParallelOptions;
  static const ConfigTable<D>* table = new ConfigTable<D>{
      Field<D>("bucket_mb", &D::bucket_mb, "gradient all-reduce bucket size, MB of FP32",
               Positive()),
      Field<D>("zero1", &D::zero1, "ZeRO-1: shard AdamW state and FP32 master weights"),
      Field<D>("grad_reduce_dtype", &D::grad_reduce_dtype,
               "dtype of the gradient all-reduce: float32 or bfloat16", Dtype()),
      Field<D>("expert_parallel", &D::expert_parallel,
               "ranks per block holding every expert once; 1 = off", AtLeast(1)),
  };
  return *table;
}

absl::Status DataParallelOptions::Validate() const { return CheckTable(Table(), *this); }

absl::Status LearnerOptions::Validate() const {
  RETURN_IF_ERROR(loss.Validate());
  RETURN_IF_ERROR(config_table_internal::Prefixed("data_parallel.", data_parallel.Validate()));
  RETURN_IF_ERROR(config_table_internal::Prefixed("optimizer.", optimizer.Validate()));
  if (minibatches < 1) return Invalid(absl::StrCat("minibatches must be >= 1, got ", minibatches));
  if (max_tokens_per_forward < 1) return Invalid("max_tokens_per_forward must be >= 1");
  if (!(temperature > 0) || !std::isfinite(temperature)) {
    return Invalid(absl::StrCat(
        "temperature must be finite and > 0 (the rollouts' sampling temperature), got ",
        temperature));
  }
  return absl::OkStatus();
}

}  // namespace lightrl
