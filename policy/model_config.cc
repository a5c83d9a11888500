#include "policy/model_config.h"

#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status.h"

namespace lightrl {
namespace {

// Keys that describe the checkpoint or training-time behaviour of other frameworks and
// do not change the forward pass lightrl computes.
const std::set<std::string>& IgnoredKeys() {
  static const std::set<std::string> keys = {
      "architectures", "auto_map", "model_type", "dtype", "torch_dtype",
      "transformers_version", "initializer_range", "attention_dropout", "use_cache",
      "pad_token_id", "output_router_logits", "router_jitter_noise", "sliding_window",
      "hidden_act", "quantization_config", "_name_or_path", "return_dict",
      "output_hidden_states", "output_attentions", "shared_moe_mode", "shared_intermediate_size",
  };
  return keys;
}

class Reader {
 public:
  Reader(const Json& json, const std::string& source) : json_(json), source_(source) {}

  absl::Status Error(absl::string_view key, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", key, " ", what));
  }

  const Json* Get(const std::string& key) {
    used_.insert(key);
    return json_.find(key);
  }

  absl::Status Int(const std::string& key, int64_t& out, bool required) {
    const Json* v = Get(key);
    if (v == nullptr || v->is_null()) {
      return required ? Error(key, "is required but missing") : absl::OkStatus();
    }
    if (!v->is_int()) return Error(key, absl::StrCat("must be an integer, got ", v->Dump()));
    out = v->as_int();
    return absl::OkStatus();
  }

  absl::Status Double(const std::string& key, double& out) {
    const Json* v = Get(key);
    if (v == nullptr || v->is_null()) return absl::OkStatus();
    if (!v->is_number()) return Error(key, absl::StrCat("must be a number, got ", v->Dump()));
    out = v->as_double();
    return absl::OkStatus();
  }

  absl::Status Bool(const std::string& key, bool& out) {
    const Json* v = Get(key);
    if (v == nullptr || v->is_null()) return absl::OkStatus();
    if (!v->is_bool()) return Error(key, absl::StrCat("must be true or false, got ", v->Dump()));
    out = v->as_bool();
    return absl::OkStatus();
  }

  absl::Status CheckUnknown() const {
    for (const auto& [key, _] : json_.as_object()) {
      if (!used_.count(key) && !IgnoredKeys().count(key)) {
        return Error(key, "is not a known MiniMax config field");
      }
    }
    return absl::OkStatus();
  }

