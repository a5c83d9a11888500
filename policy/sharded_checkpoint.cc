#include "policy/sharded_checkpoint.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/status.h"

namespace lightrl {
namespace {

constexpr const char* kFormat = "lightrl-sharded-safetensors";
constexpr int64_t kVersion = 1;
// The file metadata key holding each block's place: {name: {dim, parts, index, shape}}.
constexpr const char* kBlocksKey = "lightrl_blocks";
constexpr const char* kCoordsKey = "lightrl_coords";
constexpr int64_t kMaxLayoutSize = 65536;
constexpr size_t kMaxRank = 8;
// Any real tensor is far below this; it keeps every size product inside int64.
constexpr int64_t kMaxTensorBytes = int64_t{1} << 50;
constexpr uint64_t kMaxIndexBytes = uint64_t{256} << 20;

absl::StatusOr<int64_t> IntField(const Json& obj, const char* key, const std::string& where) {
  const Json* v = obj.find(key);
  if (v == nullptr || !v->is_int()) {
    return absl::DataLossError(absl::StrCat(where, ": missing integer field '", key, "'"));
  }
  return v->as_int();
}

// A JSON shape: at most kMaxRank non-negative dimensions of at most kMaxTensorBytes bytes.
absl::StatusOr<std::vector<int64_t>> ParseShape(const Json* v, DType dtype,
                                                const std::string& where) {
  if (v == nullptr || !v->is_array() || v->size() > kMaxRank) {
    return absl::DataLossError(
        absl::StrCat(where, ": 'shape' must be an array of at most ", kMaxRank, " dimensions"));
  }
  std::vector<int64_t> shape;
  int64_t bytes = static_cast<int64_t>(DTypeSize(dtype));
  for (const Json& d : v->as_array()) {
    if (!d.is_int() || d.as_int() < 0 || d.as_int() > kMaxTensorBytes) {
      return absl::DataLossError(absl::StrCat(where, ": bad dimension ", d.Dump()));
    }
    shape.push_back(d.as_int());
    if (d.as_int() > 0 && bytes > kMaxTensorBytes / d.as_int()) {
      return absl::DataLossError(absl::StrCat(where, ": shape ", v->Dump(), " is too large"));
    }
    bytes *= d.as_int();
  }
  return shape;
}

Json ShapeJson(const std::vector<int64_t>& shape) {
  Json a = Json::MakeArray();
  for (int64_t d : shape) a.push_back(Json(d));
  return a;
}

// The place of one piece: dim in [-1, rank), parts >= 1 dividing the dimension (1 for a
// whole piece), index in [0, parts).
absl::Status CheckPlace(int dim, int64_t parts, int64_t index, const std::vector<int64_t>& shape,
                        const std::string& where) {
  if (dim < -1 || dim >= static_cast<int>(shape.size())) {
    return absl::DataLossError(absl::StrCat(where, ": split dimension ", dim,
                                            " is outside the tensor's shape ", ShapeString(shape)));
  }
  if (parts < 1 || parts > kMaxLayoutSize || (dim < 0 && parts != 1)) {
    return absl::DataLossError(absl::StrCat(where, ": bad number of parts ", parts));
  }
  if (index < 0 || index >= parts) {
    return absl::DataLossError(
        absl::StrCat(where, ": piece ", index, " is outside the tensor's ", parts, " parts"));
  }
  if (dim >= 0 && shape[dim] % parts != 0) {
    return absl::DataLossError(absl::StrCat(where, ": ", parts, " parts do not divide dimension ",
                                            dim, " of ", ShapeString(shape)));
  }
  return absl::OkStatus();
}

TensorShard PlaceShard(int dim, int64_t parts, int64_t index) {
  return TensorShard{true, dim, parts, index};
}

bool IsDecayBuffer(absl::string_view suffix) {
  return suffix == "slope_rate" || suffix == "query_decay" || suffix == "key_decay" ||
         suffix == "diagonal_decay";
}

// A plain file name inside the folder: no path separator, not . or .., a .safetensors.
bool IsPlainShardName(const std::string& name) {
  return !name.empty() && name.find('/') == std::string::npos && name != "." && name != ".." &&
         name.size() <= 255 && absl::EndsWith(name, ".safetensors");
}

// Each block's place as a shard file's metadata records it.
struct BlockPlace {
  int dim = -1;
  int64_t parts = 1;
  int64_t index = 0;
  std::vector<int64_t> full_shape;
};

absl::StatusOr<std::map<std::string, BlockPlace>> ReadBlockPlaces(const SafetensorsFile& file) {
  std::map<std::string, BlockPlace> places;
  auto it = file.metadata().find(kBlocksKey);
  if (it == file.metadata().end()) {
    if (file.tensors().empty()) return places;
    return absl::DataLossError(absl::StrCat(file.path(), ": no '", kBlocksKey,
                                            "' metadata: not a sharded checkpoint file"));
  }
  auto json = Json::Parse(it->second);
  if (!json.ok() || !json->is_object()) {
    return absl::DataLossError(
        absl::StrCat(file.path(), ": metadata '", kBlocksKey, "' is not a JSON object"));
  }
  for (const auto& [name, entry] : json->as_object()) {
    const std::string where = absl::StrCat(file.path(), ": metadata of tensor '", name, "'");
    const TensorInfo* info = file.Find(name);
    if (info == nullptr) {
      return absl::DataLossError(absl::StrCat(where, ": the file has no such tensor"));
    }
    if (!entry.is_object()) return absl::DataLossError(absl::StrCat(where, ": not an object"));
    BlockPlace p;
    ASSIGN_OR_RETURN(int64_t dim, IntField(entry, "dim", where));
    ASSIGN_OR_RETURN(p.parts, IntField(entry, "parts", where));
    ASSIGN_OR_RETURN(p.index, IntField(entry, "index", where));
    ASSIGN_OR_RETURN(p.full_shape, ParseShape(entry.find("shape"), info->dtype, where));
    if (dim < -1 || dim > static_cast<int64_t>(kMaxRank)) {
      return absl::DataLossError(absl::StrCat(where, ": bad split dimension ", dim));
    }
    p.dim = static_cast<int>(dim);
    RETURN_IF_ERROR(CheckPlace(p.dim, p.parts, p.index, p.full_shape, where));
    const std::vector<int64_t> block = PlaceShard(p.dim, p.parts, p.index).LocalShape(p.full_shape);
    if (info->shape != block) {
      return absl::DataLossError(absl::StrCat(
          file.path(), ": tensor '", name, "' has shape ", ShapeString(info->shape),
          " but its place (block ", p.index, " of ", p.parts, " along dim ", p.dim, " of ",
          ShapeString(p.full_shape), ") needs ", ShapeString(block)));
    }
    places[name] = std::move(p);
  }
  for (const TensorInfo& t : file.tensors()) {
    if (!places.count(t.name)) {
      return absl::DataLossError(absl::StrCat(file.path(), ": tensor '", t.name,
                                              "' has no place in the '", kBlocksKey, "' metadata"));
    }
  }
  return places;
}

// Removes weight files of `dir` that a checkpoint made of `keep` does not use: HF single
// and sharded weights and their index, shard files of other layouts.
void RemoveStaleWeights(const std::string& dir, const std::set<std::string>& keep) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    const bool weights = name == "model.safetensors" || name == "model.safetensors.index.json" ||
                         name == kShardedIndexName ||
                         (absl::StartsWith(name, "model-") && absl::EndsWith(name, ".safetensors"));
    if (weights && !keep.count(name)) ::unlink(JoinPath(dir, name).c_str());
  }
  ::closedir(d);
}

}  // namespace

