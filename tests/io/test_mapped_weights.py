"""A model parsed light (graphfix.io.mapped, #23): its large inline weights stay in the file, memory-mapped, and
the light proto plus those weights are exactly the model protobuf's parser reads; what the walk is not sure of
stays in the proto as the parser reads it. `graphfix repair` (a forked worker, which parses light) writes the same
bytes as the Python API (which parses the whole file), and its rules and proof read the mapped weights."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_heavy_weight_reads import EXPORT_T, table_model

import graphfix
from graphfix.io.held import open_model
from graphfix.io.mapped import MappedTensor, parse_light
from graphfix.io.saving import stage_model
from graphfix.io.weights import DETACH_MIN_BYTES, detach_inline, is_stub, materialize
from graphfix.io.wire import TENSOR_RAW_DATA, key, record, varint


def weights_of_every_kind() -> onnx.ModelProto:
    """Large weights of each type the walk maps and of some it leaves inline (bfloat16 numpy cannot view, values
    in a typed field), a doc string on one, small ones, and a Constant node's large value (never mapped)."""
    rng = np.random.default_rng(0)
    big = {name: rng.standard_normal((256, 128)).astype(dtype) for name, dtype in
           [("f32", np.float32), ("f16", np.float16), ("f64", np.float64)]}
    big.update(i64=rng.integers(-9, 9, (64, 256)).astype(np.int64), u8=rng.integers(0, 255, 70000).astype(np.uint8),
               b=rng.integers(0, 2, 70000).astype(bool))
    tensors = [numpy_helper.from_array(v, k) for k, v in big.items()]
    tensors[0].doc_string = "the first weight"
    bf16 = helper.make_tensor("bf16", TensorProto.BFLOAT16, [70000], np.zeros(70000, np.uint16).tobytes(), raw=True)
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [20000], rng.standard_normal(20000).astype(np.float32))
    small = numpy_helper.from_array(np.ones(4, np.float32), "small")
    constant = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(20000, np.float32)))
    all_ = [*tensors, bf16, typed, small]
    nodes = [constant, *(helper.make_node("Identity", [t.name], [f"{t.name}_out"]) for t in all_)]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(f"{t.name}_out", t.data_type, None)
                                              for t in all_] + [helper.make_tensor_value_info("c", 1, None)], all_)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def light(path):
    return parse_light(open_model(path), DETACH_MIN_BYTES)