 private:
  const Json& json_;
  const std::string& source_;
  std::set<std::string> used_;
};

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromJson(const Json& json, const std::string& source) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": config must be a JSON object"));
  }
  ModelConfig c;
  Reader r(json, source);
  RETURN_IF_ERROR(r.Int("vocab_size", c.vocab_size, true));
  RETURN_IF_ERROR(r.Int("hidden_size", c.hidden_size, true));
  RETURN_IF_ERROR(r.Int("intermediate_size", c.intermediate_size, true));
  RETURN_IF_ERROR(r.Int("num_hidden_layers", c.num_hidden_layers, true));
  RETURN_IF_ERROR(r.Int("num_attention_heads", c.num_attention_heads, true));
  c.num_key_value_heads = c.num_attention_heads;
  RETURN_IF_ERROR(r.Int("num_key_value_heads", c.num_key_value_heads, false));
  if (c.num_attention_heads > 0) c.head_dim = c.hidden_size / c.num_attention_heads;
  RETURN_IF_ERROR(r.Int("head_dim", c.head_dim, false));
  RETURN_IF_ERROR(r.Int("num_local_experts", c.num_local_experts, false));
  RETURN_IF_ERROR(r.Int("num_experts_per_tok", c.num_experts_per_tok, false));
  RETURN_IF_ERROR(r.Double("rms_norm_eps", c.rms_norm_eps));
  RETURN_IF_ERROR(r.Int("max_position_embeddings", c.max_position_embeddings, false));
  RETURN_IF_ERROR(r.Int("block_size", c.block_size, false));
  RETURN_IF_ERROR(r.Double("router_aux_loss_coef", c.router_aux_loss_coef));
  RETURN_IF_ERROR(r.Bool("tie_word_embeddings", c.tie_word_embeddings));
  RETURN_IF_ERROR(r.Bool("postnorm", c.postnorm));

  // transformers' MiniMax applies RoPE to the whole head; MiniMax-M1's config names
  // rotary_dim (64 of 128) explicitly.
  c.rotary_dim = c.head_dim;
  RETURN_IF_ERROR(r.Int("rotary_dim", c.rotary_dim, false));
  RETURN_IF_ERROR(r.Double("rope_theta", c.rope_theta));
  if (const Json* rope = r.Get("rope_parameters"); rope != nullptr && !rope->is_null()) {
    if (!rope->is_object()) return r.Error("rope_parameters", "must be an object");
    for (const auto& [k, v] : rope->as_object()) {
      if (k == "rope_theta") {
        if (!v.is_number()) return r.Error("rope_parameters.rope_theta", "must be a number");
        c.rope_theta = v.as_double();
      } else if (k == "rope_type") {
        if (!v.is_string() || v.as_string() != "default") {
          return r.Error("rope_parameters.rope_type",
                         absl::StrCat("must be \"default\" (no RoPE scaling), got ", v.Dump()));
        }
      } else if (k == "partial_rotary_factor") {
        if (!v.is_number() || v.as_double() <= 0 || v.as_double() > 1) {
          return r.Error("rope_parameters.partial_rotary_factor",
                         absl::StrCat("must be in (0, 1], got ", v.Dump()));
        }
        c.rotary_dim = static_cast<int64_t>(c.head_dim * v.as_double());
      } else {
        return r.Error(absl::StrCat("rope_parameters.", k), "is not supported");
      }
    }
  }
  if (const Json* scaling = r.Get("rope_scaling"); scaling != nullptr && !scaling->is_null()) {
    return r.Error("rope_scaling", absl::StrCat("is not supported, got ", scaling->Dump()));
  }

  // Layer kinds: transformers' layer_types or MiniMax's attn_type_list (1 = softmax).
  const Json* types = r.Get("layer_types");
  const Json* attn_list = r.Get("attn_type_list");
  if (types != nullptr && !types->is_null()) {
    if (!types->is_array()) return r.Error("layer_types", "must be a list");
    for (size_t i = 0; i < types->size(); ++i) {
      const Json& t = types->as_array()[i];
      if (t.is_string() && t.as_string() == "linear_attention") {
        c.layer_kinds.push_back(LayerKind::kLightning);
      } else if (t.is_string() && t.as_string() == "full_attention") {
        c.layer_kinds.push_back(LayerKind::kSoftmax);
      } else {
        return r.Error(absl::StrCat("layer_types[", i, "]"),
                       absl::StrCat("must be \"linear_attention\" or \"full_attention\", got ",
                                    t.Dump()));
      }
    }
  } else if (attn_list != nullptr && !attn_list->is_null()) {
    if (!attn_list->is_array()) return r.Error("attn_type_list", "must be a list");
    for (size_t i = 0; i < attn_list->size(); ++i) {
      const Json& t = attn_list->as_array()[i];
      if (!t.is_int() || (t.as_int() != 0 && t.as_int() != 1)) {
        return r.Error(absl::StrCat("attn_type_list[", i, "]"),
                       absl::StrCat("must be 0 (lightning) or 1 (softmax), got ", t.Dump()));
      }
      c.layer_kinds.push_back(t.as_int() == 1 ? LayerKind::kSoftmax : LayerKind::kLightning);
    }
  } else {
    // transformers' default when layer_types is absent: even layers softmax.
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      c.layer_kinds.push_back(i % 2 == 0 ? LayerKind::kSoftmax : LayerKind::kLightning);
    }
  }

  // Residual factors: both namings.
  RETURN_IF_ERROR(r.Double("full_attn_alpha_factor", c.full_attn_alpha));
  RETURN_IF_ERROR(r.Double("full_attn_beta_factor", c.full_attn_beta));
  RETURN_IF_ERROR(r.Double("linear_attn_alpha_factor", c.linear_attn_alpha));
  RETURN_IF_ERROR(r.Double("linear_attn_beta_factor", c.linear_attn_beta));
  RETURN_IF_ERROR(r.Double("mlp_alpha_factor", c.mlp_alpha));
  RETURN_IF_ERROR(r.Double("mlp_beta_factor", c.mlp_beta));
  RETURN_IF_ERROR(r.Double("layernorm_full_attention_alpha", c.full_attn_alpha));
  RETURN_IF_ERROR(r.Double("layernorm_full_attention_beta", c.full_attn_beta));
  RETURN_IF_ERROR(r.Double("layernorm_linear_attention_alpha", c.linear_attn_alpha));
  RETURN_IF_ERROR(r.Double("layernorm_linear_attention_beta", c.linear_attn_beta));
  RETURN_IF_ERROR(r.Double("layernorm_mlp_alpha", c.mlp_alpha));
  RETURN_IF_ERROR(r.Double("layernorm_mlp_beta", c.mlp_beta));

  if (const Json* hidden_act = json.find("hidden_act");
      hidden_act != nullptr && !(hidden_act->is_string() && hidden_act->as_string() == "silu")) {
    return r.Error("hidden_act", absl::StrCat("must be \"silu\", got ", hidden_act->Dump()));
  }
  if (const Json* shared = json.find("shared_intermediate_size");
      shared != nullptr && !(shared->is_int() && shared->as_int() == 0)) {
    return r.Error("shared_intermediate_size",
                   absl::StrCat("shared experts are not supported, got ", shared->Dump()));
  }
  if (const Json* bos = r.Get("bos_token_id"); bos != nullptr && bos->is_int()) {
    c.bos_token_id = bos->as_int();
  }
  if (const Json* eos = r.Get("eos_token_id"); eos != nullptr) {
    if (eos->is_int()) {
      c.eos_token_ids.push_back(eos->as_int());
    } else if (eos->is_array()) {
      for (const Json& e : eos->as_array()) {
        if (!e.is_int()) return r.Error("eos_token_id", "must hold integers");
        c.eos_token_ids.push_back(e.as_int());
      }
    }
  }
  RETURN_IF_ERROR(r.CheckUnknown());
  if (auto st = c.Validate(); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", st.message()));
  }
  return c;
}