absl::Status ShardLayout::Validate() const {
  const std::pair<const char*, int64_t> sizes[] = {{"tp", tp}, {"ep", ep}, {"expert_tp", expert_tp}};
  for (const auto& [key, v] : sizes) {
    if (v < 1 || v > kMaxLayoutSize) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, " must be in [1, ", kMaxLayoutSize, "], got ", v));
    }
  }
  return absl::OkStatus();
}

std::string ShardLayout::ToString() const {
  return absl::StrCat("tp=", tp, ",ep=", ep, ",expert_tp=", expert_tp);
}

absl::StatusOr<ShardLayout> ShardLayout::Parse(absl::string_view text) {
  ShardLayout layout;
  std::set<std::string> seen;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    int64_t value = 0;
    int64_t* field = kv.first == "tp"          ? &layout.tp
                     : kv.first == "ep"        ? &layout.ep
                     : kv.first == "expert_tp" ? &layout.expert_tp
                                               : nullptr;
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", item, "\": expected tp=N, ep=N or expert_tp=N, separated by commas"));
    }
    if (!seen.insert(kv.first).second) {
      return absl::InvalidArgumentError(absl::StrCat(kv.first, " is given twice"));
    }
    if (!absl::SimpleAtoi(kv.second, &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat(kv.first, " must be a whole number, got \"", kv.second, "\""));
    }
    *field = value;
  }
  RETURN_IF_ERROR(layout.Validate());
  return layout;
}

std::vector<ShardCoords> ShardLayout::AllCoords() const {
  std::vector<ShardCoords> out;
  for (int64_t e = 0; e < ep; ++e) {
    for (int64_t x = 0; x < expert_tp; ++x) {
      for (int64_t t = 0; t < tp; ++t) out.push_back({tp, t, ep, e, expert_tp, x});
    }
  }
  return out;
}

ShardLayout LayoutOf(const ShardCoords& c) { return {c.tp, c.ep, c.expert_tp}; }

