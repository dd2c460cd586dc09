/* OTLP trace export request (protobuf bytes) -> Arrow column buffers, in one pass, without Python objects.
 *
 * The compiled twin of decode.decode_traces for the common case. It reads the protobuf wire format
 * directly and writes each span_log column (model.SPAN_SCHEMA order, all but received_at) into growing
 * buffers that Python wraps with pyarrow.Array.from_buffers. JSON is written as orjson writes it (same
 * key order, same escapes; doubles as the shortest text that reads back the same).
 *
 * It declines (returns None) whenever the request needs anything but the plain path, and the Python
 * decoder then does the whole request, so that every rare case has exactly one implementation:
 * malformed protobuf, invalid UTF-8, invalid ids (rejections and their messages), values over the
 * attribute size limit (truncation), duplicate attribute keys, singular fields sent twice (protobuf
 * merges them), feedback span events and annotation carrier spans (FeedbackEvents), derived columns
 * from values other than strings, ints and bools, timestamps past 2**63, nesting deeper than 32.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NCOLS 30
#define MAX_DEPTH 32
#define MAX_KEYS 256

enum { T_STR, T_I64, T_F64, T_BOOL };
/* column indexes, model.SPAN_SCHEMA order */
enum {
    C_TRACE_ID, C_SPAN_ID, C_PARENT, C_TRACE_STATE, C_FLAGS, C_NAME, C_KIND, C_START, C_END, C_DURATION,
    C_STATUS_CODE, C_STATUS_MESSAGE, C_SERVICE, C_SCOPE_NAME, C_SCOPE_VERSION, C_SESSION, C_REQUEST_ID,
    C_ATTRIBUTES, C_RESOURCE, C_SCOPE_ATTRS, C_EVENTS, C_LINKS, C_DROPPED_ATTRS, C_DROPPED_EVENTS,
    C_DROPPED_LINKS, C_MODEL, C_FEEDBACK, C_CARRIER, C_INPUT, C_OUTPUT
};
static const int COL_TYPES[NCOLS] = {
    T_STR, T_STR, T_STR, T_STR, T_I64, T_STR, T_STR, T_I64, T_I64, T_F64,
    T_STR, T_STR, T_STR, T_STR, T_STR, T_STR, T_STR,
    T_STR, T_STR, T_STR, T_STR, T_STR, T_I64, T_I64,
    T_I64, T_STR, T_STR, T_BOOL, T_STR, T_STR,
};

typedef struct {
    char *p;
    size_t n, cap;
} Buf;

typedef struct {
    Buf data, offs, valid;
    int64_t nulls;
} Col;

typedef struct {
    const uint8_t *p, *end;
} Rd;

/* a span attribute the derived columns read: where its JSON went, and its raw value */
enum { V_NONE, V_NULL, V_STR, V_INT, V_BOOL, V_OTHER };
typedef struct {
    int type;
    size_t json_off, json_len; /* in the attributes column's data */
    const uint8_t *s;
    size_t slen;
    int64_t i;
} Special;

enum {
    S_SESSION, S_REQUEST, S_MODEL1, S_MODEL2, S_MODEL3, S_INPUT, S_OUTPUT,
    S_FB0, S_FB1, S_FB2, S_FB3, S_FB4, S_FB5, S_SERVICE, NSPECIAL
};
static const char *SPECIAL_KEYS[NSPECIAL] = {
    "session.id", "client_request_id", "gen_ai.request.model", "llm.model_name", "gen_ai.response.model",
    "input.value", "output.value",
    /* model.OWN_FEEDBACK_KEYS, in order */
    "user_feedback", "user_feedback_rating", "user_feedback_category", "user_feedback_comment",
    "user_feedback_timestamp", "annotation_status",
    "service.name", /* read from the resource's attributes */
};
static size_t SPECIAL_LENS[NSPECIAL];

static const char *CARRIER_PREFIXES[4] = {"annotations.", "trace.annotations.", "session.annotations.", "evaluations."};
static const char *KINDS[6] = {"UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"};
static const char *CODES[3] = {"UNSET", "OK", "ERROR"};
static const char *EVALUATION_EVENT = "gen_ai.evaluation.result";

typedef struct {
    jmp_buf jb;
    int oom;
    Col cols[NCOLS];
    int64_t rows;
    size_t max_bytes;
    /* feedback event names (from settings), as UTF-8 */
    const char **fb_names;
    Py_ssize_t *fb_lens;
    Py_ssize_t n_fb;
    Buf tmp; /* scratch: resource and scope JSON */
} Ctx;

static _Noreturn void decline(Ctx *c) { longjmp(c->jb, 1); }
static _Noreturn void oom(Ctx *c) {
    c->oom = 1;
    longjmp(c->jb, 1);
}

/* ---------------------------------------------------------------- buffers */