absl::StatusOr<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto json = Json::Parse(text);
  if (!json.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", json.status().message()));
  }
  return FromJson(*json, path);
}

absl::Status ModelConfig::Validate() const {
  auto positive = [](absl::string_view key, int64_t v) -> absl::Status {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat(key, " must be > 0, got ", v));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(positive("vocab_size", vocab_size));
  RETURN_IF_ERROR(positive("hidden_size", hidden_size));
  RETURN_IF_ERROR(positive("intermediate_size", intermediate_size));
  RETURN_IF_ERROR(positive("num_hidden_layers", num_hidden_layers));
  RETURN_IF_ERROR(positive("num_attention_heads", num_attention_heads));
  RETURN_IF_ERROR(positive("num_key_value_heads", num_key_value_heads));
  RETURN_IF_ERROR(positive("head_dim", head_dim));
  RETURN_IF_ERROR(positive("num_local_experts", num_local_experts));
  RETURN_IF_ERROR(positive("num_experts_per_tok", num_experts_per_tok));
  RETURN_IF_ERROR(positive("block_size", block_size));
  if (num_attention_heads % num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_attention_heads (", num_attention_heads, ") must be a multiple of num_key_value_heads (",
        num_key_value_heads, ")"));
  }
  if (num_experts_per_tok > num_local_experts) {
    return absl::InvalidArgumentError(absl::StrCat("num_experts_per_tok (", num_experts_per_tok,
                                                   ") exceeds num_local_experts (",
                                                   num_local_experts, ")"));
  }
  if (static_cast<int64_t>(layer_kinds.size()) != num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer types list ", layer_kinds.size(),
                                                   " layers but num_hidden_layers is ",
                                                   num_hidden_layers));
  }
  if (rotary_dim < 0 || rotary_dim > head_dim || rotary_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("rotary_dim must be even and in [0, head_dim=", head_dim, "], got ", rotary_dim));
  }
  if (!(rms_norm_eps > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("rms_norm_eps must be > 0, got ", rms_norm_eps));
  }
  if (!(rope_theta > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("rope_theta must be > 0, got ", rope_theta));
  }
  return absl::OkStatus();
}

