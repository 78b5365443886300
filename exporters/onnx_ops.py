"""The three `hymba` ONNX ops: schemas (for `onnx.checker` and shape inference) and model-local
function bodies in standard ONNX (so stock ONNX Runtime runs the graph without a custom-op library).

The node interface is the one the TensorRT plugins implement (`exporters/README.md`). The bodies
compute in fp32 and cast back, like the reference ops: `SelectiveScan` is a `Scan` over time,
`CausalConv1d` a gather of the K taps, `WindowedAttention` a masked softmax with grouped K/V and
per-row key counts (`kv_lengths`, op version 2). A function body reads only the attributes the
computation needs; `layout_version`, `plugin_version` and `plugin_namespace` are declared by the schema
and ignored by the body.
"""

from __future__ import annotations

import onnx
import onnx.defs
import onnx.parser
from onnx import TensorProto, helper

from hymba_deploy.contract import ATTRIBUTES, DOMAIN, OP_VERSION, PLUGIN_NAMESPACE, PLUGIN_VERSION

_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]

# ---- function bodies (ONNX text format; `@name` reads the calling node's attribute) ----------------

_SELECTIVE_SCAN = """
SelectiveScan <softplus_threshold> (x, dt, A, B, C, D, z, dt_bias, initial_state) => (y, last_state)
{
    last = Constant <value_ints = [-1]> ()
    two = Constant <value_ints = [2]> ()
    thr = Constant <value_float: float = @softplus_threshold> ()
    # dt' = softplus(dt + dt_bias), identity above the threshold                 (B, T, D)
    dtf = Cast <to = 1> (dt)
    bias = Cast <to = 1> (dt_bias)
    dtb = Add (dtf, bias)
    above = Greater (dtb, thr)
    clipped = Min (dtb, thr)
    soft = Softplus (clipped)
    delta = Where (above, dtb, soft)
    # Discretisation for every step at once: dA = exp(dt'·A), dBx = dt'·x·B     (B, T, D, N)
    Af = Cast <to = 1> (A)
    delta4 = Unsqueeze (delta, last)
    dtA = Mul (delta4, Af)
    dA = Exp (dtA)
    xf = Cast <to = 1> (x)
    dx = Mul (delta, xf)
    dx4 = Unsqueeze (dx, last)
    Bf = Cast <to = 1> (B)
    B4 = Unsqueeze (Bf, two)
    dBx = Mul (dx4, B4)
    Cf = Cast <to = 1> (C)
    C4 = Unsqueeze (Cf, two)
    h0 = Cast <to = 1> (initial_state)
    # The recurrence h_t = dA_t·h_{t-1} + dBx_t, y_t = Σ_n C_t·h_t, scanned over T (axis 1)
    last_state, ys = Scan <num_scan_inputs = 3, scan_input_axes = [1, 1, 1], scan_output_axes = [1],
        body = step (float[?, ?, ?] h, float[?, ?, ?] dA_t, float[?, ?, ?] dBx_t, float[?, ?, ?] C_t)
                 => (float[?, ?, ?] h_next, float[?, ?] y_t) {
            axis = Constant <value_ints = [-1]> ()
            decayed = Mul (dA_t, h)
            h_next = Add (decayed, dBx_t)
            hc = Mul (h_next, C_t)
            y_t = ReduceSum <keepdims = 0> (hc, axis)
        }> (h0, dA, dBx, C4)
    # D skip and SiLU(z) gate, then back to x's type
    Df = Cast <to = 1> (D)
    skip = Mul (xf, Df)
    ysum = Add (ys, skip)
    zf = Cast <to = 1> (z)
    zsig = Sigmoid (zf)
    gate = Mul (zf, zsig)
    gated = Mul (ysum, gate)
    y = CastLike (gated, x)
}
"""

_CAUSAL_CONV1D = """
CausalConv1d <activation> (x, weight, bias, conv_state) => (y, new_conv_state)
{
    zero = Constant <value_int = 0> ()
    one = Constant <value_int = 1> ()
    ax0 = Constant <value_ints = [0]> ()
    ax1 = Constant <value_ints = [1]> ()
    ax2 = Constant <value_ints = [2]> ()
    last = Constant <value_ints = [-1]> ()
    big = Constant <value_ints = [9223372036854775807]> ()
    # history = concat(state, x) along time, fp32, channel-first                (B, D, K + T)
    xf = Cast <to = 1> (x)
    xt = Transpose <perm = [0, 2, 1]> (xf)
    sf = Cast <to = 1> (conv_state)
    hist = Concat <axis = 2> (sf, xt)
    # taps[b, d, t, k] = hist[b, d, t + 1 + k]                                   (B, D, T, K)
    T1 = Shape <start = 1, end = 2> (x)
    K1 = Shape <start = 1, end = 2> (weight)
    T = Squeeze (T1, ax0)
    K = Squeeze (K1, ax0)
    t_idx = Range (zero, T, one)
    K_end = Add (K, one)
    k_idx = Range (one, K_end, one)
    t2 = Unsqueeze (t_idx, ax1)
    k2 = Unsqueeze (k_idx, ax0)
    idx = Add (t2, k2)
    taps = Gather <axis = 2> (hist, idx)
    # y = act(Σ_k weight[d, k]·taps + bias)                                      (B, D, T)
    wf = Cast <to = 1> (weight)
    w3 = Unsqueeze (wf, ax1)
    prod = Mul (taps, w3)
    acc = ReduceSum <keepdims = 0> (prod, last)
    bf = Cast <to = 1> (bias)
    b2 = Unsqueeze (bf, ax1)
    pre = Add (acc, b2)
    sig = Sigmoid (pre)
    silu = Mul (pre, sig)
    act = Constant <value_int: int = @activation> ()
    is_silu = Equal (act, one)
    out = Where (is_silu, silu, pre)
    yt = Transpose <perm = [0, 2, 1]> (out)
    y = CastLike (yt, x)
    # new state: the last K entries of the history, in conv_state's type         (B, D, K)
    negK = Neg (K1)
    tail = Slice (hist, negK, big, ax2)
    new_conv_state = CastLike (tail, conv_state)
}
"""