def as_parsed(path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


@pytest.mark.parametrize("writer", ["onnx", "graphfix"])
def test_the_light_proto_and_its_mapped_weights_are_the_parsed_model(tmp_path, writer):
    """Written by onnx (one graph record), or by graphfix's streaming writer (a record per weight, which the
    parser merges): the mapped weights are the large ones numpy views, each the bytes the parser reads."""
    model = weights_of_every_kind()
    path = tmp_path / "m.onnx"
    if writer == "onnx":
        onnx.save(model, path)
    else:
        stub_model, weights = detach_inline(model)
        stage_model(stub_model, path, weights=weights).commit()
    proto, weights = light(path)
    assert sorted(weights) == ["b", "f16", "f32", "f64", "i64", "u8"]
    assert all(isinstance(w, MappedTensor) and is_stub(t) for t in proto.graph.initializer
               if (w := weights.get(t.name)) is not None)
    assert materialize(proto, weights).SerializeToString() == as_parsed(path).SerializeToString()
    for tensor in as_parsed(path).graph.initializer:
        if tensor.name in weights:
            got = weights[tensor.name].array()
            np.testing.assert_array_equal(got, numpy_helper.to_array(tensor))
            assert not got.flags.writeable


def model_with_raw_tensor(fields: bytes) -> bytes:
    """A serialized model whose one initializer is the given TensorProto fields, read by an Identity."""
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
                              opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString() + record(7, record(5, fields))


def field(number: int, payload: bytes) -> bytes:
    return record(number, payload)


def vint(number: int, value: int) -> bytes:
    return key(number, 0) + varint(value)


COUNT = 20000
RAW = np.arange(COUNT, dtype=np.float32).tobytes()
PLAIN = [vint(1, COUNT), vint(2, TensorProto.FLOAT), field(8, b"w")]


@pytest.mark.parametrize(("fields", "mapped"), [
    ([*PLAIN, field(TENSOR_RAW_DATA, RAW)], True),
    ([field(1, varint(COUNT)), *PLAIN[1:], field(TENSOR_RAW_DATA, RAW)], True),  # dims packed
    ([*PLAIN, field(TENSOR_RAW_DATA, RAW[:-4])], False),  # fewer bytes than the dims need
    ([*PLAIN, field(TENSOR_RAW_DATA, RAW[:8]), field(TENSOR_RAW_DATA, RAW)], False),  # given twice: the last wins
    ([*PLAIN, field(TENSOR_RAW_DATA, RAW), vint(14, 0)], False),  # a data_location, even DEFAULT
    ([*PLAIN, field(TENSOR_RAW_DATA, RAW), vint(99, 1)], False),  # a field onnx.proto does not have
    ([vint(2, TensorProto.INT32), *PLAIN, field(TENSOR_RAW_DATA, RAW)], True),  # the last data type wins
    ([*PLAIN, vint(2, TensorProto.INT64), field(TENSOR_RAW_DATA, RAW)], False),  # the last data type: 8 bytes
    ([vint(1, (1 << 64) - 1), *PLAIN, field(TENSOR_RAW_DATA, RAW)], False),  # a negative dim
    ([*PLAIN, field(TENSOR_RAW_DATA, RAW), vint(TENSOR_RAW_DATA, 7)], False),  # raw_data as a varint: unknown
    ([*PLAIN, field(TENSOR_RAW_DATA, RAW), key(4, 5) + b"\0\0\x80?"], False),  # a float_data value, fixed32
    ([*PLAIN, field(TENSOR_RAW_DATA, RAW), key(99, 1) + bytes(8)], False),  # an unknown fixed64 field
], ids=["plain", "packed-dims", "short", "raw-twice", "data-location", "unknown-field", "type-twice",
        "type-changes-size", "negative-dim", "raw-as-varint", "typed-value-too", "unknown-fixed-field"])
def test_what_the_walk_is_not_sure_of_is_left_to_the_parser(tmp_path, fields, mapped):
    path = tmp_path / "m.onnx"
    path.write_bytes(model_with_raw_tensor(b"".join(fields)))
    proto, weights = light(path)
    assert ("w" in weights) is mapped
    parsed = as_parsed(path)
    assert materialize(proto, weights).SerializeToString() == parsed.SerializeToString()


def test_a_file_the_walk_cannot_read_is_parsed_whole(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(model_with_raw_tensor(b"".join([*PLAIN, field(TENSOR_RAW_DATA, RAW)]))[:-100])
    assert light(path) is None


UNSAFE = "--unsafe-fixes"  # the table model's fix: `pe[:T]` is also `pe[7 - T : 7]` at the export length


def cli_repair(path, output, *options: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(output), "--format",
                           "json", *options], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def with_a_folded_weight(model: onnx.ModelProto) -> onnx.ModelProto:
    """The table model with one more output, `h @ W^T`, whose Transpose of a heavy `W` onnxsim folds: a mapped
    weight that a foldable node reads is exported inline."""
    w = np.random.default_rng(1).standard_normal((4096, 8)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(w, "W"))
    model.graph.node.extend([helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
                             helper.make_node("MatMul", ["h", "Wt"], ["z"])])
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", "T", 4096]))
    return model


@pytest.mark.parametrize("build", [lambda m: m, with_a_folded_weight], ids=["table", "table-and-folded-weight"])
def test_the_command_reads_mapped_weights_and_writes_what_the_api_writes(tmp_path, build):
    """The heavy table of test_heavy_weight_reads, repaired by the command (parsed light: `pe` is mapped): the
    rule found the fix by reading it, the re-traced original read it, and the output is byte for byte the Python
    API's (which parses the file whole)."""
    model = build(table_model()[0])
    path = tmp_path / "table.onnx"
    onnx.save(model, path)
    [report] = cli_repair(path, tmp_path / "cli.onnx", UNSAFE)["models"]
    assert report["status"] == "repaired" and [a["rule"] for a in report["applied"]] == ["GF006"]
    derived = [run["derived"] for run in report["validation"]["runs"] if run["sizes"]["T"] not in (1, EXPORT_T)]
    assert len(derived) >= 3 and all(d is True for d in derived), report["validation"]
    graphfix.repair(path, output=tmp_path / "api.onnx", unsafe_fixes=True)
    assert (tmp_path / "cli.onnx").read_bytes() == (tmp_path / "api.onnx").read_bytes()


def test_an_unchanged_model_parsed_light_is_copied_as_it_came(tmp_path):
    model = weights_of_every_kind()
    model.graph.ClearField("node")
    model.graph.ClearField("output")
    model.graph.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"]))
    model.graph.input.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"]))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    [report] = cli_repair(path, tmp_path / "out.onnx")["models"]
    assert report["status"] == "unchanged"
    assert (tmp_path / "out.onnx").read_bytes() == path.read_bytes()


def with_a_weight_read_in_a_branch(model: onnx.ModelProto) -> onnx.ModelProto:
    """The table model with one more output read by an If whose branches both read a heavy outer `W` (found by a
    review: its Constant kept the stub, and the repaired model did not load)."""
    model.graph.initializer.append(numpy_helper.from_array(
        np.random.default_rng(1).standard_normal((4096, 8)).astype(np.float32), "W"))
    branches = [helper.make_graph([helper.make_node("Gather", ["W", "idx"], [f"{b}0"], axis=0),
                                   helper.make_node(op, [f"{b}0"], [b])], b, [],
                                  [helper.make_tensor_value_info(b, TensorProto.FLOAT, ["K", 8])])
                for b, op in (("then", "Identity"), ("other", "Neg"))]
    model.graph.node.extend([helper.make_node("ReduceSum", ["idx"], ["s"], keepdims=0),
                             helper.make_node("Cast", ["s"], ["cond"], to=TensorProto.BOOL),
                             helper.make_node("If", ["cond"], ["iz"], then_branch=branches[0],
                                              else_branch=branches[1])])
    model.graph.input.append(helper.make_tensor_value_info("idx", TensorProto.INT64, ["K"]))
    model.graph.output.append(helper.make_tensor_value_info("iz", TensorProto.FLOAT, ["K", 8]))
    return model


def test_a_weight_read_only_in_a_branch_is_written_as_the_api_writes_it(tmp_path):
    path = tmp_path / "table.onnx"
    onnx.save(with_a_weight_read_in_a_branch(table_model()[0]), path)
    [report] = cli_repair(path, tmp_path / "cli.onnx", UNSAFE)["models"]
    assert report["status"] == "repaired", report["error"]
    graphfix.repair(path, output=tmp_path / "api.onnx", unsafe_fixes=True)
    assert (tmp_path / "cli.onnx").read_bytes() == (tmp_path / "api.onnx").read_bytes()


def test_a_model_with_external_data_and_a_mapped_weight_runs_its_original(tmp_path):
    """Weights of 1 MiB and more in external data, one of 256 KiB inline (parsed light): the original's session
    reads the inline one from the mapped file (found by a review: it looked for a file named like the stub's
    placeholder, so the healthy model 'failed at every probe size', and a planted file of that name was read)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["big", "idx"], ["a"], axis=0),
         helper.make_node("Gather", ["mid", "idx"], ["b"], axis=0), helper.make_node("Add", ["a", "b"], ["z"])],
        "mixed",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["K"])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["K", 64])],
        [numpy_helper.from_array(rng.standard_normal((8192, 64)).astype(np.float32), "big"),
         numpy_helper.from_array(rng.standard_normal((1024, 64)).astype(np.float32), "mid")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "model.onnx"
    onnx.save(model, path, save_as_external_data=True, location="model.data", size_threshold=1 << 20)
    (tmp_path / "in" / "__graphfix_weights_not_loaded__").write_bytes(b"\0")  # too short for any weight
    [report] = cli_repair(path, tmp_path / "out" / "model.onnx")["models"]
    assert report["status"] == "unchanged" and report["validation"]["evidence"] == "original", report


@pytest.mark.parametrize(("model", "refusal"), [
    ("no-opset-import", "No opset import for domain 'com.microsoft'"),
    ("ir3-initializer-not-input", "in initializer but not in graph input"),
    ("duplicate-weights", "not unique"),
])
def test_a_model_parsed_light_gets_every_check_the_parser_s_gets(tmp_path, model, refusal):
    """Found by a review: onnx's checker stopped at the first stub (its data 'should be stored in' the
    placeholder), graphfix took that for the external-data complaint it lets pass, and every later check
    (types, opsets, IR 3's initializers as inputs) was skipped: such models were repaired with exit 0."""
    weight = numpy_helper.from_array(np.ones((128, 256), np.float32), "w")
    nodes = [helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft") if model == "no-opset-import"
             else helper.make_node("Identity", ["x"], ["g"]), helper.make_node("MatMul", ["g", "w"], ["y"])]
    inits = [weight, numpy_helper.from_array(np.ones((128, 256), np.float32), "w")] \
        if model == "duplicate-weights" else [weight]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=3 if model == "ir3-initializer-not-input" else 8)
    if model == "ir3-initializer-not-input":
        del proto.opset_import[:]
        proto.opset_import.append(helper.make_opsetid("", 8))
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    done = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and refusal in done.stdout + done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_a_file_protobuf_refuses_for_its_size_is_not_parsed_light(tmp_path):
    """Past 2 GiB protobuf parses no model; parsed light, its weight cut out, it would have been (found by a
    review: a 2.4 GB file was repaired into a copy nothing can load). The file is sparse: no disk is used."""
    count = 600_000_000  # float32: 2.4 GB
    graph = helper.make_graph([helper.make_node("Gather", ["W", "idx"], ["z"], axis=0)], "g",
                              [helper.make_tensor_value_info("idx", TensorProto.INT64, ["K"])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["K"])])
    head = onnx.TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[count]).SerializeToString()
    head += key(TENSOR_RAW_DATA) + varint(4 * count)
    initializer = key(5) + varint(len(head) + 4 * count)
    start = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    start += key(7) + varint(len(initializer) + len(head) + 4 * count) + initializer + head
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as f:
        f.write(start)
        f.truncate(len(start) + 4 * count)
    assert light(path) is None