double ModelConfig::LightningSlope(int64_t layer, int64_t head) const {
  const double base = 1.0 / std::pow(2.0, 8.0 / static_cast<double>(num_attention_heads));
  const double rate = std::pow(base, static_cast<double>(head + 1));
  const double factor =
      1.0 - static_cast<double>(layer) / (static_cast<double>(num_hidden_layers) - 1.0 + 1e-5) +
      1e-5;
  return rate * factor;
}

Json ModelConfig::ToJson() const {
  Json j = Json::MakeObject();
  j.set("architectures", Json(Json::Array{Json("MiniMaxForCausalLM")}));
  j.set("model_type", Json("minimax"));
  j.set("vocab_size", Json(vocab_size));
  j.set("hidden_size", Json(hidden_size));
  j.set("intermediate_size", Json(intermediate_size));
  j.set("num_hidden_layers", Json(num_hidden_layers));
  j.set("num_attention_heads", Json(num_attention_heads));
  j.set("num_key_value_heads", Json(num_key_value_heads));
  j.set("head_dim", Json(head_dim));
  j.set("num_local_experts", Json(num_local_experts));
  j.set("num_experts_per_tok", Json(num_experts_per_tok));
  j.set("rms_norm_eps", Json(rms_norm_eps));
  j.set("max_position_embeddings", Json(max_position_embeddings));
  Json rope = Json::MakeObject();
  rope.set("rope_theta", Json(rope_theta));
  rope.set("rope_type", Json("default"));
  if (rotary_dim != head_dim) {
    rope.set("partial_rotary_factor",
             Json(static_cast<double>(rotary_dim) / static_cast<double>(head_dim)));
  }
  j.set("rope_parameters", std::move(rope));
  j.set("block_size", Json(block_size));
  Json types = Json::MakeArray();
  for (LayerKind k : layer_kinds) {
    types.push_back(Json(k == LayerKind::kLightning ? "linear_attention" : "full_attention"));
  }
  j.set("layer_types", std::move(types));
  j.set("full_attn_alpha_factor", Json(full_attn_alpha));
  j.set("full_attn_beta_factor", Json(full_attn_beta));
  j.set("linear_attn_alpha_factor", Json(linear_attn_alpha));
  j.set("linear_attn_beta_factor", Json(linear_attn_beta));
  j.set("mlp_alpha_factor", Json(mlp_alpha));
  j.set("mlp_beta_factor", Json(mlp_beta));
  if (!postnorm) j.set("postnorm", Json(false));
  j.set("router_aux_loss_coef", Json(router_aux_loss_coef));
  j.set("tie_word_embeddings", Json(tie_word_embeddings));
  j.set("hidden_act", Json("silu"));
  if (bos_token_id) j.set("bos_token_id", Json(*bos_token_id));
  if (eos_token_ids.size() == 1) {
    j.set("eos_token_id", Json(eos_token_ids[0]));
  } else if (!eos_token_ids.empty()) {
    Json eos = Json::MakeArray();
    for (int64_t e : eos_token_ids) eos.push_back(Json(e));
    j.set("eos_token_id", std::move(eos));
  }
  return j;
}

int64_t ModelConfig::num_parameters() const {
  int64_t n = vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2) + hidden_size;
  for (LayerKind k : layer_kinds) {
    const int64_t inner = num_attention_heads * head_dim;
    if (k == LayerKind::kLightning) {
      n += hidden_size * inner * 3 + inner * hidden_size * 2 + inner;
    } else {
      n += hidden_size * inner * 2 + hidden_size * num_key_value_heads * head_dim * 2;
    }
    n += 2 * hidden_size + num_local_experts * (hidden_size + 3 * hidden_size * intermediate_size);
  }
  return n;
}

}  // namespace lightrl