static inline void reserve(Ctx *c, Buf *b, size_t more) {
    if (b->n + more <= b->cap) return;
    size_t cap = b->cap ? b->cap * 2 : 1024;
    while (cap < b->n + more) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) oom(c);
    b->p = q;
    b->cap = cap;
}
static inline void put(Ctx *c, Buf *b, const void *s, size_t n) {
    if (!n) return;
    reserve(c, b, n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static inline void putch(Ctx *c, Buf *b, char ch) {
    reserve(c, b, 1);
    b->p[b->n++] = ch;
}
static inline void puts_(Ctx *c, Buf *b, const char *s) { put(c, b, s, strlen(s)); }

static void put_u64(Ctx *c, Buf *b, uint64_t v) {
    char t[24];
    int n = 0;
    do {
        t[23 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(c, b, t + 24 - n, (size_t)n);
}
static void put_i64(Ctx *c, Buf *b, int64_t v) {
    if (v < 0) {
        putch(c, b, '-');
        put_u64(c, b, (uint64_t)0 - (uint64_t)v);
    } else {
        put_u64(c, b, (uint64_t)v);
    }
}

static const char HEX[] = "0123456789abcdef";
static void put_hex(Ctx *c, Buf *b, const uint8_t *s, size_t n) {
    reserve(c, b, 2 * n);
    char *o = b->p + b->n;
    for (size_t i = 0; i < n; i++) {
        o[2 * i] = HEX[s[i] >> 4];
        o[2 * i + 1] = HEX[s[i] & 15];
    }
    b->n += 2 * n;
}

/* ---------------------------------------------------------------- columns */

static inline void set_valid(Ctx *c, Col *col, int ok) {
    size_t byte = (size_t)(c->rows >> 3);
    if (col->valid.n <= byte) {
        reserve(c, &col->valid, byte + 1 - col->valid.n);
        memset(col->valid.p + col->valid.n, 0, byte + 1 - col->valid.n);
        col->valid.n = byte + 1;
    }
    if (ok)
        col->valid.p[byte] |= (char)(1u << (c->rows & 7));
    else
        col->nulls++;
}
/* close the current row of a string column whose bytes are already in data */
static inline void str_end(Ctx *c, Col *col, int ok) {
    int32_t off = (int32_t)col->data.n;
    if (col->data.n > INT32_MAX) decline(c);
    put(c, &col->offs, &off, 4);
    set_valid(c, col, ok);
}
static inline void str_val(Ctx *c, int k, const void *s, size_t n) {
    put(c, &c->cols[k].data, s, n);
    str_end(c, &c->cols[k], 1);
}
static inline void str_null(Ctx *c, int k) { str_end(c, &c->cols[k], 0); }
static inline void i64_val(Ctx *c, int k, int64_t v, int ok) {
    put(c, &c->cols[k].data, &v, 8);
    set_valid(c, &c->cols[k], ok);
}
static inline void bool_false(Ctx *c, int k) {
    Col *col = &c->cols[k];
    size_t byte = (size_t)(c->rows >> 3);
    if (col->data.n <= byte) {
        reserve(c, &col->data, byte + 1 - col->data.n);
        memset(col->data.p + col->data.n, 0, byte + 1 - col->data.n);
        col->data.n = byte + 1;
    }
    set_valid(c, col, 1);
}
static inline void f64_val(Ctx *c, int k, double v) {
    put(c, &c->cols[k].data, &v, 8);
    set_valid(c, &c->cols[k], 1);
}

/* ---------------------------------------------------------------- wire format */

static inline uint64_t varint(Ctx *c, Rd *r) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) decline(c);
        uint8_t b = *r->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return v;
    }
    decline(c);
}
/* the next n bytes (declines if fewer are left) */
static inline const uint8_t *take(Ctx *c, Rd *r, size_t n) {
    if ((size_t)(r->end - r->p) < n) decline(c);
    const uint8_t *p = r->p;
    r->p += n;
    return p;
}
static inline uint64_t fixed64(Ctx *c, Rd *r) {
    uint64_t v;
    memcpy(&v, take(c, r, 8), 8);
    return v;
}
static inline uint32_t fixed32(Ctx *c, Rd *r) {
    uint32_t v;
    memcpy(&v, take(c, r, 4), 4);
    return v;
}
static inline Rd delimited(Ctx *c, Rd *r) {
    uint64_t n = varint(c, r);
    if (n > (uint64_t)(r->end - r->p)) decline(c);
    Rd sub = {r->p, r->p + n};
    r->p += n;
    return sub;
}
/* next field: its number and wire type; declines on field number 0 and groups */
static inline uint32_t tag(Ctx *c, Rd *r, int *wt) {
    uint64_t t = varint(c, r);
    *wt = (int)(t & 7);
    if ((t >> 3) == 0 || (t >> 3) > 0x1fffffff || *wt == 3 || *wt == 4 || *wt > 5) decline(c);
    return (uint32_t)(t >> 3);
}
static inline void skip(Ctx *c, Rd *r, int wt) {
    switch (wt) {
        case 0: varint(c, r); break;
        case 1: fixed64(c, r); break;
        case 2: delimited(c, r); break;
        case 5: fixed32(c, r); break;
        default: decline(c);
    }
}
#define EXPECT(wt, want) \
    if ((wt) != (want)) decline(c)

/* ---------------------------------------------------------------- text */

static void check_utf8(Ctx *c, const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ULL)) {
                i += 8;
                continue;
            }
        }
        uint8_t b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if ((b & 0xe0) == 0xc0) {
            len = 2;
            cp = b & 0x1f;
        } else if ((b & 0xf0) == 0xe0) {
            len = 3;
            cp = b & 0x0f;
        } else if ((b & 0xf8) == 0xf0) {
            len = 4;
            cp = b & 0x07;
        } else {
            decline(c);
        }
        if (i + len > n) decline(c);
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) decline(c);
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            decline(c);
        i += len;
    }
}

