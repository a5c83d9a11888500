#include "policy/sharded_checkpoint.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/json.h"
#include "tests/test_models.h"

namespace lightrl {
namespace {

struct FullTensor {
  DType dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};
using FullModel = std::map<std::string, FullTensor>;

// Every tensor of `m` (and two of transformers' decay buffers per lightning layer) with
// fresh random bytes: norms and decay buffers F32, the rest BF16, as a bf16 checkpoint.
FullModel RandomModel(const ModelConfig& m, std::mt19937& rng) {
  FullModel full;
  auto add = [&](const std::string& name, DType dtype, std::vector<int64_t> shape) {
    int64_t n = static_cast<int64_t>(DTypeSize(dtype));
    for (int64_t d : shape) n *= d;
    std::string bytes(static_cast<size_t>(n), '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    full[name] = {dtype, std::move(shape), std::move(bytes)};
  };
  for (const auto& [name, shape] : ModelTensorShapes(m)) {
    add(name, absl::StrContains(name, "norm") ? DType::kF32 : DType::kBF16, shape);
  }
  for (int64_t l = 0; l < m.num_hidden_layers; ++l) {
    if (!m.is_lightning(l)) continue;
    const std::string p = absl::StrCat("model.layers.", l, ".self_attn.");
    add(p + "slope_rate", DType::kF32, {m.num_attention_heads, 1, 1});
    add(p + "diagonal_decay", DType::kF32, {1, m.num_attention_heads, m.block_size, m.block_size});
  }
  return full;
}

// The block of `t` that `shard` names, element by element from its multi-index (an oracle
// independent of the reader's row copies).
std::string DirectSlice(const FullTensor& t, const TensorShard& shard) {
  const std::vector<int64_t> local = shard.LocalShape(t.shape);
  const size_t elem = DTypeSize(t.dtype);
  int64_t n = 1;
  for (int64_t d : local) n *= d;
  std::string out;
  std::vector<int64_t> idx(local.size(), 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t flat = 0;
    for (size_t d = 0; d < local.size(); ++d) {
      int64_t pos = idx[d];
      if (!shard.whole() && static_cast<int>(d) == shard.dim) pos += shard.begin(t.shape[d]);
      flat = flat * t.shape[d] + pos;
    }
    out.append(t.bytes, static_cast<size_t>(flat) * elem, elem);
    for (int64_t d = static_cast<int64_t>(local.size()) - 1; d >= 0; --d) {
      if (++idx[d] < local[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

// The tensors the rank at `coords` holds, sliced from `full`.
std::vector<TensorBlock> LocalBlocks(const FullModel& full, const ModelConfig& m,
                                     const ShardCoords& coords) {
  std::vector<TensorBlock> out;
  for (const auto& [name, t] : full) {
    auto shard = CheckpointShardOf(name, m, coords);
    EXPECT_TRUE(shard.ok()) << shard.status();
    if (!shard.ok() || !shard->held) continue;
    out.push_back({name, t.dtype, shard->LocalShape(t.shape), t.shape, *shard,
                   DirectSlice(t, *shard)});
  }
  return out;
}

// Writes `full` under `layout` with `dp` data-parallel copies of every rank, each rank as
// a process of the run would: the first of each coordinates writes, then one the index.
void WriteLayout(const std::string& dir, const FullModel& full, const ModelConfig& m,
                 const ShardLayout& layout, int64_t dp) {
  std::vector<ShardCoords> world;
  for (int64_t copy = 0; copy < dp; ++copy) {
    for (const ShardCoords& c : layout.AllCoords()) world.push_back(c);
  }
  const std::vector<bool> writers = ShardWriters(world);
  int64_t count = 0;
  for (size_t r = 0; r < world.size(); ++r) {
    if (!writers[r]) continue;
    ++count;
    std::vector<TensorBlock> blocks = LocalBlocks(full, m, world[r]);
    std::vector<TensorData> views;
    for (const TensorBlock& b : blocks) views.push_back(b.view());
    ASSERT_TRUE(WriteRankShards(dir, m, world[r], views).ok());
  }
  ASSERT_EQ(count, static_cast<int64_t>(layout.AllCoords().size()));
  absl::Status s = WriteShardedIndex(dir, m, layout);
  ASSERT_TRUE(s.ok()) << s;
}

// Every rank of `layout` reads its blocks from `ckpt`: the same bytes as slicing `full`.
void ExpectReadsUnder(const ShardedCheckpoint& ckpt, const FullModel& full, const ModelConfig& m,
                      const ShardLayout& layout) {
  for (const ShardCoords& c : layout.AllCoords()) {
    SCOPED_TRACE(absl::StrCat(ckpt.dir(), " read at ", c.ToString()));
    auto blocks = ckpt.ReadShards(m, c);
    ASSERT_TRUE(blocks.ok()) << blocks.status();
    std::vector<TensorBlock> want = LocalBlocks(full, m, c);
    ASSERT_EQ(blocks->size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      const TensorBlock& got = (*blocks)[i];
      ASSERT_EQ(got.name, want[i].name);
      EXPECT_EQ(got.dtype, want[i].dtype) << got.name;
      EXPECT_EQ(got.shape, want[i].shape) << got.name;
      EXPECT_EQ(got.full_shape, want[i].full_shape) << got.name;
      EXPECT_TRUE(got.data == want[i].data) << got.name << " bytes differ";
    }
  }
}

const std::vector<ShardLayout>& Layouts() {
  static const std::vector<ShardLayout> layouts = {
      {1, 1, 1}, {2, 1, 1}, {1, 2, 1}, {1, 4, 1}, {1, 1, 2},
      {1, 2, 2}, {2, 2, 1}, {2, 2, 2}, {2, 4, 2},
  };
  return layouts;
}

class ShardedCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lightrl_shards_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    model_ = TinyParallelConfig();
    full_ = RandomModel(model_, rng_);
  }
  void TearDown() override { EXPECT_TRUE(RemoveTree(dir_).ok()); }

  std::string Sub(const std::string& name) { return JoinPath(dir_, name); }

  // A checkpoint of `layout` under DIR/name.
  std::string Written(const std::string& name, const ShardLayout& layout) {
    const std::string dir = Sub(name);
    WriteLayout(dir, full_, model_, layout, /*dp=*/2);
    return dir;
  }

  // Rewrites DIR's index through `edit`.
  void EditIndex(const std::string& dir, const std::function<void(Json&)>& edit) {
    const std::string path = JoinPath(dir, kShardedIndexName);
    auto text = ReadFile(path);
    ASSERT_TRUE(text.ok());
    auto json = Json::Parse(*text);
    ASSERT_TRUE(json.ok());
    edit(*json);
    ASSERT_TRUE(WriteFileAtomic(path, json->Dump(2)).ok());
  }

  Json& TensorEntry(Json& index, const std::string& name) {
    for (auto& [key, value] : index.as_object()) {
      if (key != "tensors") continue;
      for (auto& [tensor, entry] : value.as_object()) {
        if (tensor == name) return entry;
      }
    }
    ADD_FAILURE() << "no tensor " << name;
    return index;
  }

  Json& Field(Json& obj, const std::string& key) {
    for (auto& [k, v] : obj.as_object()) {
      if (k == key) return v;
    }
    ADD_FAILURE() << "no key " << key;
    return obj;
  }

  void ExpectOpenFails(const std::string& dir, const std::vector<std::string>& parts) {
    auto ckpt = ShardedCheckpoint::Open(dir);
    ASSERT_FALSE(ckpt.ok()) << "opened a broken checkpoint";
    for (const std::string& part : parts) {
      EXPECT_TRUE(absl::StrContains(ckpt.status().message(), part))
          << ckpt.status() << " lacks \"" << part << "\"";
    }
  }

  std::mt19937 rng_{std::random_device{}()};
  std::string dir_;
  ModelConfig model_;
  FullModel full_;
};

TEST_F(ShardedCheckpointTest, EveryLayoutReadsBackUnderEveryLayout) {
  for (size_t w = 0; w < Layouts().size(); ++w) {
    const ShardLayout& written = Layouts()[w];
    SCOPED_TRACE(absl::StrCat("written as ", written.ToString()));
    const std::string dir = Written(absl::StrCat("w", w), written);
    auto ckpt = ShardedCheckpoint::Open(dir);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    EXPECT_TRUE(ckpt->sharded());
    EXPECT_EQ(ckpt->layout(), written);
    std::vector<std::string> names;
    for (const auto& [name, t] : full_) names.push_back(name);
    EXPECT_EQ(ckpt->Names(), names);
    for (const ShardLayout& read : Layouts()) ExpectReadsUnder(*ckpt, full_, model_, read);
  }
}

TEST_F(ShardedCheckpointTest, EachBlockIsWrittenOnce) {
  const std::string dir = Written("c", {2, 2, 2});
  auto ckpt = ShardedCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  int64_t stored = 0, full = 0;
  for (const std::string& name : ckpt->Names()) {
    const StoredTensor* t = ckpt->Find(name);
    for (const StoredPiece& p : t->pieces) stored += static_cast<int64_t>(p.info->nbytes);
    full += static_cast<int64_t>(full_[name].bytes.size());
  }
  EXPECT_EQ(stored, full);
  // A whole tensor sits in the tp 0 / ep 0 / expert_tp 0 file, an expert's block with tp 0.
  EXPECT_EQ(ckpt->Find("model.norm.weight")->pieces[0].file, "model-tp0of2-ep0of2-etp0of2.safetensors");
  const StoredTensor* w2 = ckpt->Find("model.layers.1.block_sparse_moe.experts.3.w2.weight");
  ASSERT_EQ(w2->pieces.size(), 2u);
  EXPECT_EQ(w2->pieces[0].dim, 1);
  EXPECT_EQ(w2->pieces[1].file, "model-tp0of2-ep1of2-etp1of2.safetensors");
}

TEST_F(ShardedCheckpointTest, HuggingFaceFoldersReadUnderEveryLayout) {
  std::vector<TensorData> tensors;
  for (const auto& [name, t] : full_) {
    tensors.push_back({name, t.dtype, t.shape, t.bytes.data(), t.bytes.size()});
  }
  ASSERT_TRUE(WriteSafetensorsCheckpoint(Sub("single"), tensors).ok());
  ASSERT_TRUE(WriteSafetensorsCheckpoint(Sub("sharded"), tensors, /*max_shard_bytes=*/2048).ok());
  ASSERT_TRUE(FileExists(JoinPath(Sub("sharded"), "model.safetensors.index.json")));
  for (const std::string& dir : {Sub("single"), Sub("sharded")}) {
    auto ckpt = ShardedCheckpoint::Open(dir);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    EXPECT_FALSE(ckpt->sharded());
    for (const ShardLayout& read : Layouts()) ExpectReadsUnder(*ckpt, full_, model_, read);
  }
}

TEST_F(ShardedCheckpointTest, RewritingUnderAnotherLayoutRemovesTheOldFiles) {
  const std::string dir = Written("r", {2, 4, 2});
  WriteLayout(dir, full_, model_, {1, 2, 1}, 1);
  std::vector<std::string> files;
  DIR* d = ::opendir(dir.c_str());
  ASSERT_NE(d, nullptr);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') files.push_back(e->d_name);
  }
  ::closedir(d);
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"model-tp0of1-ep0of2-etp0of1.safetensors",
                                             "model-tp0of1-ep1of2-etp0of1.safetensors",
                                             std::string(kShardedIndexName)}));
  auto ckpt = ShardedCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ExpectReadsUnder(*ckpt, full_, model_, {2, 2, 2});
}

TEST_F(ShardedCheckpointTest, LayoutSpelling) {
  auto layout = ShardLayout::Parse("ep=4,tp=2");
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(*layout, (ShardLayout{2, 4, 1}));
  EXPECT_EQ(layout->ToString(), "tp=2,ep=4,expert_tp=1");
  EXPECT_EQ(ShardLayout::Parse(layout->ToString()).value(), *layout);
  for (const char* bad : {"tp=2,tp=2", "tp=0", "pp=2", "tp=x", "tp", ""}) {
    EXPECT_FALSE(ShardLayout::Parse(bad).ok()) << bad;
  }
  EXPECT_TRUE(absl::StrContains(ShardLayout::Parse("tp=two").status().message(), "tp"));
}

TEST_F(ShardedCheckpointTest, WritersAreTheFirstRankOfEachCoordinates) {
  ShardLayout layout{2, 2, 1};
  std::vector<ShardCoords> world;
  for (int copy = 0; copy < 3; ++copy) {
    for (const ShardCoords& c : layout.AllCoords()) world.push_back(c);
  }
  std::vector<bool> writers = ShardWriters(world);
  for (size_t r = 0; r < world.size(); ++r) EXPECT_EQ(writers[r], r < 4) << r;
}

TEST_F(ShardedCheckpointTest, RankTensorsAreChecked) {
  const ShardCoords coords{2, 1, 2, 0, 1, 0};
  std::vector<TensorBlock> blocks = LocalBlocks(full_, model_, coords);
  std::vector<TensorData> views;
  for (const TensorBlock& b : blocks) views.push_back(b.view());
  // A block of the wrong size.
  std::vector<TensorData> bad = views;
  for (TensorData& t : bad) {
    if (t.name == "model.embed_tokens.weight") {
      t.shape = {48, 16};
      t.nbytes = 48 * 16 * 2;
      t.data = full_[t.name].bytes.data();
    }
  }
  absl::Status s = WriteRankShards(dir_, model_, coords, bad);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "model.embed_tokens.weight")) << s;
  // An expert of another EP rank.
  bad = views;
  const FullTensor& other = full_["model.layers.0.block_sparse_moe.experts.3.w1.weight"];
  bad.push_back({"model.layers.0.block_sparse_moe.experts.3.w1.weight", other.dtype, other.shape,
                 other.bytes.data(), other.bytes.size()});
  s = WriteRankShards(dir_, model_, coords, bad);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "does not hold")) << s;
  // The index refuses a layout whose files are not all there.
  ASSERT_TRUE(WriteRankShards(dir_, model_, coords, views).ok());
  s = WriteShardedIndex(dir_, model_, {2, 2, 1});
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "model-tp0of2-ep0of2-etp0of1.safetensors")) << s;
  EXPECT_FALSE(FileExists(JoinPath(dir_, kShardedIndexName)));
}