std::string ShardFileName(const ShardCoords& c) {
  return absl::StrCat("model-tp", c.tp_rank, "of", c.tp, "-ep", c.ep_rank, "of", c.ep, "-etp",
                      c.expert_tp_rank, "of", c.expert_tp, ".safetensors");
}

std::vector<std::pair<std::string, std::vector<int64_t>>> ModelTensorShapes(const ModelConfig& m) {
  const int64_t H = m.hidden_size, inner = m.num_attention_heads * m.head_dim;
  const int64_t kv = m.num_key_value_heads * m.head_dim, F = m.intermediate_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> t = {
      {"model.embed_tokens.weight", {m.vocab_size, H}},
      {"model.norm.weight", {H}},
  };
  if (!m.tie_word_embeddings) t.push_back({"lm_head.weight", {m.vocab_size, H}});
  for (int64_t l = 0; l < m.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    t.push_back({p + "input_layernorm.weight", {H}});
    t.push_back({p + "post_attention_layernorm.weight", {H}});
    t.push_back({p + "block_sparse_moe.gate.weight", {m.num_local_experts, H}});
    if (m.is_lightning(l)) {
      t.push_back({p + "self_attn.qkv_proj.weight", {3 * inner, H}});
      t.push_back({p + "self_attn.output_gate.weight", {inner, H}});
      t.push_back({p + "self_attn.norm.weight", {inner}});
      t.push_back({p + "self_attn.out_proj.weight", {H, inner}});
    } else {
      t.push_back({p + "self_attn.q_proj.weight", {inner, H}});
      t.push_back({p + "self_attn.k_proj.weight", {kv, H}});
      t.push_back({p + "self_attn.v_proj.weight", {kv, H}});
      t.push_back({p + "self_attn.o_proj.weight", {H, inner}});
    }
    for (int64_t e = 0; e < m.num_local_experts; ++e) {
      const std::string q = absl::StrCat(p, "block_sparse_moe.experts.", e, ".");
      t.push_back({q + "w1.weight", {F, H}});
      t.push_back({q + "w2.weight", {H, F}});
      t.push_back({q + "w3.weight", {F, H}});
    }
  }
  std::sort(t.begin(), t.end());
  return t;
}

absl::StatusOr<TensorShard> CheckpointShardOf(const std::string& name, const ModelConfig& model,
                                              const ShardCoords& coords) {
  absl::StatusOr<TensorShard> shard = ShardOf(name, model, coords);
  if (shard.ok()) return shard;
  // model.layers.L.self_attn.<decay buffer> of a lightning layer.
  const std::vector<std::string> p = absl::StrSplit(name, '.');
  int64_t layer = 0;
  if (p.size() == 5 && p[0] == "model" && p[1] == "layers" && p[3] == "self_attn" &&
      IsDecayBuffer(p[4]) && absl::SimpleAtoi(p[2], &layer) && std::to_string(layer) == p[2] &&
      layer >= 0 && layer < model.num_hidden_layers && model.is_lightning(layer)) {
    return TensorShard{};
  }
  return shard;
}

absl::StatusOr<bool> WritesBlock(const std::string& name, const ModelConfig& model,
                                 const ShardCoords& coords) {
  ASSIGN_OR_RETURN(TensorShard mine, CheckpointShardOf(name, model, coords));
  if (!mine.held) return false;
  auto same = [](const TensorShard& a, const TensorShard& b) {
    return a.held == b.held && a.dim == b.dim && a.parts == b.parts && a.index == b.index;
  };
  // A dimension whose index does not change the block: only its rank 0 writes.
  for (int64_t ShardCoords::*rank :
       {&ShardCoords::tp_rank, &ShardCoords::ep_rank, &ShardCoords::expert_tp_rank}) {
    if (coords.*rank == 0) continue;
    ShardCoords at_zero = coords;
    at_zero.*rank = 0;
    ASSIGN_OR_RETURN(TensorShard there, CheckpointShardOf(name, model, at_zero));
    if (same(mine, there)) return false;
  }
  return true;
}

std::vector<bool> ShardWriters(const std::vector<ShardCoords>& coords_of_rank) {
  std::vector<bool> writes(coords_of_rank.size(), true);
  for (size_t r = 0; r < coords_of_rank.size(); ++r) {
    for (size_t q = 0; q < r && writes[r]; ++q) {
      if (coords_of_rank[q] == coords_of_rank[r]) writes[r] = false;
    }
  }
  return writes;
}