/* 1 for bytes JSON must escape (control characters, quote, backslash) */
static uint8_t ESC[256];

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
/* nonzero when one of the 8 bytes of w is zero (exact as to whether there is one) */
static inline uint64_t zero_byte(uint64_t w) { return (w - ONES) & ~w & HIGHS; }
/* nonzero when one of the 8 bytes of w must be escaped: below 0x20, '"' or '\\' */
static inline uint64_t escape_byte(uint64_t w) {
    return ((w - ONES * 0x20) & ~w & HIGHS) | zero_byte(w ^ (ONES * '"')) | zero_byte(w ^ (ONES * '\\'));
}

static void put_json_str(Ctx *c, Buf *b, const uint8_t *s, size_t n) {
    reserve(c, b, n + 2);
    b->p[b->n++] = '"';
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        /* text is mostly plain: skip 8 bytes at a time while none needs escaping (measured: this function was a
           fifth of the decoder's time with the byte-by-byte loop alone) */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (escape_byte(w)) break;
            i += 8;
        }
        if (i >= n) break;
        uint8_t ch = s[i];
        if (!ESC[ch]) continue;
        put(c, b, s + run, i - run);
        run = i + 1;
        switch (ch) {
            case '"': put(c, b, "\\\"", 2); break;
            case '\\': put(c, b, "\\\\", 2); break;
            case '\n': put(c, b, "\\n", 2); break;
            case '\r': put(c, b, "\\r", 2); break;
            case '\t': put(c, b, "\\t", 2); break;
            case '\b': put(c, b, "\\b", 2); break;
            case '\f': put(c, b, "\\f", 2); break;
            default: {
                char u[6] = {'\\', 'u', '0', '0', HEX[ch >> 4], HEX[ch & 15]};
                put(c, b, u, 6);
            }
        }
    }
    put(c, b, s + run, n - run);
    putch(c, b, '"');
}
/* a protobuf string field as a JSON string (checked as UTF-8) */
static inline void put_pb_str(Ctx *c, Buf *b, Rd s) {
    check_utf8(c, s.p, (size_t)(s.end - s.p));
    put_json_str(c, b, s.p, (size_t)(s.end - s.p));
}

/* A double as orjson writes it: the shortest digits that read back the same; plain notation for decimal
 * exponents from -5 to 16 (with ".0" on whole numbers), else d.ddde+X; non-finite as the strings NaN,
 * Infinity, -Infinity (the model's convention). */
