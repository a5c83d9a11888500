#include "rl/sharded_weights.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/status.h"
#include "policy/sharded_checkpoint.h"

namespace lightrl {
namespace {

void PutU64(std::string* out, uint64_t v) { out->append(reinterpret_cast<const char*>(&v), 8); }

bool GetU64(const std::string& in, size_t* pos, uint64_t* v) {
  if (*pos + 8 > in.size()) return false;
  std::memcpy(v, in.data() + *pos, 8);
  *pos += 8;
  return true;
}

bool GetBytes(const std::string& in, size_t* pos, std::string* s) {
  uint64_t n = 0;
  if (!GetU64(in, pos, &n) || n > in.size() - *pos) return false;
  s->assign(in.data() + *pos, n);
  *pos += n;
  return true;
}

void PutBytes(std::string* out, const std::string& s) {
  PutU64(out, s.size());
  out->append(s);
}

bool SameBlock(const TensorShard& a, const TensorShard& b) {
  return a.held == b.held && (a.whole() ? b.whole()
                                        : a.dim == b.dim && a.parts == b.parts && a.index == b.index);
}

// Whether `rank` is the lowest rank holding its block of `name`. The dense layout (TP) and
// the experts' (EP x expert-TP) lie over the same ranks, so not every combination of
// coordinates is some rank's: the first holder of each block, whoever it is, sends it.
absl::StatusOr<bool> FirstHolder(const std::string& name, const ModelConfig& model,
                                 const std::vector<ShardCoords>& coords, int64_t rank) {
  ASSIGN_OR_RETURN(TensorShard mine, CheckpointShardOf(name, model, coords[rank]));
  if (!mine.held) return false;
  for (int64_t q = 0; q < rank; ++q) {
    if (coords[q] == coords[rank]) return false;  // a DP copy of this rank's shard
    ASSIGN_OR_RETURN(TensorShard there, CheckpointShardOf(name, model, coords[q]));
    if (SameBlock(mine, there)) return false;
  }
  return true;
}

// The local tensors of which this rank is the first holder, as name/bytes pairs.
absl::StatusOr<std::string> EncodeWrittenBlocks(const PolicyModel& shard,
                                                const std::vector<ShardCoords>& coords,
                                                int64_t rank) {
  std::string out;
  ASSIGN_OR_RETURN(std::vector<PolicyModel::WeightTensor> local,
                   shard.ExportLocalWeights(DType::kF32));
  std::vector<const PolicyModel::WeightTensor*> written;
  for (const auto& w : local) {
    ASSIGN_OR_RETURN(bool writes, FirstHolder(w.name, shard.config(), coords, rank));
    if (writes) written.push_back(&w);
  }
  PutU64(&out, written.size());
  for (const auto* w : written) {
    PutBytes(&out, w->name);
    PutBytes(&out, w->data);
  }
  return out;
}

// Copies block `block` (FP32, the block's shape) of a tensor of `full` shape into `dst`.
void PlaceBlock(const TensorShard& block, const std::vector<int64_t>& full, const std::string& src,
                std::string* dst) {
  if (block.dim < 0) {
    dst->replace(0, src.size(), src);
    return;
  }
  int64_t outer = 1, inner = sizeof(float);
  for (int d = 0; d < block.dim; ++d) outer *= full[d];
  for (size_t d = block.dim + 1; d < full.size(); ++d) inner *= full[d];
  const int64_t extent = full[block.dim];
  const int64_t begin = block.begin(extent), length = block.length(extent);
  for (int64_t o = 0; o < outer; ++o) {
    std::memcpy(&(*dst)[(o * extent + begin) * inner], &src[o * length * inner],
                static_cast<size_t>(length * inner));
  }
}

}  // namespace

absl::StatusOr<std::vector<ShardCoords>> AllShardCoords(ProcessGroup* group,
                                                        const PolicyModel& shard) {
  std::vector<ShardCoords> all(group->world_size());
  for (int64_t r = 0; r < group->world_size(); ++r) {
    std::string bytes;
    if (r == group->rank()) {
      const ShardCoords& c = shard.shard();
      for (int64_t v : {c.tp, c.tp_rank, c.ep, c.ep_rank, c.expert_tp, c.expert_tp_rank}) {
        PutU64(&bytes, static_cast<uint64_t>(v));
      }
    }
    RETURN_IF_ERROR(group->BroadcastBytes(&bytes, r));
    uint64_t v[6];
    size_t pos = 0;
    for (uint64_t& x : v) {
      if (!GetU64(bytes, &pos, &x)) {
        return absl::DataLossError(absl::StrCat("malformed shard coordinates from rank ", r));
      }
    }
    all[r] = ShardCoords{static_cast<int64_t>(v[0]), static_cast<int64_t>(v[1]),
                         static_cast<int64_t>(v[2]), static_cast<int64_t>(v[3]),
                         static_cast<int64_t>(v[4]), static_cast<int64_t>(v[5])};
  }
  return all;
}

absl::Status GatherShards(ProcessGroup* group, const PolicyModel& shard, PolicyModel* whole) {
  if (group->rank() == 0 && whole == nullptr) {
    return absl::InternalError("GatherShards: rank 0 has no whole model");
  }
  std::vector<PolicyModel::WeightTensor> tensors;
  RETURN_IF_ERROR(GatherShardsToHost(group, shard, &tensors));
  if (group->rank() != 0) return absl::OkStatus();
  return whole->ImportWeights(DType::kF32, tensors);
}

absl::Status GatherShardsToHost(ProcessGroup* group, const PolicyModel& shard,
                                std::vector<PolicyModel::WeightTensor>* whole) {
  ASSIGN_OR_RETURN(std::vector<ShardCoords> coords, AllShardCoords(group, shard));
  ASSIGN_OR_RETURN(std::string mine, EncodeWrittenBlocks(shard, coords, group->rank()));
  const bool root = group->rank() == 0;
  // The whole tensors being assembled on rank 0, FP32, and how many bytes each got.
  const ModelConfig& model = shard.config();
  std::map<std::string, std::vector<int64_t>> shapes;
  std::map<std::string, std::string> full;
  std::map<std::string, size_t> filled;
  if (root) {
    if (whole == nullptr) return absl::InternalError("GatherShardsToHost: rank 0 has no output");
    // The last version goes first, so that one whole model's bytes are held at a time (a
    // failed gather leaves none: the learner call fails with it).
    std::vector<PolicyModel::WeightTensor>().swap(*whole);
    for (const auto& [name, shape] : ModelTensorShapes(model)) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      shapes[name] = shape;
      full[name].assign(static_cast<size_t>(n) * sizeof(float), '\0');
      filled[name] = 0;
    }
  }
  // Each rank's blocks go to rank 0 alone (point to point), rank 0's own in place.
  if (!root) return group->SendBytes(mine, 0);
  for (int64_t r = 0; r < group->world_size(); ++r) {
    std::string bytes;
    if (r == 0) {
      bytes = std::move(mine);
    } else {
      RETURN_IF_ERROR(group->RecvBytes(&bytes, r));
    }
    size_t pos = 0;
    uint64_t count = 0;
    const auto bad = [&] {
      return absl::DataLossError(absl::StrCat("malformed weight blocks from rank ", r));
    };
    if (!GetU64(bytes, &pos, &count)) return bad();
    for (uint64_t i = 0; i < count; ++i) {
      std::string name, data;
      if (!GetBytes(bytes, &pos, &name) || !GetBytes(bytes, &pos, &data)) return bad();
      auto it = full.find(name);
      if (it == full.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "gathering weights: rank ", r, " sent '", name, "', which the whole model lacks"));
      }
      ASSIGN_OR_RETURN(TensorShard block, ShardOf(name, model, coords[r]));
      const std::vector<int64_t> local = block.LocalShape(shapes[name]);
      int64_t n = 1;
      for (int64_t d : local) n *= d;
      if (data.size() != static_cast<size_t>(n) * sizeof(float)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "gathering weights: rank ", r, " (", coords[r].ToString(), ") sent ", data.size(),
            " bytes of '", name, "', its block ", ShapeString(local), " needs ", n * 4));
      }
      PlaceBlock(block, shapes[name], data, &it->second);
      filled[name] += data.size();
    }
  }
  std::vector<PolicyModel::WeightTensor> tensors;
  for (auto& [name, data] : full) {
    if (filled[name] != data.size()) {
      return absl::InternalError(absl::StrCat("gathering weights: '", name, "' got ",
                                              filled[name], " of ", data.size(), " bytes"));
    }
    tensors.push_back({name, shapes[name], std::move(data)});
  }
  *whole = std::move(tensors);
  return absl::OkStatus();
}