absl::Status WriteRankShards(const std::string& dir, const ModelConfig& model,
                             const ShardCoords& coords, const std::vector<TensorData>& local) {
  RETURN_IF_ERROR(coords.CheckModel(model));
  std::map<std::string, std::vector<int64_t>> model_shapes;
  for (auto& [name, shape] : ModelTensorShapes(model)) model_shapes[name] = shape;
  const std::string path = JoinPath(dir, ShardFileName(coords));
  std::vector<TensorData> written;
  Json blocks = Json::MakeObject();
  std::set<std::string> seen;
  for (const TensorData& t : local) {
    const std::string where = absl::StrCat(path, ": tensor '", t.name, "'");
    if (!seen.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, " is given twice"));
    }
    absl::StatusOr<TensorShard> held = CheckpointShardOf(t.name, model, coords);
    if (!held.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", held.status().message()));
    const TensorShard shard = *held;
    if (!shard.held) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": the rank at ", coords.ToString(), " does not hold it"));
    }
    std::vector<int64_t> full = t.shape;
    if (!shard.whole()) {
      if (shard.dim >= static_cast<int>(full.size())) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": shape ", ShapeString(t.shape),
                                                       " has no dimension ", shard.dim));
      }
      full[shard.dim] *= shard.parts;
    }
    auto known = model_shapes.find(t.name);
    if (known != model_shapes.end() && known->second != full) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": local shape ", ShapeString(t.shape), " is not block ", shard.index, " of ",
          shard.parts, " of the model's ", ShapeString(known->second)));
    }
    ASSIGN_OR_RETURN(bool writes, WritesBlock(t.name, model, coords));
    if (!writes) continue;
    written.push_back(t);
    Json place = Json::MakeObject();
    place.set("dim", Json(static_cast<int64_t>(shard.whole() ? -1 : shard.dim)));
    place.set("parts", Json(shard.whole() ? int64_t{1} : shard.parts));
    place.set("index", Json(shard.whole() ? int64_t{0} : shard.index));
    place.set("shape", ShapeJson(full));
    blocks.set(t.name, std::move(place));
  }
  std::sort(written.begin(), written.end(),
            [](const TensorData& a, const TensorData& b) { return a.name < b.name; });
  RETURN_IF_ERROR(MakeDirs(dir));
  return WriteSafetensors(path, written,
                          {{"format", "pt"}, {kCoordsKey, coords.ToString()},
                           {kBlocksKey, blocks.Dump()}});
}

absl::Status WriteShardedIndex(const std::string& dir, const ModelConfig& model,
                               const ShardLayout& layout) {
  RETURN_IF_ERROR(layout.Validate());
  // Each tensor's dtype, full shape and pieces, gathered from the files' headers.
  std::map<std::string, StoredTensor> tensors;
  std::set<std::string> files;
  for (const ShardCoords& coords : layout.AllCoords()) {
    RETURN_IF_ERROR(coords.CheckModel(model));
    const std::string name = ShardFileName(coords);
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(JoinPath(dir, name)));
    ASSIGN_OR_RETURN(auto places, ReadBlockPlaces(*file));
    files.insert(name);
    for (const auto& [tensor, place] : places) {
      const std::string where = absl::StrCat(file->path(), ": tensor '", tensor, "'");
      const TensorInfo* info = file->Find(tensor);
      ASSIGN_OR_RETURN(TensorShard rule, CheckpointShardOf(tensor, model, coords));
      ASSIGN_OR_RETURN(bool writes, WritesBlock(tensor, model, coords));
      const TensorShard stored = PlaceShard(place.dim, place.parts, place.index);
      const bool matches = rule.whole() ? stored.whole()
                                        : place.dim == rule.dim && place.parts == rule.parts &&
                                              place.index == rule.index;
      if (!writes || !matches) {
        return absl::DataLossError(absl::StrCat(where, ": the rank at ", coords.ToString(),
                                                " does not write this block of it"));
      }
      auto [it, added] = tensors.try_emplace(tensor);
      StoredTensor& t = it->second;
      if (added) {
        t.name = tensor;
        t.dtype = info->dtype;
        t.shape = place.full_shape;
      } else if (t.dtype != info->dtype || t.shape != place.full_shape) {
        return absl::DataLossError(absl::StrCat(
            where, ": ", DTypeName(info->dtype), " ", ShapeString(place.full_shape),
            " disagrees with another file's ", DTypeName(t.dtype), " ", ShapeString(t.shape)));
      }
      t.pieces.push_back({name, place.dim, place.parts, place.index, nullptr});
    }
  }
  for (const auto& [name, shape] : ModelTensorShapes(model)) {
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      return absl::DataLossError(absl::StrCat(dir, ": no shard file of layout ",
                                              layout.ToString(), " holds tensor '", name, "'"));
    }
    if (it->second.shape != shape) {
      return absl::DataLossError(absl::StrCat(dir, ": tensor '", name, "' has shape ",
                                              ShapeString(it->second.shape), ", the model's is ",
                                              ShapeString(shape)));
    }
  }
  Json index = Json::MakeObject();
  index.set("format", Json(kFormat));
  index.set("version", Json(kVersion));
  Json lay = Json::MakeObject();
  lay.set("tp", Json(layout.tp));
  lay.set("ep", Json(layout.ep));
  lay.set("expert_tp", Json(layout.expert_tp));
  index.set("layout", std::move(lay));
  Json file_list = Json::MakeArray();
  for (const ShardCoords& coords : layout.AllCoords()) file_list.push_back(Json(ShardFileName(coords)));
  index.set("files", std::move(file_list));
  Json by_name = Json::MakeObject();
  int64_t total = 0;
  for (const auto& [name, t] : tensors) {
    Json entry = Json::MakeObject();
    entry.set("dtype", Json(DTypeName(t.dtype)));
    entry.set("shape", ShapeJson(t.shape));
    Json pieces = Json::MakeArray();
    std::vector<StoredPiece> sorted = t.pieces;
    std::sort(sorted.begin(), sorted.end(),
              [](const StoredPiece& a, const StoredPiece& b) { return a.index < b.index; });
    for (const StoredPiece& p : sorted) {
      Json piece = Json::MakeObject();
      piece.set("file", Json(p.file));
      piece.set("dim", Json(static_cast<int64_t>(p.dim)));
      piece.set("parts", Json(p.parts));
      piece.set("index", Json(p.index));
      pieces.push_back(std::move(piece));
    }
    entry.set("pieces", std::move(pieces));
    by_name.set(name, std::move(entry));
    int64_t bytes = static_cast<int64_t>(DTypeSize(t.dtype));
    for (int64_t d : t.shape) bytes *= d;
    total += bytes;
  }
  Json metadata = Json::MakeObject();
  metadata.set("total_size", Json(total));
  index.set("metadata", std::move(metadata));
  index.set("tensors", std::move(by_name));
  const std::string index_path = JoinPath(dir, kShardedIndexName);
  RETURN_IF_ERROR(WriteFileAtomic(index_path, index.Dump(2) + "\n"));
  // Read back through the reader's checks (tiling, headers): what it refuses is not left.
  absl::StatusOr<ShardedCheckpoint> check = ShardedCheckpoint::Open(dir);
  if (!check.ok()) {
    ::unlink(index_path.c_str());
    return check.status();
  }
  files.insert(std::string(kShardedIndexName));
  RemoveStaleWeights(dir, files);
  return absl::OkStatus();
}