TEST_F(ShardedCheckpointTest, TruncatedFileIsAnError) {
  const std::string dir = Written("t", {2, 2, 1});
  const std::string file = JoinPath(dir, "model-tp1of2-ep0of2-etp0of1.safetensors");
  struct stat st;
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  ASSERT_EQ(::truncate(file.c_str(), st.st_size - 7), 0);
  ExpectOpenFails(dir, {"model-tp1of2-ep0of2-etp0of1.safetensors", "truncated"});
}

TEST_F(ShardedCheckpointTest, MissingFileIsAnError) {
  const std::string dir = Written("m", {1, 2, 1});
  ASSERT_EQ(::unlink(JoinPath(dir, "model-tp0of1-ep1of2-etp0of1.safetensors").c_str()), 0);
  ExpectOpenFails(dir, {"model-tp0of1-ep1of2-etp0of1.safetensors", "no such file"});
}

TEST_F(ShardedCheckpointTest, PieceRemovedFromTheIndexIsAnError) {
  const std::string dir = Written("p", {2, 1, 1});
  EditIndex(dir, [&](Json& index) {
    Json& pieces = Field(TensorEntry(index, "lm_head.weight"), "pieces");
    pieces.as_array().pop_back();
  });
  ExpectOpenFails(dir, {"lm_head.weight", "piece 1 of 2 is missing"});
}