static void put_double(Ctx *c, Buf *b, double x) {
    if (isnan(x)) {
        puts_(c, b, "\"NaN\"");
        return;
    }
    if (isinf(x)) {
        puts_(c, b, x > 0 ? "\"Infinity\"" : "\"-Infinity\"");
        return;
    }
    if (x == 0) {
        puts_(c, b, signbit(x) ? "-0.0" : "0.0");
        return;
    }
    /* Shortest digits. Any decimal of at most 15 digits reads back as the double nearest to it (DBL_DIG), so
     * when one reads back as x, x correctly rounded to 15 digits is that decimal padded with zeros. Else try 16
     * digits: the correctly rounded decimal, or its neighbour one unit up or down in the last digit (next to a
     * power of two the doubles that read back are not centred on x); 17 always read back. Subnormals have
     * fewer bits: every length from 1 digit, with the neighbours. */
    int subnormal = fabs(x) < DBL_MIN;
    char digits[24];
    int nd = 0, exp10 = 0, neg = x < 0, found = 0;
    for (int prec = subnormal ? 0 : 14; prec <= 16 && !found; prec++) {
        char e[40];
        snprintf(e, sizeof e, "%.*e", prec, x);
        const char *p = e + neg;
        nd = 0;
        for (; *p && *p != 'e'; p++)
            if (*p != '.') digits[nd++] = *p;
        exp10 = atoi(p + 1);
        if (strtod(e, NULL) == x) {
            found = 1;
            break;
        }
        for (int step = 1; (prec == 15 || subnormal) && step >= -1 && !found; step -= 2) {
            char d[24];
            int e2 = exp10, n2 = nd, i = nd - 1;
            memcpy(d, digits, (size_t)nd);
            if (step > 0) {
                while (i >= 0 && d[i] == '9') d[i--] = '0';
                if (i < 0) { /* 99..9 + 1 = 100..0: one more power of ten */
                    d[0] = '1';
                    e2++;
                } else {
                    d[i]++;
                }
            } else {
                while (i >= 0 && d[i] == '0') d[i--] = '9';
                if (i < 0 || (i == 0 && d[0] == '1' && n2 == 1)) continue; /* would lose the leading digit */
                d[i]--;
                if (d[0] == '0') continue;
            }
            char t[48];
            int k = 0;
            if (neg) t[k++] = '-';
            t[k++] = d[0];
            t[k++] = '.';
            for (int j = 1; j < n2; j++) t[k++] = d[j];
            snprintf(t + k, sizeof t - (size_t)k, "e%d", e2);
            if (strtod(t, NULL) == x) {
                memcpy(digits, d, (size_t)n2);
                exp10 = e2;
                found = 1;
            }
        }
    }
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    int kk = exp10 + 1; /* value = 0.digits * 10^kk */
    if (neg) putch(c, b, '-');
    if (kk > 0 && kk <= 16) {
        if (nd <= kk) {
            put(c, b, digits, (size_t)nd);
            for (int i = nd; i < kk; i++) putch(c, b, '0');
            put(c, b, ".0", 2);
        } else {
            put(c, b, digits, (size_t)kk);
            putch(c, b, '.');
            put(c, b, digits + kk, (size_t)(nd - kk));
        }
    } else if (kk <= 0 && kk > -5) {
        put(c, b, "0.", 2);
        for (int i = 0; i < -kk; i++) putch(c, b, '0');
        put(c, b, digits, (size_t)nd);
    } else {
        putch(c, b, digits[0]);
        if (nd > 1) {
            putch(c, b, '.');
            put(c, b, digits + 1, (size_t)(nd - 1));
        }
        putch(c, b, 'e');
        if (kk - 1 >= 0) putch(c, b, '+');
        put_i64(c, b, kk - 1);
    }
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static void put_base64(Ctx *c, Buf *b, const uint8_t *s, size_t n) {
    reserve(c, b, (n + 2) / 3 * 4 + 2);
    char *o = b->p + b->n;
    *o++ = '"';
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = B64[(v >> 6) & 63];
        *o++ = B64[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = B64[(v >> 6) & 63];
        *o++ = '=';
    }
    *o++ = '"';
    b->n = (size_t)(o - b->p);
}

/* ---------------------------------------------------------------- attribute values */

static void put_kvs(Ctx *c, Buf *b, Rd r, uint32_t field, int depth, Special *sp, int carriers);

/* One AnyValue as JSON (decode._value); fills *sp (raw value) when sp is not NULL. */
static void put_any(Ctx *c, Buf *b, Rd v, int depth, Special *sp) {
    if (depth > MAX_DEPTH) decline(c);
    int which = 0, seen = 0, wt;
    Rd payload = {0, 0};
    uint64_t num = 0;
    while (v.p < v.end) {
        uint32_t f = tag(c, &v, &wt);
        switch (f) {
            case 1: case 5: case 6: case 7:
                EXPECT(wt, 2);
                payload = delimited(c, &v);
                break;
            case 2: case 3:
                EXPECT(wt, 0);
                num = varint(c, &v);
                break;
            case 4:
                EXPECT(wt, 1);
                num = fixed64(c, &v);
                break;
            default:
                skip(c, &v, wt);
                continue;
        }
        which = (int)f;
        seen++;
    }
    if (seen > 1) decline(c); /* protobuf would merge or replace; leave it to the Python decoder */
    if (sp) sp->type = V_OTHER;
    switch (which) {
        case 0:
            puts_(c, b, "null");
            if (sp) sp->type = V_NULL;
            break;
        case 1: {
            size_t n = (size_t)(payload.end - payload.p);
            if (n > c->max_bytes) decline(c); /* truncation: the Python decoder counts and reports it */
            put_pb_str(c, b, payload);
            if (sp) {
                sp->type = V_STR;
                sp->s = payload.p;
                sp->slen = n;
            }
            break;
        }
        case 2:
            puts_(c, b, num ? "true" : "false");
            if (sp) {
                sp->type = V_BOOL;
                sp->i = num != 0;
            }
            break;
        case 3:
            put_i64(c, b, (int64_t)num);
            if (sp) {
                sp->type = V_INT;
                sp->i = (int64_t)num;
            }
            break;
        case 4: {
            double d;
            memcpy(&d, &num, 8);
            put_double(c, b, d);
            break;
        }
        case 5: { /* ArrayValue: repeated AnyValue values = 1 */
            putch(c, b, '[');
            int first = 1;
            while (payload.p < payload.end) {
                uint32_t f = tag(c, &payload, &wt);
                if (f != 1) {
                    skip(c, &payload, wt);
                    continue;
                }
                EXPECT(wt, 2);
                Rd item = delimited(c, &payload);
                if (!first) putch(c, b, ',');
                first = 0;
                put_any(c, b, item, depth + 1, NULL);
            }
            putch(c, b, ']');
            break;
        }
        case 6: /* KeyValueList: repeated KeyValue values = 1 */
            put_kvs(c, b, payload, 1, depth + 1, NULL, 0);
            break;
        case 7: {
            size_t n = (size_t)(payload.end - payload.p);
            if (n > c->max_bytes) decline(c);
            put_base64(c, b, payload.p, n);
            break;
        }
    }
}

static int starts_with(const uint8_t *s, size_t n, const char *prefix) {
    size_t k = strlen(prefix);
    return n >= k && memcmp(s, prefix, k) == 0;
}

/* The KeyValues in field ``field`` of message r, as a JSON object (decode._attributes). With sp, records the
 * values of SPECIAL_KEYS there; with carriers (a span's own attributes), declines on annotation carriers. */
static void put_kvs(Ctx *c, Buf *b, Rd r, uint32_t field, int depth, Special *sp, int carriers) {
    if (depth > MAX_DEPTH) decline(c);
    const uint8_t *keys[MAX_KEYS];
    size_t lens[MAX_KEYS];
    int nkeys = 0, wt;
    putch(c, b, '{');
    while (r.p < r.end) {
        uint32_t f = tag(c, &r, &wt);
        if (f != field) {
            skip(c, &r, wt);
            continue;
        }
        EXPECT(wt, 2);
        Rd kv = delimited(c, &r);
        Rd key = {0, 0}, val = {0, 0};
        int nval = 0;
        while (kv.p < kv.end) {
            uint32_t g = tag(c, &kv, &wt);
            if (g == 1) {
                EXPECT(wt, 2);
                key = delimited(c, &kv);
            } else if (g == 2) {
                EXPECT(wt, 2);
                val = delimited(c, &kv);
                nval++;
            } else {
                skip(c, &kv, wt);
            }
        }
        if (nval > 1) decline(c);
        size_t klen = key.p ? (size_t)(key.end - key.p) : 0;
        /* a duplicate key: a dict keeps the last value at the first one's place; the Python decoder does that */
        if (nkeys == MAX_KEYS) decline(c);
        for (int i = 0; i < nkeys; i++)
            if (lens[i] == klen && (!klen || memcmp(keys[i], key.p, klen) == 0)) decline(c);
        keys[nkeys] = key.p;
        lens[nkeys++] = klen;
        if (nkeys > 1) putch(c, b, ',');
        if (key.p)
            put_pb_str(c, b, key);
        else
            put(c, b, "\"\"", 2);
        putch(c, b, ':');
        Special *slot = NULL;
        for (int i = 0; carriers && i < 4; i++)
            if (starts_with(key.p, klen, CARRIER_PREFIXES[i])) decline(c);
        if (sp) {
            for (int i = 0; i < NSPECIAL; i++)
                if (klen == SPECIAL_LENS[i] && memcmp(key.p, SPECIAL_KEYS[i], klen) == 0) {
                    slot = &sp[i];
                    break;
                }
        }
        size_t at = b->n;
        if (val.p)
            put_any(c, b, val, depth, slot);
        else {
            puts_(c, b, "null");
            if (slot) slot->type = V_NULL;
        }
        if (slot) {
            slot->json_off = at;
            slot->json_len = b->n - at;
        }
    }
    putch(c, b, '}');
}

/* str(value) of a derived column's source, appended to column k (NULL for an absent or null value) */
static void special_col(Ctx *c, int k, const Special *s) {
    switch (s->type) {
        case V_NONE: case V_NULL: str_null(c, k); return;
        case V_STR: str_val(c, k, s->s, s->slen); return;
        case V_BOOL: str_val(c, k, s->i ? "True" : "False", s->i ? 4 : 5); return;
        case V_INT:
            put_i64(c, &c->cols[k].data, s->i);
            str_end(c, &c->cols[k], 1);
            return;
        default: decline(c); /* str() of a float, list or dict: Python's text */
    }
}
/* a string field as a column value; NULL when empty or absent (decode: ``x or None``) */
static void opt_str(Ctx *c, int k, Rd s) {
    if (s.p && s.end > s.p)
        str_val(c, k, s.p, (size_t)(s.end - s.p));
    else
        str_null(c, k);
}
/* an enum's name, or its number when it has none (decode: ``names[v] if 0 <= v < n else str(v)``) */
static void enum_col(Ctx *c, int k, const char *const *names, int n, int32_t v) {
    if (v >= 0 && v < n) {
        str_val(c, k, names[v], strlen(names[v]));
    } else {
        put_i64(c, &c->cols[k].data, v);
        str_end(c, &c->cols[k], 1);
    }
}
static int truthy(Ctx *c, const Special *s) {
    switch (s->type) {
        case V_NONE: case V_NULL: return 0;
        case V_STR: return s->slen > 0;
        case V_BOOL: case V_INT: return s->i != 0;
        default: decline(c);
    }
}

/* ---------------------------------------------------------------- events and links */

static int is_feedback_event(Ctx *c, const uint8_t *s, size_t n) {
    if (n == strlen(EVALUATION_EVENT) && memcmp(s, EVALUATION_EVENT, n) == 0) return 1;
    for (Py_ssize_t i = 0; i < c->n_fb; i++)
        if ((size_t)c->fb_lens[i] == n && memcmp(c->fb_names[i], s, n) == 0) return 1;
    return 0;
}

static void put_event(Ctx *c, Buf *b, Rd e) {
    Rd r = e, name = {0, 0};
    uint64_t time = 0, dropped = 0;
    int wt;
    while (r.p < r.end) {
        uint32_t f = tag(c, &r, &wt);
        if (f == 1) {
            EXPECT(wt, 1);
            time = fixed64(c, &r);
        } else if (f == 2) {
            EXPECT(wt, 2);
            name = delimited(c, &r);
        } else if (f == 4) {
            EXPECT(wt, 0);
            dropped = (uint32_t)varint(c, &r);
        } else {
            skip(c, &r, wt);
        }
    }
    size_t nlen = name.p ? (size_t)(name.end - name.p) : 0;
    if (is_feedback_event(c, name.p, nlen)) decline(c); /* a FeedbackEvent: the Python decoder makes it */
    puts_(c, b, "{\"name\":");
    if (name.p)
        put_pb_str(c, b, name);
    else
        put(c, b, "\"\"", 2);
    puts_(c, b, ",\"time_unix_nano\":");
    put_u64(c, b, time);
    puts_(c, b, ",\"attributes\":");
    put_kvs(c, b, e, 3, 0, NULL, 0);
    if (dropped) {
        puts_(c, b, ",\"dropped_attributes_count\":");
        put_u64(c, b, dropped);
    }
    putch(c, b, '}');
}

static void put_link(Ctx *c, Buf *b, Rd l) {
    Rd r = l, tid = {0, 0}, sid = {0, 0}, state = {0, 0};
    uint64_t dropped = 0, flags = 0;
    int wt;
    while (r.p < r.end) {
        uint32_t f = tag(c, &r, &wt);
        switch (f) {
            case 1: EXPECT(wt, 2); tid = delimited(c, &r); break;
            case 2: EXPECT(wt, 2); sid = delimited(c, &r); break;
            case 3: EXPECT(wt, 2); state = delimited(c, &r); break;
            case 5: EXPECT(wt, 0); dropped = (uint32_t)varint(c, &r); break;
            case 6: EXPECT(wt, 5); flags = fixed32(c, &r); break;
            default: skip(c, &r, wt);
        }
    }
    puts_(c, b, "{\"trace_id\":\"");
    if (tid.p) put_hex(c, b, tid.p, (size_t)(tid.end - tid.p));
    puts_(c, b, "\",\"span_id\":\"");
    if (sid.p) put_hex(c, b, sid.p, (size_t)(sid.end - sid.p));
    puts_(c, b, "\",\"attributes\":");
    put_kvs(c, b, l, 4, 0, NULL, 0);
    if (state.p && state.end > state.p) {
        puts_(c, b, ",\"trace_state\":");
        put_pb_str(c, b, state);
    }
    if (flags) {
        puts_(c, b, ",\"flags\":");
        put_u64(c, b, flags);
    }
    if (dropped) {
        puts_(c, b, ",\"dropped_attributes_count\":");
        put_u64(c, b, dropped);
    }
    putch(c, b, '}');
}

/* ---------------------------------------------------------------- spans */

typedef struct {
    size_t res_len; /* the resource's JSON: the start of c->tmp */
    Special service;
    Rd scope_name, scope_version;
    int has_scope_attrs;
    size_t sattr_off, sattr_len;
} Context;

static int valid_id(Rd id, size_t size) {
    if ((size_t)(id.end - id.p) != size) return 0;
    for (size_t i = 0; i < size; i++)
        if (id.p[i]) return 1;
    return 0;
}

static void span(Ctx *c, Rd r, const Context *x) {
    Rd tid = {0, 0}, sid = {0, 0}, parent = {0, 0}, state = {0, 0}, name = {0, 0}, msg = {0, 0};
    uint64_t start = 0, end = 0, dattrs = 0, devents = 0, dlinks = 0;
    uint32_t flags = 0;
    int32_t kind = 0, code = 0;
    int n_events = 0, n_links = 0, wt;
    Special sp[NSPECIAL];
    memset(sp, 0, sizeof sp);
    Col *attrs = &c->cols[C_ATTRIBUTES], *events = &c->cols[C_EVENTS], *links = &c->cols[C_LINKS];
    Rd whole = r;
    while (r.p < r.end) {
        uint32_t f = tag(c, &r, &wt);
        switch (f) {
            case 1: EXPECT(wt, 2); tid = delimited(c, &r); break;
            case 2: EXPECT(wt, 2); sid = delimited(c, &r); break;
            case 3: EXPECT(wt, 2); state = delimited(c, &r); check_utf8(c, state.p, (size_t)(state.end - state.p)); break;
            case 4: EXPECT(wt, 2); parent = delimited(c, &r); break;
            case 5: EXPECT(wt, 2); name = delimited(c, &r); check_utf8(c, name.p, (size_t)(name.end - name.p)); break;
            case 6: EXPECT(wt, 0); kind = (int32_t)varint(c, &r); break;
            case 7: EXPECT(wt, 1); start = fixed64(c, &r); break;
            case 8: EXPECT(wt, 1); end = fixed64(c, &r); break;
            case 9: EXPECT(wt, 2); delimited(c, &r); break; /* attributes: one pass below, in order */
            case 10: EXPECT(wt, 0); dattrs = (uint32_t)varint(c, &r); break;
            case 11:
                EXPECT(wt, 2);
                putch(c, &events->data, n_events++ ? ',' : '[');
                put_event(c, &events->data, delimited(c, &r));
                break;
            case 12: EXPECT(wt, 0); devents = (uint32_t)varint(c, &r); break;
            case 13:
                EXPECT(wt, 2);
                putch(c, &links->data, n_links++ ? ',' : '[');
                put_link(c, &links->data, delimited(c, &r));
                break;
            case 14: EXPECT(wt, 0); dlinks = (uint32_t)varint(c, &r); break;
            case 15: { /* Status: message = 2, code = 3; a second Status merges field by field */
                EXPECT(wt, 2);
                Rd s = delimited(c, &r);
                while (s.p < s.end) {
                    uint32_t g = tag(c, &s, &wt);
                    if (g == 2) {
                        EXPECT(wt, 2);
                        msg = delimited(c, &s);
                        check_utf8(c, msg.p, (size_t)(msg.end - msg.p));
                    } else if (g == 3) {
                        EXPECT(wt, 0);
                        code = (int32_t)varint(c, &s);
                    } else {
                        skip(c, &s, wt);
                    }
                }
                break;
            }
            case 16: EXPECT(wt, 5); flags = fixed32(c, &r); break;
            default: skip(c, &r, wt);
        }
    }
    size_t plen = parent.p ? (size_t)(parent.end - parent.p) : 0;
    if (!valid_id(tid, 16) || !valid_id(sid, 8) || (plen && !valid_id(parent, 8))) decline(c); /* rejected */
    if (start > INT64_MAX || end > INT64_MAX) decline(c);

    put_kvs(c, &attrs->data, whole, 9, 0, sp, 1);
    str_end(c, attrs, 1);
    if (n_events) putch(c, &events->data, ']');
    str_end(c, events, n_events > 0);
    if (n_links) putch(c, &links->data, ']');
    str_end(c, links, n_links > 0);

    put_hex(c, &c->cols[C_TRACE_ID].data, tid.p, 16);
    str_end(c, &c->cols[C_TRACE_ID], 1);
    put_hex(c, &c->cols[C_SPAN_ID].data, sid.p, 8);
    str_end(c, &c->cols[C_SPAN_ID], 1);
    if (plen) {
        put_hex(c, &c->cols[C_PARENT].data, parent.p, 8);
        str_end(c, &c->cols[C_PARENT], 1);
    } else {
        str_null(c, C_PARENT);
    }
    opt_str(c, C_TRACE_STATE, state);
    i64_val(c, C_FLAGS, flags, flags != 0);
    str_val(c, C_NAME, name.p, name.p ? (size_t)(name.end - name.p) : 0);
    enum_col(c, C_KIND, KINDS, 6, kind);
    i64_val(c, C_START, (int64_t)start, 1);
    i64_val(c, C_END, (int64_t)end, 1);
    f64_val(c, C_DURATION, (double)((int64_t)end - (int64_t)start) / 1e6); /* Python: (end - start) / 1e6 */
    enum_col(c, C_STATUS_CODE, CODES, 3, code);
    opt_str(c, C_STATUS_MESSAGE, msg);
    if (x->service.type == V_STR) /* decode: service.name only when it is a string */
        str_val(c, C_SERVICE, x->service.s, x->service.slen);
    else
        str_null(c, C_SERVICE);
    opt_str(c, C_SCOPE_NAME, x->scope_name);
    opt_str(c, C_SCOPE_VERSION, x->scope_version);
    special_col(c, C_SESSION, &sp[S_SESSION]);
    special_col(c, C_REQUEST_ID, &sp[S_REQUEST]);
    str_val(c, C_RESOURCE, c->tmp.p, x->res_len);
    if (x->has_scope_attrs)
        str_val(c, C_SCOPE_ATTRS, c->tmp.p + x->sattr_off, x->sattr_len);
    else
        str_null(c, C_SCOPE_ATTRS);
    i64_val(c, C_DROPPED_ATTRS, (int64_t)dattrs, 1);
    i64_val(c, C_DROPPED_EVENTS, (int64_t)devents, 1);
    i64_val(c, C_DROPPED_LINKS, (int64_t)dlinks, 1);
    /* model: the first of MODEL_KEYS whose value is truthy (decode: ``a or b or c``) */
    const Special *model = truthy(c, &sp[S_MODEL1]) ? &sp[S_MODEL1]
                           : truthy(c, &sp[S_MODEL2]) ? &sp[S_MODEL2]
                                                      : &sp[S_MODEL3];
    special_col(c, C_MODEL, model); /* the last one even when falsy, as ``or`` gives it */
    /* feedback_attributes: the six own keys (null when absent) when any is present */
    int any_fb = 0;
    for (int i = S_FB0; i <= S_FB5; i++) any_fb |= sp[i].type != V_NONE;
    if (any_fb) {
        Buf *fb = &c->cols[C_FEEDBACK].data;
        putch(c, fb, '{');
        for (int i = S_FB0; i <= S_FB5; i++) {
            if (i > S_FB0) putch(c, fb, ',');
            putch(c, fb, '"');
            puts_(c, fb, SPECIAL_KEYS[i]);
            put(c, fb, "\":", 2);
            if (sp[i].type == V_NONE)
                puts_(c, fb, "null");
            else
                put(c, fb, attrs->data.p + sp[i].json_off, sp[i].json_len);
        }
        putch(c, fb, '}');
        str_end(c, &c->cols[C_FEEDBACK], 1);
    } else {
        str_null(c, C_FEEDBACK);
    }
    bool_false(c, C_CARRIER); /* carriers were declined above */
    if (plen) {
        str_null(c, C_INPUT);
        str_null(c, C_OUTPUT);
    } else {
        special_col(c, C_INPUT, &sp[S_INPUT]);
        special_col(c, C_OUTPUT, &sp[S_OUTPUT]);
    }
    c->rows++;
}

/* ---------------------------------------------------------------- resource and scope */

/* the only singular message field of r with number ``field``; declines when it is sent twice (a merge) */
static Rd only(Ctx *c, Rd r, uint32_t field, int *found) {
    Rd out = {0, 0};
    int wt;
    *found = 0;
    while (r.p < r.end) {
        uint32_t f = tag(c, &r, &wt);
        if (f == field) {
            EXPECT(wt, 2);
            out = delimited(c, &r);
            if ((*found)++) decline(c);
        } else {
            skip(c, &r, wt);
        }
    }
    return out;
}

static void scope_spans(Ctx *c, Rd r, Context *x) {
    int found, wt;
    Rd scope = only(c, r, 1, &found);
    x->scope_name = (Rd){0, 0};
    x->scope_version = (Rd){0, 0};
    x->has_scope_attrs = 0;
    if (found) {
        Rd s = scope;
        while (s.p < s.end) {
            uint32_t f = tag(c, &s, &wt);
            if (f == 1) {
                EXPECT(wt, 2);
                x->scope_name = delimited(c, &s);
                check_utf8(c, x->scope_name.p, (size_t)(x->scope_name.end - x->scope_name.p));
            } else if (f == 2) {
                EXPECT(wt, 2);
                x->scope_version = delimited(c, &s);
                check_utf8(c, x->scope_version.p, (size_t)(x->scope_version.end - x->scope_version.p));
            } else if (f == 3) {
                EXPECT(wt, 2);
                delimited(c, &s);
                x->has_scope_attrs = 1;
            } else {
                skip(c, &s, wt);
            }
        }
        if (x->has_scope_attrs) {
            x->sattr_off = c->tmp.n;
            put_kvs(c, &c->tmp, scope, 3, 0, NULL, 0);
            x->sattr_len = c->tmp.n - x->sattr_off;
        }
    }
    while (r.p < r.end) {
        uint32_t f = tag(c, &r, &wt);
        if (f == 2) {
            EXPECT(wt, 2);
            span(c, delimited(c, &r), x);
        } else {
            skip(c, &r, wt);
        }
    }
}

static void resource_spans(Ctx *c, Rd r) {
    int found, wt;
    Context x;
    memset(&x, 0, sizeof x);
    Rd res = only(c, r, 1, &found);
    c->tmp.n = 0;
    Special sp[NSPECIAL];
    memset(sp, 0, sizeof sp);
    put_kvs(c, &c->tmp, res, 1, 0, sp, 0); /* its JSON, and service.name (res is empty when absent) */
    x.res_len = c->tmp.n;
    x.service = sp[S_SERVICE];
    while (r.p < r.end) {
        uint32_t f = tag(c, &r, &wt);
        if (f == 2) {
            EXPECT(wt, 2);
            size_t keep = c->tmp.n;
            scope_spans(c, delimited(c, &r), &x);
            c->tmp.n = keep;
        } else {
            skip(c, &r, wt);
        }
    }
}

/* ---------------------------------------------------------------- Python */

static void free_ctx(Ctx *c) {
    for (int i = 0; i < NCOLS; i++) {
        free(c->cols[i].data.p);
        free(c->cols[i].offs.p);
        free(c->cols[i].valid.p);
    }
    free(c->tmp.p);
}

static PyObject *bytes_of(Buf *b) { return PyBytes_FromStringAndSize(b->p ? b->p : "", (Py_ssize_t)b->n); }

static PyObject *decode_traces(PyObject *self, PyObject *args) {
    Py_buffer raw;
    Py_ssize_t max_bytes;
    PyObject *names;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nO!", &raw, &max_bytes, &PyTuple_Type, &names)) return NULL;
    Ctx *c = calloc(1, sizeof(Ctx));
    if (!c) {
        PyBuffer_Release(&raw);
        return PyErr_NoMemory();
    }
    c->max_bytes = max_bytes < 0 ? 0 : (size_t)max_bytes;
    c->n_fb = PyTuple_GET_SIZE(names);
    c->fb_names = PyMem_Calloc((size_t)c->n_fb + 1, sizeof(char *));
    c->fb_lens = PyMem_Calloc((size_t)c->n_fb + 1, sizeof(Py_ssize_t));
    PyObject *result = NULL;
    if (!c->fb_names || !c->fb_lens) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < c->n_fb; i++) {
        c->fb_names[i] = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(names, i), &c->fb_lens[i]);
        if (!c->fb_names[i]) goto out;
    }
    int declined;
    Py_BEGIN_ALLOW_THREADS;
    declined = setjmp(c->jb);
    if (!declined) {
        for (int i = 0; i < NCOLS; i++)
            if (COL_TYPES[i] == T_STR) put(c, &c->cols[i].offs, &(int32_t){0}, 4);
        Rd r = {(const uint8_t *)raw.buf, (const uint8_t *)raw.buf + raw.len};
        int wt;
        while (r.p < r.end) {
            uint32_t f = tag(c, &r, &wt);
            if (f == 1) {
                EXPECT(wt, 2);
                resource_spans(c, delimited(c, &r));
            } else {
                skip(c, &r, wt);
            }
        }
    }
    Py_END_ALLOW_THREADS;
    if (declined) {
        if (c->oom)
            PyErr_NoMemory();
        else
            result = Py_NewRef(Py_None);
        goto out;
    }
    PyObject *cols = PyList_New(NCOLS);
    if (!cols) goto out;
    for (int i = 0; i < NCOLS; i++) {
        Col *col = &c->cols[i];
        PyObject *valid = col->nulls ? bytes_of(&col->valid) : Py_NewRef(Py_None);
        PyObject *item = COL_TYPES[i] == T_STR
                             ? Py_BuildValue("(LNNN)", (long long)col->nulls, valid, bytes_of(&col->offs),
                                             bytes_of(&col->data))
                             : Py_BuildValue("(LNN)", (long long)col->nulls, valid, bytes_of(&col->data));
        if (!item) {
            Py_DECREF(cols);
            goto out;
        }
        PyList_SET_ITEM(cols, i, item);
    }
    result = Py_BuildValue("(LN)", (long long)c->rows, cols);
out:
    PyMem_Free(c->fb_names);
    PyMem_Free(c->fb_lens);
    free_ctx(c);
    free(c);
    PyBuffer_Release(&raw);
    return result;
}

static PyMethodDef METHODS[] = {
    {"decode_traces", decode_traces, METH_VARARGS,
     "decode_traces(raw, max_attribute_bytes, feedback_event_names) -> (rows, columns) | None\n\n"
     "An ExportTraceServiceRequest's spans as span_log column buffers; None when the Python decoder\n"
     "must take the request (see the module source for when)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_otlp_fast",
    .m_doc = "Compiled OTLP trace decoding.",
    .m_size = -1,
    .m_methods = METHODS,
};

PyMODINIT_FUNC PyInit__otlp_fast(void) {
    for (int i = 0; i < 0x20; i++) ESC[i] = 1;
    ESC['"'] = ESC['\\'] = 1;
    for (int i = 0; i < NSPECIAL; i++) SPECIAL_LENS[i] = strlen(SPECIAL_KEYS[i]);
    return PyModule_Create(&MODULE);
}