bool ShardedCheckpoint::IsSharded(const std::string& dir) {
  return FileExists(JoinPath(dir, kShardedIndexName));
}

namespace {

// The pieces of `t` tile it: one split (dimension and parts) for all, each index once.
absl::Status CheckTiling(const StoredTensor& t, const std::string& where) {
  if (t.pieces.empty()) return absl::DataLossError(absl::StrCat(where, ": no pieces"));
  const StoredPiece& first = t.pieces[0];
  std::vector<bool> have(static_cast<size_t>(first.parts), false);
  for (const StoredPiece& p : t.pieces) {
    if (p.dim != first.dim || p.parts != first.parts) {
      return absl::DataLossError(absl::StrCat(where, ": pieces split differently (", first.parts,
                                              " along dim ", first.dim, " and ", p.parts,
                                              " along dim ", p.dim, ")"));
    }
    if (have[static_cast<size_t>(p.index)]) {
      return absl::DataLossError(
          absl::StrCat(where, ": piece ", p.index, " of ", p.parts, " is given twice (overlap)"));
    }
    have[static_cast<size_t>(p.index)] = true;
  }
  for (size_t i = 0; i < have.size(); ++i) {
    if (!have[i]) {
      return absl::DataLossError(
          absl::StrCat(where, ": piece ", i, " of ", first.parts, " is missing"));
    }
  }
  return absl::OkStatus();
}

// The index's JSON, bounded in size, of this format and version.
absl::StatusOr<Json> ReadIndex(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot stat"));
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxIndexBytes) {
    return absl::DataLossError(absl::StrCat(path, ": ", st.st_size, " bytes is too large"));
  }
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  absl::StatusOr<Json> index = Json::Parse(text);
  if (!index.ok()) return absl::DataLossError(absl::StrCat(path, ": ", index.status().message()));
  if (!index->is_object()) return absl::DataLossError(absl::StrCat(path, ": not a JSON object"));
  const Json* format = index->find("format");
  const Json* version = index->find("version");
  if (format == nullptr || !format->is_string() || format->as_string() != kFormat ||
      version == nullptr || !version->is_int() || version->as_int() != kVersion) {
    return absl::DataLossError(absl::StrCat(path, ": expected \"format\": \"", kFormat,
                                            "\" and \"version\": ", kVersion));
  }
  return index;
}

absl::StatusOr<ShardLayout> ReadLayout(const Json& index, const std::string& path) {
  const Json* layout = index.find("layout");
  if (layout == nullptr || !layout->is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": missing object 'layout'"));
  }
  ShardLayout out;
  const std::string where = path + ": layout";
  ASSIGN_OR_RETURN(out.tp, IntField(*layout, "tp", where));
  ASSIGN_OR_RETURN(out.ep, IntField(*layout, "ep", where));
  ASSIGN_OR_RETURN(out.expert_tp, IntField(*layout, "expert_tp", where));
  if (absl::Status s = out.Validate(); !s.ok()) {
    return absl::DataLossError(absl::StrCat(where, ": ", s.message()));
  }
  return out;
}

