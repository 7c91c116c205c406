"""Regression cases the fuzzer found: each malformed model is refused at load, exit 2, one line naming it.

Every case is built in code from a tiny valid model; before issue 15 each one ended in an internal error
(KeyError, `buffer size must be a multiple`, `cannot reshape`, UnicodeDecodeError, `Cycle detected`,
`len_sparse_initializer`, `Could not infer attribute type`), a rule-crash finding, or exit 0."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from graphfix.cli import cli
from graphfix.core.errors import InputError
from graphfix.io import tensor_checks
from graphfix.io.loading import from_proto, load_model


def base() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Transpose", ["m"], ["t"], name="tr", perm=[1, 0]),
             helper.make_node("Cast", ["t"], ["y"], name="cast", to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _w(model):
    return model.graph.initializer[0]


def bad_dtype(m):
    _w(m).data_type = 99


def raw_short(m):
    _w(m).raw_data = _w(m).raw_data[:12]


def raw_long(m):
    _w(m).raw_data += b"\0"


def typed_too_many(m):
    _w(m).ClearField("raw_data")
    _w(m).float_data.extend([1.0] * 17)


def string_not_utf8(m):
    m.graph.initializer.append(helper.make_tensor("s", TensorProto.STRING, [2], [b"\xff\xfe", b"ok"]))


def string_in_raw(m):
    s = helper.make_tensor("s", TensorProto.STRING, [1], [b"a"])
    s.ClearField("string_data")
    s.raw_data = b"\xff" * 8
    m.graph.initializer.append(s)


def sparse(m):
    values = helper.make_tensor("sp", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    indices = helper.make_tensor("sp_i", TensorProto.INT64, [3], [0, 1, 2])
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))


def sparse_bad_dtype(m):
    sparse(m)
    m.graph.sparse_initializer[0].values.data_type = 77


def empty_list_attribute(m):
    del m.graph.node[1].attribute[0].ints[:]


def undefined_attribute(m):
    m.graph.node[2].attribute[0].type = AttributeProto.UNDEFINED


def wrong_attribute_type(m):
    attr = m.graph.node[2].attribute[0]
    attr.type, attr.s = AttributeProto.STRING, b"float"


def cycle(m):
    m.graph.node[0].input[0] = "t"


def undefined_input(m):
    m.graph.node[1].input[0] = "nowhere"


def negative_dim(m):
    _w(m).dims[0] = -4


def huge_dims(m):
    _w(m).dims.extend([2**40, 2**40])


def many_huge_dims(m):
    """62 more dims of 10**18 (numpy's most, 64): a product of 1100 digits, never made."""
    _w(m).dims.extend([10**18] * 62)


def too_many_dims(m):
    """5000 dims of 10**18: their product, 90,000 digits, took time quadratic in their count (a minute for
    100,000 dims, a 1 MB file) and was then too long to write in the message."""
    _w(m).dims.extend([10**18] * 4998)


def input_elem_type(m):
    m.graph.input[0].type.tensor_type.elem_type = 99


def input_without_type(m):
    m.graph.input[0].ClearField("type")


def two_producers(m):
    m.graph.node.append(helper.make_node("Identity", ["x"], ["m"], name="again"))


def two_value_fields(m):
    _w(m).float_data.extend([1.0] * 16)


def recursive_function(m):
    m.functions.append(helper.make_function("local", "F", ["a"], ["b"], [helper.make_node("F", ["a"], ["b"],
                                            domain="local")], [helper.make_opsetid("local", 1)]))
    m.opset_import.append(helper.make_opsetid("local", 1))
    m.graph.node.append(helper.make_node("F", ["y"], ["z"], domain="local"))


CASES = [
    (bad_dtype, "tensor 'w': data type 99 is not an ONNX tensor type"),
    (raw_short, "tensor 'w': raw_data has 12 bytes, dims [4, 4] of float need 64"),
    (raw_long, "tensor 'w': raw_data has 65 bytes, dims [4, 4] of float need 64"),
    (typed_too_many, "tensor 'w': float_data has 17 values, dims [4, 4] need 16"),
    (string_not_utf8, "tensor 's': string 0 is not UTF-8"),
    (string_in_raw, "tensor 's': a string tensor cannot keep its values in raw_data"),
    (sparse, "sparse initializer 'sp': sparse tensors are not supported"),
    (sparse_bad_dtype, "sparse initializer 'sp' values: data type 77"),
    (empty_list_attribute, "attribute 'perm' of node 'tr' is an empty list"),
    (undefined_attribute, "attribute 'to' of node 'cast' has no type"),
    (wrong_attribute_type, "type field and data field mismatch in attribute to"),
    (cycle, "node 'mm' is on a cycle"),
    (undefined_input, "a node reads a tensor that nothing produces"),
    (negative_dim, "tensor 'w': negative dim in [-4, 4]"),
    (huge_dims, "tensor 'w': dims [4, 4, 1099511627776, 1099511627776] ask for more than 281,474,976,710,656 "
                "elements"),
    (many_huge_dims, "ask for more than 281,474,976,710,656 elements"),
    (too_many_dims, "tensor 'w': 5000 dims, and numpy, which graphfix reads tensors with, holds at most 64"),
    (input_elem_type, "graph input 'x': element type 99 is not an ONNX tensor type"),
    (input_without_type, "graph input 'x' has no type"),
    (two_producers, "'m' has been used as output names multiple times"),
    (recursive_function, "Model-local functions must not be recursive"),
    (two_value_fields, "tensor 'w': values in more than one field (float_data, raw_data)"),
]


@pytest.fixture(params=["light", "heavy"])
def weights(request, monkeypatch):
    """Each case twice: as it is, and with its 64-byte weight counted as heavy, so that the checker gets it as a
    typed graph input (what happens to BERT-size weights) and graphfix's own tensor checks must catch it."""
    if request.param == "heavy":
        monkeypatch.setattr(tensor_checks, "HEAVY_BYTES", 64)
        monkeypatch.setattr(tensor_checks, "HEAVY_TENSOR_BYTES", 64)
    return request.param


@pytest.mark.parametrize(("mutation", "message"), CASES, ids=[c[0].__name__ for c in CASES])
def test_malformed_model_is_refused_at_load_naming_it(mutation, message, tmp_path, weights):
    model = base()
    mutation(model)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InputError) as raised:
        load_model(path)
    assert message in str(raised.value)
    result = CliRunner().invoke(cli, ["diagnose", "--static", str(path)])
    assert result.exit_code == 2 and (result.exception is None or isinstance(result.exception, SystemExit))
    assert message in result.output and "internal error" not in result.output


