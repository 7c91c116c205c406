"""Input synthesis: sizes per symbolic dim, valid integer ranges, determinism and user overrides."""

import numpy as np
import onnx
import onnx.parser
from onnx import numpy_helper

from graphfix.validate import ValidationOptions, probe_sizes, synthesize_inputs


def model(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model('<ir_version: 10, opset_import: ["" : 17]>\n' + text)


SHARED_DIMS = model("""
g (float[B, T, 8] X, float[B, T] M, float[?, 3] U) => (float[B, T, 8] Y) {
    Y = Relu(X)
}""")


def embedding_model(vocab: int) -> onnx.ModelProto:
    m = model("""
    g (int64[B, T] ids, int64[B] lengths) => (float[B, T, 4] Y) {
        Y = Gather(table, ids)
    }""")
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((vocab, 4), np.float32), "table"))
    return m


def test_shared_dim_names_get_equal_sizes_at_every_binding():
    options = ValidationOptions()
    for sizes in probe_sizes(SHARED_DIMS, options):
        feeds = synthesize_inputs(SHARED_DIMS, sizes, options)
        assert feeds["X"].shape[:2] == feeds["M"].shape
        assert feeds["X"].shape[2] == 8


def test_at_least_three_distinct_bindings_and_unnamed_dims_get_sizes():
    sizes = probe_sizes(SHARED_DIMS, ValidationOptions())
    assert len(sizes) == 3
    assert len({tuple(sorted(s.items())) for s in sizes}) == 3
    assert all("U:0" in s for s in sizes)  # the `?` dim of U is bound too


def test_trace_size_is_the_first_binding():
    sizes = probe_sizes(SHARED_DIMS, ValidationOptions(trace_sizes={"T": 100}))
    assert sizes[0]["T"] == 100
    assert sizes[1]["B"] == 1 and sizes[1]["T"] < 100 < sizes[2]["T"]  # batch 1 with smaller sizes, then larger
    assert all(s["T"] != 100 for s in sizes[1:])


def test_token_ids_stay_below_the_vocabulary_and_lengths_within_time():
    m = embedding_model(vocab=5)
    options = ValidationOptions()
    for sizes in probe_sizes(m, options):
        feeds = synthesize_inputs(m, sizes, options)
        assert feeds["ids"].dtype == np.int64
        assert feeds["ids"].min() >= 0 and feeds["ids"].max() < 5
        assert feeds["lengths"].min() >= 1 and feeds["lengths"].max() <= feeds["ids"].shape[1]


def test_synthesis_is_deterministic():
    options = ValidationOptions()
    sizes = probe_sizes(SHARED_DIMS, options)[1]
    first, second = (
        synthesize_inputs(SHARED_DIMS, sizes, options),
        synthesize_inputs(SHARED_DIMS, sizes, options),
    )
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_user_values_and_shapes_override():
    given = np.full((1, 5, 8), 3.0, np.float32)
    options = ValidationOptions(inputs={"X": given}, shapes={"U": (4, None)})
    for sizes in probe_sizes(SHARED_DIMS, options):
        assert sizes["B"] == 1 and sizes["T"] == 5  # dims taken from the given value
        feeds = synthesize_inputs(SHARED_DIMS, sizes, options)
        assert feeds["X"] is given
        assert feeds["M"].shape == (1, 5)
        assert feeds["U"].shape == (4, 3)


def test_every_dim_gets_its_own_size_batch_1_is_probed_and_weight_dims_are_avoided():
    m = model("""
    g (float[B, T, 8] X, float[B, S] M) => (float[B, T, 8] Y) {
        Y = Relu(X)
    }""")
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((5, 7), np.float32), "w"))
    sizes = probe_sizes(m, ValidationOptions(num_sizes=4))
    assert any(s["B"] == 1 for s in sizes)
    for binding in sizes[1:]:  # away from the export size: no two dims equal, none equal to a weight's dim
        assert len(set(binding.values())) == len(binding)
        assert not {5, 7} & set(binding.values())
        assert all(binding[name] != sizes[0][name] for name in binding)