TEST_F(ShardedCheckpointTest, ShapeLieInTheIndexIsAnError) {
  const std::string dir = Written("s", {2, 1, 1});
  EditIndex(dir, [&](Json& index) {
    Json& shape = Field(TensorEntry(index, "model.embed_tokens.weight"), "shape");
    shape = Json::MakeArray();
    shape.push_back(Json(int64_t{96}));
    shape.push_back(Json(int64_t{16}));
  });
  ExpectOpenFails(dir, {"model.embed_tokens.weight", "[96, 16]", "[48, 16]"});
}

TEST_F(ShardedCheckpointTest, ShapeLieInAFileIsAnError) {
  const std::string dir = Written("f", {1, 1, 2});
  // Rewrite one file with a block whose header shape disagrees with its recorded place.
  const std::string path = JoinPath(dir, "model-tp0of1-ep0of1-etp1of2.safetensors");
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  std::vector<TensorData> tensors;
  for (const TensorInfo& t : (*file)->tensors()) {
    std::vector<int64_t> shape = t.shape;
    if (t.name == "model.layers.2.block_sparse_moe.experts.1.w1.weight") {
      shape = {shape[0] / 2, shape[1] * 2};
    }
    tensors.push_back({t.name, t.dtype, shape, t.data, t.nbytes});
  }
  const std::map<std::string, std::string> meta = (*file)->metadata();
  const std::string copy = path + ".new";
  ASSERT_TRUE(WriteSafetensors(copy, tensors, meta).ok());
  file->reset();
  ASSERT_EQ(::rename(copy.c_str(), path.c_str()), 0);
  ExpectOpenFails(dir, {path, "model.layers.2.block_sparse_moe.experts.1.w1.weight", "[2, 32]"});
}