// The shard files an index names, each opened (its header validated) with its blocks'
// recorded places.
struct IndexFiles {
  std::map<std::string, size_t> ids;
  std::vector<std::shared_ptr<SafetensorsFile>> files;
  std::vector<std::map<std::string, BlockPlace>> places;
};

absl::StatusOr<IndexFiles> OpenIndexFiles(const Json& index, const ShardLayout& layout,
                                          const std::string& dir, const std::string& path) {
  const Json* files = index.find("files");
  if (files == nullptr || !files->is_array()) {
    return absl::DataLossError(absl::StrCat(path, ": missing array 'files'"));
  }
  if (static_cast<int64_t>(files->size()) > layout.tp * layout.ep * layout.expert_tp) {
    return absl::DataLossError(
        absl::StrCat(path, ": ", files->size(), " files for layout ", layout.ToString()));
  }
  IndexFiles out;
  for (const Json& f : files->as_array()) {
    if (!f.is_string() || !IsPlainShardName(f.as_string())) {
      return absl::DataLossError(absl::StrCat(
          path, ": files: ", f.Dump(), " is not a .safetensors file name in the folder"));
    }
    if (out.ids.count(f.as_string())) {
      return absl::DataLossError(absl::StrCat(path, ": files: ", f.as_string(), " is listed twice"));
    }
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Open(JoinPath(dir, f.as_string()));
    if (!file.ok()) {
      return absl::Status(file.status().code(), absl::StrCat(path, " names ", f.as_string(), ": ",
                                                             file.status().message()));
    }
    ASSIGN_OR_RETURN(auto places, ReadBlockPlaces(**file));
    out.ids[f.as_string()] = out.files.size();
    out.files.push_back(std::move(*file));
    out.places.push_back(std::move(places));
  }
  return out;
}

// One piece of the index's tensor `t`, checked against its file's header and metadata.
absl::StatusOr<StoredPiece> ReadPiece(const Json& p, const StoredTensor& t,
                                      const IndexFiles& files, const std::string& where) {
  const Json* file = p.is_object() ? p.find("file") : nullptr;
  if (file == nullptr || !file->is_string() || !files.ids.count(file->as_string())) {
    return absl::DataLossError(
        absl::StrCat(where, ": piece ", p.Dump(), " does not name a file of 'files'"));
  }
  StoredPiece piece;
  piece.file = file->as_string();
  ASSIGN_OR_RETURN(int64_t dim, IntField(p, "dim", where));
  ASSIGN_OR_RETURN(piece.parts, IntField(p, "parts", where));
  ASSIGN_OR_RETURN(piece.index, IntField(p, "index", where));
  if (dim < -1 || dim > static_cast<int64_t>(kMaxRank)) {
    return absl::DataLossError(absl::StrCat(where, ": bad split dimension ", dim));
  }
  piece.dim = static_cast<int>(dim);
  RETURN_IF_ERROR(CheckPlace(piece.dim, piece.parts, piece.index, t.shape, where));
  const size_t id = files.ids.at(piece.file);
  const SafetensorsFile& f = *files.files[id];
  piece.info = f.Find(t.name);
  auto place = files.places[id].find(t.name);
  if (piece.info == nullptr || place == files.places[id].end()) {
    return absl::DataLossError(
        absl::StrCat(where, ": its piece ", piece.index, " is not in ", f.path()));
  }
  const std::string in_file = absl::StrCat(f.path(), ": tensor '", t.name, "'");
  if (piece.info->dtype != t.dtype) {
    return absl::DataLossError(absl::StrCat(in_file, ": dtype ", DTypeName(piece.info->dtype),
                                            ", the index says ", DTypeName(t.dtype)));
  }
  const BlockPlace& pl = place->second;
  if (pl.dim != piece.dim || pl.parts != piece.parts || pl.index != piece.index ||
      pl.full_shape != t.shape) {
    return absl::DataLossError(absl::StrCat(
        in_file, ": stored as block ", pl.index, " of ", pl.parts, " along dim ", pl.dim, " of ",
        ShapeString(pl.full_shape), ", the index says block ", piece.index, " of ", piece.parts,
        " along dim ", piece.dim, " of ", ShapeString(t.shape)));
  }
  return piece;
}