absl::Status SaveShards(ProcessGroup* group, const PolicyModel& shard, const std::string& dir,
                        DType dtype) {
  ASSIGN_OR_RETURN(std::vector<ShardCoords> coords, AllShardCoords(group, shard));
  const ModelConfig& model = shard.config();
  // The checkpoint has one file per coordinate of the layout (tp x ep x expert_tp), each
  // with the blocks the format puts there (WritesBlock). When the dense and expert layouts
  // share ranks, a coordinate may be no rank's own: its file is written by the lowest rank
  // that holds every block of it (a file of TP blocks by a rank of that TP index, a file of
  // expert blocks by a rank of that EP index).
  std::vector<TensorData> views;
  std::vector<PolicyModel::WeightTensor> local;
  for (const ShardCoords& file : LayoutOf(shard.shard()).AllCoords()) {
    std::vector<std::string> names;
    for (const auto& [name, shape] : ModelTensorShapes(model)) {
      ASSIGN_OR_RETURN(bool writes, WritesBlock(name, model, file));
      if (writes) names.push_back(name);
    }
    int64_t writer = -1;
    for (int64_t r = 0; r < group->world_size() && writer < 0; ++r) {
      bool holds = true;
      for (const std::string& name : names) {
        ASSIGN_OR_RETURN(TensorShard want, CheckpointShardOf(name, model, file));
        ASSIGN_OR_RETURN(TensorShard has, CheckpointShardOf(name, model, coords[r]));
        if (!SameBlock(want, has)) {
          holds = false;
          break;
        }
      }
      if (holds) writer = r;
    }
    if (writer < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          dir, ": no learner rank holds every block of ", ShardFileName(file)));
    }
    if (writer != group->rank()) continue;
    if (local.empty()) {
      ASSIGN_OR_RETURN(local, shard.ExportLocalWeights(dtype));
    }
    views.clear();
    for (const auto& w : local) {
      if (std::find(names.begin(), names.end(), w.name) == names.end()) continue;
      views.push_back({w.name, dtype, w.shape, w.data.data(), w.data.size()});
    }
    RETURN_IF_ERROR(WriteRankShards(dir, model, file, views));
  }
  RETURN_IF_ERROR(group->Barrier());
  if (group->rank() != 0) return absl::OkStatus();
  RETURN_IF_ERROR(WriteShardedIndex(dir, model, LayoutOf(shard.shard())));
  Json config = model.ToJson();
  config.set("dtype", Json(dtype == DType::kBF16 ? "bfloat16" : "float32"));
  return WriteFileAtomic(JoinPath(dir, "config.json"), config.Dump(2) + "\n");
}

}  // namespace lightrl