def test_an_input_written_while_it_is_repaired_is_named(tmp_path):
    """Its weights are read from the file until the output is written: `repair` writes nothing once the model
    file or a data file changed since loading opened it (a review rewrote a 400 MB input mid-run, and the output
    carried weights the proof never saw). The check itself, on the files loading holds."""
    from graphfix.io.external_data import data_file
    from graphfix.io.loading import load_model

    model, _ = table_model()
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "table.onnx"
    onnx.save(model, path, save_as_external_data=True, location="table.data", size_threshold=64 << 10)
    loaded = load_model(path)
    data = next(iter(loaded.data_files))
    data_file(loaded.base_dir, data.name)  # opened at its first read, as the proof's sessions read it
    assert loaded.changed_file() is None
    with open(data, "r+b") as f:  # in place: same size, new bytes
        f.seek(8)
        f.write(b"\1\2\3\4")
    assert loaded.changed_file() is not None and loaded.changed_file().path == data.resolve()


def test_an_ir3_model_keeps_its_initializers_as_inputs(tmp_path):
    """IR 3 declares every initializer as a graph input: the original's session got the mapped weight as an input
    twice ('Duplicate definition-site'), and the repaired output lost the declarations, which onnx's checker
    then refused (found by a review)."""
    model, _ = table_model()
    model.ir_version = 3
    inputs = {i.name for i in model.graph.input}
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                             for t in model.graph.initializer if t.name not in inputs)
    path = tmp_path / "ir3.onnx"
    onnx.save(model, path)
    [report] = cli_repair(path, tmp_path / "out.onnx", UNSAFE)["models"]
    assert report["status"] == "repaired" and report["validation"]["passed"], report
    assert all(run["derived"] for run in report["validation"]["runs"] if run["sizes"]["T"] not in (1, EXPORT_T))
    onnx.checker.check_model(str(tmp_path / "out.onnx"))