// The index's entry for tensor `name`: dtype, full shape and pieces tiling it.
absl::StatusOr<StoredTensor> ReadTensor(const std::string& name, const Json& entry,
                                        const IndexFiles& files, const std::string& path) {
  const std::string where = absl::StrCat(path, ": tensor '", name, "'");
  const Json* dtype = entry.is_object() ? entry.find("dtype") : nullptr;
  const Json* pieces = entry.is_object() ? entry.find("pieces") : nullptr;
  if (dtype == nullptr || !dtype->is_string() || pieces == nullptr || !pieces->is_array()) {
    return absl::DataLossError(absl::StrCat(where, ": expected {\"dtype\", \"shape\", \"pieces\"}"));
  }
  StoredTensor t;
  t.name = name;
  absl::StatusOr<DType> dt = ParseDType(dtype->as_string());
  if (!dt.ok()) return absl::DataLossError(absl::StrCat(where, ": ", dt.status().message()));
  t.dtype = *dt;
  ASSIGN_OR_RETURN(t.shape, ParseShape(entry.find("shape"), t.dtype, where));
  if (pieces->size() > static_cast<size_t>(kMaxLayoutSize)) {
    return absl::DataLossError(absl::StrCat(where, ": too many pieces"));
  }
  for (const Json& p : pieces->as_array()) {
    ASSIGN_OR_RETURN(StoredPiece piece, ReadPiece(p, t, files, where));
    t.pieces.push_back(std::move(piece));
  }
  RETURN_IF_ERROR(CheckTiling(t, where));
  return t;
}

}  // namespace

absl::StatusOr<ShardedCheckpoint> ShardedCheckpoint::Open(const std::string& dir) {
  ShardedCheckpoint ckpt;
  ckpt.dir_ = dir;
  if (!IsSharded(dir)) {
    ASSIGN_OR_RETURN(SafetensorsCheckpoint hf, SafetensorsCheckpoint::Open(dir));
    ckpt.hf_ = std::make_shared<SafetensorsCheckpoint>(std::move(hf));
    for (const std::string& name : ckpt.hf_->Names()) {
      const TensorInfo* info = ckpt.hf_->Find(name);
      std::string file = ckpt.hf_->FileOf(name);
      file = file.substr(file.rfind('/') + 1);
      ckpt.tensors_.push_back({name, info->dtype, info->shape, {{file, -1, 1, 0, info}}});
    }
    return ckpt;
  }
  ckpt.sharded_ = true;
  const std::string path = JoinPath(dir, kShardedIndexName);
  ASSIGN_OR_RETURN(Json index, ReadIndex(path));
  ASSIGN_OR_RETURN(ckpt.layout_, ReadLayout(index, path));
  ASSIGN_OR_RETURN(IndexFiles files, OpenIndexFiles(index, ckpt.layout_, dir, path));
  const Json* tensors = index.find("tensors");
  if (tensors == nullptr || !tensors->is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": missing object 'tensors'"));
  }
  std::set<std::string> names;
  for (const auto& [name, entry] : tensors->as_object()) {
    if (!names.insert(name).second) {
      return absl::DataLossError(absl::StrCat(path, ": tensor '", name, "' is listed twice"));
    }
    ASSIGN_OR_RETURN(StoredTensor t, ReadTensor(name, entry, files, path));
    ckpt.tensors_.push_back(std::move(t));
  }
  // Every tensor of every file is some piece of the index.
  std::set<std::pair<std::string, std::string>> listed;
  for (const StoredTensor& t : ckpt.tensors_) {
    for (const StoredPiece& p : t.pieces) listed.insert({p.file, t.name});
  }
  for (const auto& [name, id] : files.ids) {
    for (const TensorInfo& info : files.files[id]->tensors()) {
      if (!listed.count({name, info.name})) {
        return absl::DataLossError(absl::StrCat(files.files[id]->path(), ": tensor '", info.name,
                                                "' is not listed for this file in ",
                                                kShardedIndexName));
      }
    }
  }
  ckpt.files_ = std::move(files.files);
  std::sort(ckpt.tensors_.begin(), ckpt.tensors_.end(),
            [](const StoredTensor& a, const StoredTensor& b) { return a.name < b.name; });
  return ckpt;
}

std::vector<std::string> ShardedCheckpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const StoredTensor& t : tensors_) names.push_back(t.name);
  return names;
}