_WINDOWED_ATTENTION = """
WindowedAttention <window, num_meta, scale> (q, k, v, kv_lengths) => (output)
{
    zero = Constant <value_int = 0> ()
    one = Constant <value_int = 1> ()
    ax0 = Constant <value_ints = [0]> ()
    ax1 = Constant <value_ints = [1]> ()
    ax2 = Constant <value_ints = [2]> ()
    ax12 = Constant <value_ints = [1, 2]> ()
    ninf = Constant <value_float = -inf> ()
    qf = Cast <to = 1> (q)
    kf = Cast <to = 1> (k)
    vf = Cast <to = 1> (v)
    Bq = Shape <start = 0, end = 1> (q)
    Tq = Shape <start = 1, end = 2> (q)
    Hq = Shape <start = 2, end = 3> (q)
    Dqk = Shape <start = 3, end = 4> (q)
    Tk = Shape <start = 1, end = 2> (k)
    Hkv = Shape <start = 2, end = 3> (k)
    Dv = Shape <start = 3, end = 4> (v)
    # GQA without copies: query head h = kv·G + j reads kv head kv               (B, Hkv, G, Tq, ·)
    G = Div (Hq, Hkv)
    shape5 = Concat <axis = 0> (Bq, Tq, Hkv, G, Dqk)
    q5 = Reshape (qf, shape5)
    qg = Transpose <perm = [0, 2, 3, 1, 4]> (q5)
    kt = Transpose <perm = [0, 2, 3, 1]> (kf)
    kg = Unsqueeze (kt, ax2)
    raw = MatMul (qg, kg)
    sc = Constant <value_float: float = @scale> ()
    scores = Mul (raw, sc)
    # per row b: query i sits at key index kv_lengths[b] - Tq + i                (B, Tq)
    TkS = Squeeze (Tk, ax0)
    TqS = Squeeze (Tq, ax0)
    lens = Cast <to = 7> (kv_lengths)
    first = Sub (lens, Tq)
    first2 = Unsqueeze (first, ax1)
    ii = Range (zero, TqS, one)
    qi = Add (first2, ii)
    # mask: kv <= q and (window <= 0 or q - kv <= window or kv < num_meta)       (B, Tq, Tk)
    # (kv <= q < kv_lengths[b]: the keys after a row's valid ones are never seen)
    kvi = Range (zero, TkS, one)
    q3 = Unsqueeze (qi, ax2)
    causal = LessOrEqual (kvi, q3)
    dist = Sub (q3, kvi)
    win = Constant <value_int: int = @window> ()
    meta = Constant <value_int: int = @num_meta> ()
    in_window = LessOrEqual (dist, win)
    is_meta = Less (kvi, meta)
    is_global = LessOrEqual (win, zero)
    visible = Or (in_window, is_meta)
    visible2 = Or (visible, is_global)
    allowed3 = And (causal, visible2)
    allowed = Unsqueeze (allowed3, ax12)
    masked = Where (allowed, scores, ninf)
    probs = Softmax <axis = -1> (masked)
    vt = Transpose <perm = [0, 2, 1, 3]> (vf)
    vg = Unsqueeze (vt, ax2)
    o5 = MatMul (probs, vg)
    ot = Transpose <perm = [0, 3, 1, 2, 4]> (o5)
    shape4 = Concat <axis = 0> (Bq, Tq, Hq, Dv)
    o4 = Reshape (ot, shape4)
    output = CastLike (o4, q)
}
"""

_BODIES = {"SelectiveScan": _SELECTIVE_SCAN, "CausalConv1d": _CAUSAL_CONV1D,
           "WindowedAttention": _WINDOWED_ATTENTION}