def test_the_unmutated_model_loads(tmp_path, weights):
    assert from_proto(base()).proto.graph.node[0].name == "mm"
    path = tmp_path / "model.onnx"
    path.write_bytes(base().SerializeToString())
    assert load_model(path).proto.graph.initializer[0].name == "w"


def test_heavy_weights_stay_checked_by_the_checker_before_ir_4(tmp_path, monkeypatch):
    """Before IR 4 an initializer must also be a graph input: the checker must still see the initializer."""
    monkeypatch.setattr(tensor_checks, "HEAVY_BYTES", 64)
    monkeypatch.setattr(tensor_checks, "HEAVY_TENSOR_BYTES", 64)
    model = base()
    model.ir_version = 3
    model.opset_import[0].version = 8
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InputError, match="w in initializer but not in graph input"):
        load_model(path)


def test_unsorted_but_acyclic_graph_is_accepted():
    model = base()
    model.graph.node.reverse()
    assert [n.name for n in from_proto(model).proto.graph.node] == ["cast", "tr", "mm"]


def test_non_utf8_name_is_refused(tmp_path):
    model = base()
    model.graph.node[0].name = "QQQQ"
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString().replace(b"QQQQ", b"\xffQQQ"))
    with pytest.raises(InputError, match=r"node name b'\\xffQQQ' is not UTF-8"):
        load_model(path)


def test_in_memory_model_with_external_data_is_refused_without_a_folder():
    model = base()
    w = _w(model)
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", "w.bin"
    with pytest.raises(InputError, match="tensor 'w' keeps its values in external data, but no folder"):
        from_proto(model)


@pytest.mark.parametrize("place", ["function", "constant", "subgraph"])
def test_valid_external_data_anywhere_is_copied_beside_the_output(place, tmp_path, monkeypatch):
    """Accepted external data in a function, a Constant or a subgraph is written beside the output (the model
    needs no change, so it is copied with its data file under the output's name, the location renamed wherever
    it is) and read from there, whatever the working directory."""
    import onnxruntime as ort
    from fuzz_attacks import PLACES, SECRET

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "w.bin").write_bytes(SECRET)
    (model_dir / "model.onnx").write_bytes(PLACES[place]({"location": "w.bin"}).SerializeToString())
    out = tmp_path / "out" / "o.onnx"
    result = CliRunner().invoke(cli, ["repair", str(model_dir / "model.onnx"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.onnx", "o.onnx.data"]
    monkeypatch.chdir(tmp_path)
    x = np.ones((2, 4), np.float32)
    got = ort.InferenceSession(str(out)).run(None, {"x": x, "z": x})[0]
    np.testing.assert_array_equal(got, x @ np.arange(16, dtype=np.float32).reshape(4, 4) + x)


def test_freezing_an_optional_input_is_a_usage_error(tmp_path):
    """Fuzz seed 493: an optional-typed input given to freeze was a TypeError (internal error)."""
    model = base()
    model.graph.input[0].type.CopyFrom(helper.make_optional_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, [4, 4])))
    model.graph.node.insert(0, helper.make_node("OptionalGetElement", ["x"], ["xv"], name="get"))
    model.graph.node[1].input[0] = "xv"
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    result = CliRunner().invoke(cli, ["freeze", str(path), "--input", "x=0", "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code == 2 and "--input x: the input is of optional type" in result.output


def test_probe_writes_nothing_into_the_working_directory(tmp_path, monkeypatch):
    """Fuzz seed 561 (the streaming_cache sample with a Constant's dims cleared): onnxruntime's symbolic
    inference stopped early and saved sym_shape_infer_temp.onnx and its data into the working directory."""
    from pathlib import Path

    from fuzz_mutants import mutate

    sample = Path(__file__).resolve().parents[2] / "samples" / "streaming_cache" / "model.onnx"
    data, description = mutate(sample.read_bytes(), 561)
    assert description == "dims: tensor '' dims []"
    path = tmp_path / "model" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(data)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for command in ("diagnose", "check"):
        result = CliRunner().invoke(cli, [command, str(path)])
        assert result.exit_code in (0, 1) and "internal error" not in result.output, result.output
        assert sorted(p.name for p in cwd.iterdir()) == []
