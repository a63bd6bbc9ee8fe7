"""The C kernels ``model.c`` is built from: C99, no heap, no I/O, each emitted only when used.

The weights stay packed in flash: a layer's codes are one k-bit little-endian stream (every
weight, or with a 1-bit mask only the non-zero ones), decoded one output channel at a time into
a scratch row as ``(code - zero) * scale``, the same float32 arithmetic as PyTorch's.
"""

from __future__ import annotations

PRELUDE = """\
typedef int32_t st_i;

typedef struct {
    const uint8_t *codes;  /* k-bit codes, LSB first: every weight, or (mask) the non-zero ones */
    const float *values;   /* float32 weights when not quantized (every one, or the non-zero ones) */
    const uint8_t *mask;   /* 1 bit per weight, LSB first; NULL: every weight is stored */
    const float *scale;    /* per output channel, or one */
    const uint8_t *zero;   /* per output channel, or one */
    const float *bias;     /* per output channel, or NULL */
    st_i rows, cols, bits, per_channel;
} st_layer;

typedef struct { st_i bit, nz, pos; } st_cursor;

static float st_row_buf[ST_ROW];

static st_i st_code(const uint8_t *p, st_i bit, st_i k)
{
    st_i v = 0, i;
    for (i = 0; i < k; ++i, ++bit)
        v |= (st_i)((p[bit >> 3] >> (bit & 7)) & 1u) << i;
    return v;
}

/* The weights of the next output channel r of L, decoded into row. */
static void st_row(const st_layer *L, st_cursor *c, st_i r, float *row)
{
    const st_i ch = L->per_channel ? r : 0;
    st_i j;
    for (j = 0; j < L->cols; ++j, ++c->pos) {
        if (L->mask && !((L->mask[c->pos >> 3] >> (c->pos & 7)) & 1u)) {
            row[j] = 0.0f;
        } else if (L->codes) {
            row[j] = (float)(st_code(L->codes, c->bit, L->bits) - (st_i)L->zero[ch]) * L->scale[ch];
            c->bit += L->bits;
        } else {
            row[j] = L->values[c->nz++];
        }
    }
}
"""