def test_a_branch_weight_named_like_a_mapped_one_is_parsed_whole(tmp_path):
    """A branch's own initializer named like the large outer `W` (it shadows it there): the stub leaked into the
    branch and the repaired model did not load (found by a review). Such a file is parsed whole."""
    model = with_a_weight_read_in_a_branch(table_model()[0])
    then = model.graph.node[-1].attribute[0].g
    then.initializer.append(numpy_helper.from_array(np.ones((4096, 8), np.float32), "W"))
    path = tmp_path / "table.onnx"
    onnx.save(model, path)
    assert light(path) is None
    assert cli_repair(path, tmp_path / "cli.onnx", UNSAFE)["models"][0]["status"] == "repaired"
    graphfix.repair(path, output=tmp_path / "api.onnx", unsafe_fixes=True)
    assert (tmp_path / "cli.onnx").read_bytes() == (tmp_path / "api.onnx").read_bytes()


def test_a_tensor_naming_the_placeholder_is_refused_in_one_line(tmp_path):
    model, _ = table_model()
    weight = model.graph.initializer[1]  # c
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="__graphfix_weights_not_loaded__")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    done = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "a name graphfix keeps for itself" in done.stdout + done.stderr, done.stdout
    assert "Traceback" not in done.stderr and "internal error" not in done.stdout + done.stderr