def position_table_model(rows: int) -> onnx.ModelProto:
    """ids [B, T] -> tokens + positions, where positions = table[Range(0, T)]: T cannot exceed `rows`."""
    m = model("""
    g (int64[B, T] ids) => (float[B, T, 4] Y) {
        shape = Shape(ids)
        t = Gather<axis = 0>(shape, one)
        positions = Range(zero, t, one)
        pos = Gather(table, positions)
        tok = Gather(vocab, ids)
        Y = Add(tok, pos)
    }""")
    m.graph.initializer.extend([
        numpy_helper.from_array(np.zeros((rows, 4), np.float32), "table"),
        numpy_helper.from_array(np.zeros((50, 4), np.float32), "vocab"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
    ])
    return m


def test_sizes_stay_within_a_position_table_the_graph_reveals():
    m = position_table_model(rows=16)
    options = ValidationOptions(num_sizes=6)
    sizes = probe_sizes(m, options)
    assert all(s["T"] <= 16 for s in sizes)
    for binding in sizes:
        feeds = synthesize_inputs(m, binding, options)
        assert feeds["ids"].max() < 50


def test_values_look_like_real_data():
    m = model("""
    g (float[B, T, 8] X, bool[B, T] padding_mask, int64[B, T] attention_mask, int64[B] lengths) => (float[B, T, 8] Y) {
        Y = Relu(X)
    }""")
    options = ValidationOptions()
    binding = {"B": 5, "T": 9}
    feeds = synthesize_inputs(m, binding, options)
    assert feeds["X"].min() < 0 < feeds["X"].max() and abs(float(feeds["X"].std()) - 1) < 0.3  # standard normal
    for mask in (feeds["padding_mask"], feeds["attention_mask"].astype(bool)):
        assert all(0 < row.sum() < 9 for row in mask)  # mixed within every row
    assert feeds["padding_mask"][:, 0].sum() == 0 and feeds["attention_mask"][:, 0].all()  # pads at the end
    assert feeds["lengths"].max() == 9 and feeds["lengths"].min() < 9  # one row at least is padded


def test_float_lengths_are_absolute_or_relative_as_the_graph_uses_them():
    """speechbrain passes float lengths: relative `wav_lens` that the graph scales by the length first
    (`round(wav_lens * T)`), or absolute ones compared as they are; both keep one row the whole length."""
    m = model("""
    g (float[B, T, 8] X, float[B] wav_lens, float[B] lengths, float[B] scale_len2) => (float[B] A, float[B] L) {
        shape = Shape(X)
        index = Constant<value = int64 {1}>()
        t = Gather<axis = 0>(shape, index)
        tf = Cast<to = 1>(t)
        A = Mul(wav_lens, tf)
        L = Add(lengths, scale_len2)
    }""")
    feeds = synthesize_inputs(m, {"B": 5, "T": 9}, ValidationOptions())
    relative, absolute = feeds["wav_lens"], feeds["lengths"]
    assert relative.dtype == np.float32 and relative.max() == 1.0 and 0 < relative.min() < 1
    assert np.allclose(np.round(relative * 9), relative * 9)  # whole frames once scaled
    assert absolute.max() == 9 and 1 <= absolute.min() < 9 and np.all(absolute == np.round(absolute))
    assert feeds["scale_len2"].max() == 9  # named as a length, not scaled by a size: absolute


def test_relative_lengths_are_read_through_a_shape_slice_and_a_squeeze():
    """The dynamo exporter reads the length as `Shape<start=1, end=2>` then Squeeze (helper 67): relative
    lengths scaled by it were fed as absolute ones, and a healthy speechbrain-style model got a false GF003."""
    m = model("""
    g (float[B, T, 8] X, float[B] wav_lens) => (float[B] A) {
        shape = Shape<start = 1, end = 2>(X)
        t = Squeeze(shape)
        tf = Cast<to = 1>(t)
        A = Mul(wav_lens, tf)
    }""")
    relative = synthesize_inputs(m, {"B": 5, "T": 9}, ValidationOptions())["wav_lens"]
    assert relative.max() == 1.0 and 0 < relative.min() < 1