KERNELS = {
    "linear": """
/* y[t][r] = bias[r] + sum_j w[r][j] x[t][j], for each of the n leading rows t */
static void st_linear(const st_layer *L, const float *x, float *y, st_i n)
{
    st_cursor c = {0, 0, 0};
    st_i r, t, j;
    for (r = 0; r < L->rows; ++r) {
        st_row(L, &c, r, st_row_buf);
        for (t = 0; t < n; ++t) {
            float acc = L->bias ? L->bias[r] : 0.0f;
            for (j = 0; j < L->cols; ++j)
                acc += st_row_buf[j] * x[t * L->cols + j];
            y[t * L->rows + r] = acc;
        }
    }
}
""",
    "conv": """
typedef struct { st_i ic, ih, iw, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups; } st_conv_t;

/* 2-D convolution (a 1-D one has ih = oh = kh = 1), zero padding, NCHW, one row. */
static void st_conv(const st_layer *L, const st_conv_t *g, const float *x, float *y)
{
    st_cursor c = {0, 0, 0};
    const st_i icg = g->ic / g->groups, ocg = L->rows / g->groups;
    st_i oc, oy, ox, ci, ky, kx;
    for (oc = 0; oc < L->rows; ++oc) {
        const st_i base = (oc / ocg) * icg;
        st_row(L, &c, oc, st_row_buf);
        for (oy = 0; oy < g->oh; ++oy)
            for (ox = 0; ox < g->ow; ++ox) {
                float acc = L->bias ? L->bias[oc] : 0.0f;
                for (ci = 0; ci < icg; ++ci)
                    for (ky = 0; ky < g->kh; ++ky) {
                        const st_i iy = oy * g->sh + ky * g->dh - g->ph;
                        if (iy < 0 || iy >= g->ih)
                            continue;
                        for (kx = 0; kx < g->kw; ++kx) {
                            const st_i ix = ox * g->sw + kx * g->dw - g->pw;
                            if (ix < 0 || ix >= g->iw)
                                continue;
                            acc += st_row_buf[(ci * g->kh + ky) * g->kw + kx] *
                                   x[((base + ci) * g->ih + iy) * g->iw + ix];
                        }
                    }
                y[(oc * g->oh + oy) * g->ow + ox] = acc;
            }
    }
}
""",
    "pool": """
typedef struct { st_i c, ih, iw, oh, ow, kh, kw, sh, sw, ph, pw, avg, include_pad; } st_pool_t;

static void st_pool(const st_pool_t *g, const float *x, float *y)
{
    st_i ch, oy, ox, ky, kx;
    for (ch = 0; ch < g->c; ++ch)
        for (oy = 0; oy < g->oh; ++oy)
            for (ox = 0; ox < g->ow; ++ox) {
                float acc = g->avg ? 0.0f : -INFINITY;
                st_i count = 0;
                for (ky = 0; ky < g->kh; ++ky)
                    for (kx = 0; kx < g->kw; ++kx) {
                        const st_i iy = oy * g->sh + ky - g->ph, ix = ox * g->sw + kx - g->pw;
                        if (iy < 0 || iy >= g->ih || ix < 0 || ix >= g->iw) {
                            count += g->include_pad;
                            continue;
                        }
                        ++count;
                        if (g->avg)
                            acc += x[(ch * g->ih + iy) * g->iw + ix];
                        else if (x[(ch * g->ih + iy) * g->iw + ix] > acc)
                            acc = x[(ch * g->ih + iy) * g->iw + ix];
                    }
                y[(ch * g->oh + oy) * g->ow + ox] = g->avg ? acc / (float)count : acc;
            }
}
""",
    "gap": """
static void st_gap(const float *x, float *y, st_i c, st_i n)
{
    st_i ch, i;
    for (ch = 0; ch < c; ++ch) {
        float acc = 0.0f;
        for (i = 0; i < n; ++i)
            acc += x[ch * n + i];
        y[ch] = acc / (float)n;
    }
}
""",
    "add": """
static void st_add(const float *a, const float *b, float *y, st_i n)
{
    st_i i;
    for (i = 0; i < n; ++i)
        y[i] = a[i] + b[i];
}
""",
    "affine": """
static void st_affine(const float *x, float *y, const float *gain, const float *shift, st_i c, st_i n)
{
    st_i ch, i;
    for (ch = 0; ch < c; ++ch)
        for (i = 0; i < n; ++i)
            y[ch * n + i] = x[ch * n + i] * gain[ch] + shift[ch];
}
""",
    "copy": """
static void st_copy(const float *x, float *y, st_i n)
{
    st_i i;
    for (i = 0; i < n; ++i)
        y[i] = x[i];
}
""",
    "argmax": """
static int st_argmax(const float *x, st_i n)
{
    st_i i, best = 0;
    for (i = 1; i < n; ++i)
        if (x[i] > x[best])
            best = i;
    return (int)best;
}
""",
}

#: Each activation: its C expression of ``v``, and whether it needs <math.h>.
ACTIVATIONS = {
    "relu": ("v > 0.0f ? v : 0.0f", False),
    "scale": ("v * {factor}", False),
    "leaky_relu": ("v > 0.0f ? v : v * {alpha}", False),
    "hardtanh": ("v < {min} ? {min} : (v > {max} ? {max} : v)", False),
    "sigmoid": ("1.0f / (1.0f + expf(-v))", True),
    "tanh": ("tanhf(v)", True),
    "silu": ("v / (1.0f + expf(-v))", True),
    "gelu": ("0.5f * v * (1.0f + erff(v * 0.70710678118654752f))", True),
    "gelu_tanh": ("0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)))", True),
}


def activation_kernel(name: str, expr: str) -> str:
    return f"""
static void st_{name}(const float *x, float *y, st_i n)
{{
    st_i i;
    for (i = 0; i < n; ++i) {{
        const float v = x[i];
        y[i] = {expr};
    }}
}}
"""