def function_protos(opset: int) -> list[onnx.FunctionProto]:
    """The three model-local functions, importing the default domain at `opset` (the model's)."""
    header = f'<\n  domain: "{DOMAIN}",\n  opset_import: ["" : {opset}]\n>\n'
    out = []
    for op_type, body in _BODIES.items():
        fn = onnx.parser.parse_function(header + body)
        # Declared attribute defaults, so a node that omits one still runs (ONNX ≥ 1.15 attribute_proto).
        names = list(fn.attribute)
        del fn.attribute[:]
        for name in names:
            fn.attribute_proto.append(helper.make_attribute(name, ATTRIBUTES[op_type][name]))
        fn.doc_string = f"hymba::{op_type} v{OP_VERSION}: standard-ONNX body for runtimes without the plugin."
        out.append(fn)
    return out


# ---- schemas -------------------------------------------------------------------------------

def _tensor_type(elem_type: int, dims) -> onnx.TypeProto:
    t = onnx.TypeProto()
    t.tensor_type.elem_type = elem_type
    shape = t.tensor_type.shape
    for d in dims:
        new = shape.dim.add()
        if d is not None:
            new.CopyFrom(d)
    return t


def _dims(ctx, i):
    t = ctx.get_input_type(i)
    if t is None or not t.tensor_type.HasField("shape"):
        return None
    return list(t.tensor_type.shape.dim)


def _elem(ctx, i):
    t = ctx.get_input_type(i)
    return t.tensor_type.elem_type if t is not None else 0


def _set(ctx, i, elem, dims):
    if dims is None:
        t = onnx.TypeProto()
        t.tensor_type.elem_type = elem
        ctx.set_output_type(i, t)
    else:
        ctx.set_output_type(i, _tensor_type(elem, dims))


def _infer_selective_scan(ctx):
    x, A = _dims(ctx, 0), _dims(ctx, 2)
    _set(ctx, 0, _elem(ctx, 0), x)                                          # y (B, T, D)
    state = None if x is None or A is None else [x[0], A[0], A[1]]          # (B, D, N)
    _set(ctx, 1, TensorProto.FLOAT, state)


def _infer_causal_conv1d(ctx):
    x, w = _dims(ctx, 0), _dims(ctx, 1)
    _set(ctx, 0, _elem(ctx, 0), x)                                          # y (B, T, D)
    state = None if x is None or w is None else [x[0], w[0], w[1]]          # (B, D, K)
    _set(ctx, 1, _elem(ctx, 3), state)


def _infer_windowed_attention(ctx):
    q, v = _dims(ctx, 0), _dims(ctx, 2)
    _set(ctx, 0, _elem(ctx, 0), None if q is None or v is None else [q[0], q[1], q[2], v[3]])


def _schema(op_type, doc, inputs, outputs, constraints, infer):
    S = onnx.defs.OpSchema
    attrs = [S.Attribute(name, helper.make_attribute(name, default), f"plugin field {name}")
             for name, default in ATTRIBUTES[op_type].items()]
    attrs.append(S.Attribute("plugin_version", helper.make_attribute("plugin_version", PLUGIN_VERSION),
                             "TensorRT plugin version"))
    attrs.append(S.Attribute("plugin_namespace", helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE),
                             "TensorRT plugin namespace"))
    schema = S(op_type, DOMAIN, OP_VERSION, doc,
               inputs=[S.FormalParameter(n, t) for n, t in inputs],
               outputs=[S.FormalParameter(n, t) for n, t in outputs],
               type_constraints=constraints, attributes=attrs)
    schema.set_type_and_shape_inference_function(infer)
    return schema


def schemas() -> list[onnx.defs.OpSchema]:
    F32 = "tensor(float)"
    return [
        _schema("SelectiveScan", "Mamba-1 selective scan (hymba_deploy/ops/selective_scan.py).",
                [("x", "T"), ("dt", "T"), ("A", F32), ("B", "T"), ("C", "T"), ("D", F32), ("z", "T"),
                 ("dt_bias", F32), ("initial_state", "S")],
                [("y", "T"), ("last_state", F32)],
                [("T", _FLOATS, "model float type"), ("S", _FLOATS, "initial state: fp32 or T")],
                _infer_selective_scan),
        _schema("CausalConv1d", "Depthwise causal conv with state (hymba_deploy/ops/causal_conv1d.py).",
                [("x", "T"), ("weight", "T"), ("bias", "T"), ("conv_state", "T")],
                [("y", "T"), ("new_conv_state", "T")],
                [("T", _FLOATS, "model float type")], _infer_causal_conv1d),
        _schema("WindowedAttention", "GQA sliding-window attention with meta tokens "
                "(hymba_deploy/ops/windowed_attention.py).",
                [("q", "T"), ("k", "T"), ("v", "T"), ("kv_lengths", "tensor(int32)")], [("output", "T")],
                [("T", _FLOATS, "model float type")], _infer_windowed_attention),
    ]


_registered = False


def register_schemas() -> None:
    """Register the three schemas with `onnx.defs` (idempotent) so checker and shape inference know them."""
    global _registered
    if _registered:
        return
    for schema in schemas():
        if onnx.defs.has(schema.name, schema.since_version, schema.domain):
            continue
        onnx.defs.register_schema(schema)
    _registered = True
