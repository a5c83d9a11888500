"""`lightrl rollout-worker --tp 2`, then `--ep 2`, then both: a tensor-parallel rollout
instance of two processes, an expert-parallel one (each rank holding half the experts),
and one of both (each rank its heads, vocabulary rows and experts; torchrun variables,
Gloo on loopback) behind one gRPC endpoint, against a one-process
`lightrl rollout-worker` on the same checkpoint (`lightrl init` of a small hybrid model
from a fresh seed, printed here). The same Generate calls (greedy, and sampled with fixed
seeds and n = 2, several at once so that they share engine batches) give the same tokens
and logprobs within 2e-5 from both, again after UpdateWeights pushes another model's
weights to both (rank 0 hands the follower its blocks); a stale version and an NCCL
weight group are refused; SIGTERM to rank 0 stops the follower too; usage errors are
named.

Run: LIGHTRL_BIN=build/rl/lightrl python3 tests/python/rollout_instance_test.py
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import grpc
from grpc_tools import protoc

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LIGHTRL = os.environ.get("LIGHTRL_BIN", os.path.join(REPO, "build", "rl", "lightrl"))
ENV = dict(os.environ, OMP_NUM_THREADS="1")
TOLERANCE = 2e-5

# Lightning, softmax, lightning; 4 heads over 2 KV heads and vocabulary 48 split by 2.
MODEL = {
    "vocab_size": 48, "hidden_size": 32, "intermediate_size": 16, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "num_local_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 256,
    "block_size": 4, "layer_types": ["linear_attention", "full_attention", "linear_attention"],
    "full_attn_alpha_factor": 2.0, "linear_attn_alpha_factor": 2.0, "mlp_alpha_factor": 2.0,
    "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "router_aux_loss_coef": 0.001, "tie_word_embeddings": False, "hidden_act": "silu",
}


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_stubs(out_dir):
    proto_root = os.path.join(REPO, "proto")
    rc = protoc.main(["grpc_tools.protoc", f"-I{proto_root}", f"--python_out={out_dir}",
                      f"--grpc_python_out={out_dir}",
                      os.path.join(proto_root, "lightrl/v1/rollout.proto")])
    assert rc == 0, f"protoc failed: {rc}"
    sys.path.insert(0, out_dir)
    from lightrl.v1 import rollout_pb2, rollout_pb2_grpc
    return rollout_pb2, rollout_pb2_grpc


def first_line(proc, want):
    line = proc.stdout.readline()
    if not line.startswith(want):
        proc.kill()
        raise AssertionError(f"expected {want!r}, got {line!r}; stderr: {proc.stderr.read()}")
    return line.split()[-1]


def requests(pb2, seed):
    rng = random.Random(seed)
    out = []
    for i in range(6):
        prompt = [rng.randrange(48) for _ in range(rng.randint(1, 20))]
        sampled = i % 2 == 1
        sampling = pb2.SamplingOptions(temperature=1.0 if sampled else 0.0, top_p=1.0,
                                       max_new_tokens=rng.randint(6, 16), n=2 if sampled else 1,
                                       seed=rng.randrange(2**63))
        out.append(pb2.GenerateRequest(group_id=f"g{i}", prompt_tokens=prompt, sampling=sampling))
    return out


def generate_all(pb2_grpc, address, reqs):
    """Sends every request at once (so that the worker batches them); returns
    {group: {index: (tokens, logprobs)}}."""
    stub = pb2_grpc.RolloutServiceStub(grpc.insecure_channel(address))
    results, errors = {}, []

    def call(req):
        try:
            for resp in stub.Generate(req, timeout=120):
                s = resp.sample
                results.setdefault(resp.group_id, {})[s.index] = (list(s.tokens), list(s.logprobs))
        except grpc.RpcError as e:
            errors.append(f"{req.group_id}: {e.code()} {e.details()}")

    threads = [threading.Thread(target=call, args=(r,)) for r in reqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def compare(want, got):
    """Same groups and tokens; returns (largest logprob difference, tokens, samples). Logits
    a few ulps apart can swap two tokens whose probabilities tie (the sampler orders tokens
    by probability): a sample may go on with the other token where the two sampled tokens'
    logprobs are within TOLERANCE; the rest of that sample is not compared."""
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    worst, tokens, samples = 0.0, 0, 0
    for group, by_index in want.items():
        for index, (w_tokens, w_logps) in by_index.items():
            g_tokens, g_logps = got[group][index]
            same = 0
            while same < min(len(g_tokens), len(w_tokens)) and g_tokens[same] == w_tokens[same]:
                same += 1
            if g_tokens != w_tokens:
                assert same < min(len(g_tokens), len(w_tokens)) and \
                    abs(g_logps[same] - w_logps[same]) <= TOLERANCE, \
                    (group, index, g_tokens, w_tokens, g_logps, w_logps)
            worst = max([worst] + [abs(a - b) for a, b in zip(g_logps[:same], w_logps[:same])])
            tokens += same
            samples += 1
    return worst, tokens, samples


CRC_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    CRC_TABLE.append(_c)


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def weight_chunks(pb2, model_dir, version):
    """UpdateWeights chunks of a checkpoint's parameters (safetensors, F32), sorted by name
    as the worker declares them: the header, then one chunk per tensor."""
    with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    # The parameters (the checkpoint also holds the lightning layers' decay buffers).
    names = sorted(k for k in meta if k.endswith(".weight"))
    datas = []
    for name in names:
        assert meta[name]["dtype"] == "F32", meta[name]
        begin, end = meta[name]["data_offsets"]
        datas.append(body[begin:end])
    crc = 0
    for d in datas:
        crc = crc32c(d, crc)
    with open(os.path.join(model_dir, "config.json")) as f:
        config = f.read()
    header = pb2.WeightHeader(version=version, dtype="F32", model_config_json=config, crc32c=crc,
                              tensors=[pb2.WeightTensorInfo(name=k, shape=meta[k]["shape"])
                                       for k in names])
    return [pb2.WeightChunk(header=header)] + [
        pb2.WeightChunk(tensor_index=i, offset=0, data=d) for i, d in enumerate(datas)]


def check_usage_errors(model_dir):
    cases = [(["--tp", "0"], {}, "--tp must be >= 1"),
             (["--tp", "2"], {}, "--tp needs --model"),
             (["--tp", "2", "--model", model_dir], {"WORLD_SIZE": "3", "RANK": "0"},
              "--tp 2 needs WORLD_SIZE=2"),
             (["--ep", "2", "--model", model_dir], {"WORLD_SIZE": "3", "RANK": "0"},
              "--ep 2 needs WORLD_SIZE=2"),
             (["--tp", "4", "--ep", "2", "--model", model_dir], {},
              "--tp 4 with --ep 2: --ep must be a multiple of --tp"),
             (["--tp", "2", "--ep", "4", "--model", model_dir], {"WORLD_SIZE": "2", "RANK": "0"},
              "--ep 4 needs WORLD_SIZE=4")]
    for flags, env, fragment in cases:
        p = subprocess.run([LIGHTRL, "rollout-worker", *flags], capture_output=True, text=True,
                           env=dict(ENV, **env), timeout=60)
        assert p.returncode == 2 and fragment in p.stderr, (flags, p.returncode, p.stderr)


def check_instance(kind, pb2, pb2_grpc, model, other, seed, procs):
    """An instance of 2 ranks (`kind` tp, ep or tp x ep) against one process, before and
    after an UpdateWeights to `other`; returns the summary line."""
    flags = {"tp": ["--tp", "2"], "ep": ["--ep", "2"], "tp x ep": ["--tp", "2", "--ep", "2"]}[kind]
    common = ["rollout-worker", "--model", model, "--listen", "127.0.0.1:0",
              "--max-num-seqs", "4", "--kv-cache-mb", "1"]
    single = subprocess.Popen([LIGHTRL, *common], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV)
    procs.append(single)
    port = free_port()
    ranks = []
    for r in range(2):
        env = dict(ENV, RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        ranks.append(subprocess.Popen([LIGHTRL, *common, *flags], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    procs.extend(ranks)
    single_address = first_line(single, "listening on ")
    instance_address = first_line(ranks[0], "listening on ")
    first_line(ranks[1], f"following rank 0 of the {kind} 2 instance")

    reqs = requests(pb2, seed + 1)
    want = generate_all(pb2_grpc, single_address, reqs)
    got = generate_all(pb2_grpc, instance_address, reqs)
    worst, tokens, _ = compare(want, got)
    assert worst <= TOLERANCE and tokens > 40, (kind, worst, tokens)

    # New weights (another seed's model) pushed to rank 0: each rank takes its blocks, and
    # the instance generates as one process on the same weights.
    chunks = weight_chunks(pb2, other, version=1)
    reqs = requests(pb2, seed + 2)
    old = generate_all(pb2_grpc, single_address, reqs)
    for address in (single_address, instance_address):
        stub = pb2_grpc.RolloutServiceStub(grpc.insecure_channel(address))
        stub.UpdateWeights(iter(chunks), timeout=60)
        health = stub.Health(pb2.RolloutHealthRequest(), timeout=30)
        assert health.weight_version == 1, (address, health)
    want2 = generate_all(pb2_grpc, single_address, reqs)
    got2 = generate_all(pb2_grpc, instance_address, reqs)
    worst2, tokens2, _ = compare(want2, got2)
    assert worst2 <= TOLERANCE and tokens2 > 40, (kind, worst2, tokens2)
    # The update changed what is computed: the same requests' logprobs moved.
    moved = sum(old[g][i][1] != want2[g][i][1] for g in want2 for i in want2[g]
                if i in old.get(g, {}))
    assert moved >= 3, ("the new weights changed too few samples", moved)
    # A stale version is refused by rank 0 before anything moves.
    stub = pb2_grpc.RolloutServiceStub(grpc.insecure_channel(instance_address))
    try:
        stub.UpdateWeights(iter(chunks), timeout=60)
        raise AssertionError("a stale weight version was taken")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, (e.code(), e.details())
    # An NCCL broadcast to rank 0 alone would leave the follower's shard behind.
    try:
        stub.JoinWeightGroup(pb2.JoinWeightGroupRequest(rank=1, world_size=2), timeout=30)
        raise AssertionError("JoinWeightGroup into the instance succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED, (e.code(), e.details())
        assert "multi-process rollout instance" in e.details(), e.details()

    ranks[0].send_signal(signal.SIGTERM)
    for r, p in enumerate(ranks):
        rc = p.wait(timeout=60)
        assert rc == 0, f"{kind} rank {r} exited {rc}: {p.stderr.read()}"
    single.kill()
    return (f"  {kind} 2 instance: {tokens} tokens equal to one process's, logprobs within "
            f"{worst:.3g}; after UpdateWeights to another model {tokens2} tokens, within "
            f"{worst2:.3g}; {moved} of its samples differ from the old weights'")


def main():
    seed = int(os.environ.get("ROLLOUT_INSTANCE_SEED", random.randrange(1, 2**31)))
    print(f"seed {seed}")
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            pb2, pb2_grpc = load_stubs(tmp)
            config = os.path.join(tmp, "config.json")
            with open(config, "w") as f:
                json.dump(MODEL, f)
            model = os.path.join(tmp, "model")
            subprocess.run([LIGHTRL, "init", "--config", config, "--output", model,
                            "--seed", str(seed)], check=True, capture_output=True, env=ENV)
            other = os.path.join(tmp, "other")
            subprocess.run([LIGHTRL, "init", "--config", config, "--output", other,
                            "--seed", str(seed + 7)], check=True, capture_output=True, env=ENV)
            check_usage_errors(model)
            for kind in ("tp", "ep", "tp x ep"):
                print(check_instance(kind, pb2, pb2_grpc, model, other, seed, procs))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    print("rollout_instance: ok")


if __name__ == "__main__":
    sys.exit(main())