TEST_F(ShardedCheckpointTest, DtypeMismatchIsAnError) {
  const std::string dir = Written("d", {1, 1, 1});
  EditIndex(dir, [&](Json& index) {
    Field(TensorEntry(index, "model.norm.weight"), "dtype") = Json("F16");
  });
  ExpectOpenFails(dir, {"model.norm.weight", "dtype F32", "F16"});
}

TEST_F(ShardedCheckpointTest, PieceOutsideItsTensorIsAnError) {
  const std::string dir = Written("o", {2, 1, 1});
  EditIndex(dir, [&](Json& index) {
    Json& pieces = Field(TensorEntry(index, "lm_head.weight"), "pieces");
    Field(pieces.as_array()[1], "index") = Json(int64_t{2});
  });
  ExpectOpenFails(dir, {"lm_head.weight", "piece 2 is outside the tensor's 2 parts"});
}

TEST_F(ShardedCheckpointTest, OverlappingPiecesAreAnError) {
  const std::string dir = Written("v", {2, 1, 1});
  EditIndex(dir, [&](Json& index) {
    Json& pieces = Field(TensorEntry(index, "lm_head.weight"), "pieces");
    pieces.as_array()[1] = pieces.as_array()[0];
  });
  ExpectOpenFails(dir, {"lm_head.weight", "given twice"});
}