const StoredTensor* ShardedCheckpoint::Find(absl::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const StoredTensor& t, absl::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

std::string ShardedCheckpoint::FileOf(absl::string_view name) const {
  const StoredTensor* t = Find(name);
  if (t == nullptr) return dir_;
  const std::string first = JoinPath(dir_, t->pieces[0].file);
  if (t->pieces.size() == 1) return first;
  return absl::StrCat(first, " (and ", t->pieces.size() - 1, " more files)");
}

absl::Status ShardedCheckpoint::ReadBlock(const std::string& name, const TensorShard& want,
                                          void* out, size_t nbytes) const {
  const StoredTensor* t = Find(name);
  if (t == nullptr) {
    return absl::NotFoundError(absl::StrCat(dir_, ": checkpoint lacks tensor '", name, "'"));
  }
  const std::string where = absl::StrCat(FileOf(name), ": tensor '", name, "'");
  if (!want.held) return absl::InvalidArgumentError(absl::StrCat(where, ": no block is asked for"));
  if (!want.whole() && (want.parts < 1 || want.index < 0 || want.index >= want.parts)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": block ", want.index, " of ",
                                                   want.parts, " does not exist"));
  }
  const int want_dim = want.whole() ? -1 : want.dim;
  const int stored_dim = t->pieces[0].parts == 1 ? -1 : t->pieces[0].dim;
  if (want_dim >= 0 && stored_dim >= 0 && want_dim != stored_dim) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": stored split along dim ", stored_dim,
                                                   ", asked for a block along dim ", want_dim));
  }
  const int d = want_dim >= 0 ? want_dim : stored_dim;
  const size_t elem = DTypeSize(t->dtype);
  if (d >= static_cast<int>(t->shape.size())) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": shape ", ShapeString(t->shape),
                                                   " has no dimension ", d));
  }
  // View the tensor as [outer, full, inner bytes] around the split dimension.
  const int64_t full = d < 0 ? 1 : t->shape[d];
  if (want_dim >= 0 && full % want.parts != 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", want.parts,
                                                   " parts do not divide dimension ", d, " of ",
                                                   ShapeString(t->shape)));
  }
  int64_t outer = 1, inner = static_cast<int64_t>(elem);
  for (int i = 0; i < static_cast<int>(t->shape.size()); ++i) {
    if (d >= 0 && i < d) outer *= t->shape[i];
    if (d < 0 || i > d) inner *= t->shape[i];
  }
  const int64_t tb = want_dim >= 0 ? want.begin(full) : 0;
  const int64_t tl = want_dim >= 0 ? want.length(full) : full;
  if (static_cast<size_t>(outer * tl * inner) != nbytes) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": the block needs ", outer * tl * inner,
                                                   " bytes, the buffer has ", nbytes));
  }
  uint8_t* dst = static_cast<uint8_t*>(out);
  for (const StoredPiece& p : t->pieces) {
    const int64_t sb = stored_dim >= 0 ? full / p.parts * p.index : 0;
    const int64_t sl = stored_dim >= 0 ? full / p.parts : full;
    const int64_t lo = std::max(tb, sb), hi = std::min(tb + tl, sb + sl);
    if (lo >= hi) continue;
    const uint8_t* src = p.info->data;
    for (int64_t o = 0; o < outer; ++o) {
      std::memcpy(dst + (o * tl + lo - tb) * inner, src + (o * sl + lo - sb) * inner,
                  static_cast<size_t>((hi - lo) * inner));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorBlock> ShardedCheckpoint::ReadBlock(const std::string& name,
                                                         const TensorShard& shard) const {
  const StoredTensor* t = Find(name);
  if (t == nullptr) {
    return absl::NotFoundError(absl::StrCat(dir_, ": checkpoint lacks tensor '", name, "'"));
  }
  TensorBlock block;
  block.name = name;
  block.dtype = t->dtype;
  block.full_shape = t->shape;
  block.shard = shard;
  block.shape = shard.LocalShape(t->shape);
  int64_t bytes = static_cast<int64_t>(DTypeSize(t->dtype));
  for (int64_t d : block.shape) bytes *= d;
  block.data.resize(static_cast<size_t>(bytes));
  RETURN_IF_ERROR(ReadBlock(name, shard, block.data.data(), block.data.size()));
  return block;
}

absl::StatusOr<std::vector<TensorBlock>> ShardedCheckpoint::ReadShards(
    const ModelConfig& model, const ShardCoords& coords) const {
  RETURN_IF_ERROR(coords.CheckModel(model));
  for (const auto& [name, shape] : ModelTensorShapes(model)) {
    const StoredTensor* t = Find(name);
    if (t == nullptr) {
      return absl::NotFoundError(absl::StrCat(dir_, ": checkpoint lacks tensor '", name,
                                              "' (expected shape ", ShapeString(shape), ")"));
    }
    if (t->shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(FileOf(name), ": tensor '", name,
                                                     "' has shape ", ShapeString(t->shape),
                                                     ", the config needs ", ShapeString(shape)));
    }
  }
  std::vector<TensorBlock> out;
  for (const StoredTensor& t : tensors_) {
    if (model.tie_word_embeddings && t.name == "lm_head.weight") continue;
    absl::StatusOr<TensorShard> shard = CheckpointShardOf(t.name, model, coords);
    if (!shard.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(FileOf(t.name), ": unexpected tensor '", t.name, "' (",
                       shard.status().message(), ")"));
    }
    if (!shard->held) continue;
    ASSIGN_OR_RETURN(TensorBlock block, ReadBlock(t.name, *shard));
    out.push_back(std::move(block));
  }
  return out;
}

}  // namespace lightrl