TEST_F(ShardedCheckpointTest, IndexNamingAFileOutsideTheFolderIsAnError) {
  const std::string dir = Written("x", {2, 1, 1});
  EditIndex(dir, [&](Json& index) {
    Field(index, "files").as_array()[1] = Json("../elsewhere.safetensors");
  });
  ExpectOpenFails(dir, {"../elsewhere.safetensors", "not a .safetensors file name"});
}

TEST_F(ShardedCheckpointTest, ReadBlockIntoACallersBufferChecksTheRequest) {
  const std::string dir = Written("b", {2, 1, 1});
  auto ckpt = ShardedCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  const std::string name = "model.layers.0.self_attn.out_proj.weight";  // [16, 16] by columns
  const FullTensor& t = full_[name];
  // Four column blocks from two stored ones: each a block of a block.
  for (int64_t i = 0; i < 4; ++i) {
    const TensorShard shard{true, 1, 4, i};
    std::string buf(t.bytes.size() / 4, '\0');
    ASSERT_TRUE(ckpt->ReadBlock(name, shard, buf.data(), buf.size()).ok());
    EXPECT_TRUE(buf == DirectSlice(t, shard)) << i;
  }
  std::string buf(t.bytes.size() / 2, '\0');
  absl::Status s = ckpt->ReadBlock(name, TensorShard{true, 1, 4, 0}, buf.data(), buf.size());
  EXPECT_TRUE(absl::StrContains(s.message(), "the buffer has")) << s;
  s = ckpt->ReadBlock(name, TensorShard{true, 1, 2, 2}, buf.data(), buf.size());
  EXPECT_TRUE(absl::StrContains(s.message(), "block 2 of 2 does not exist")) << s;
  s = ckpt->ReadBlock(name, TensorShard{true, 0, 2, 0}, buf.data(), buf.size());
  EXPECT_TRUE(absl::StrContains(s.message(), "stored split along dim 1")) << s;
  s = ckpt->ReadBlock("model.nothing", TensorShard{}, buf.data(), buf.size());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
}

TEST_F(ShardedCheckpointTest, ReadingChecksTheModel) {
  const std::string dir = Written("k", {1, 1, 1});
  auto ckpt = ShardedCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  ModelConfig wider = model_;
  wider.vocab_size = 64;
  auto r = ckpt->ReadShards(wider, {});
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "has shape [48, 16], the config needs [64, 16]"))
      << r.status();
}

}  // namespace
}  // namespace lightrl
