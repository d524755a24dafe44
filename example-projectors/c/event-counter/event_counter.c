/*
 * event-counter, in C: the twin of the Rust example (example-projectors/event-counter),
 * written straight against Prism's WIT contract (wit/projector.wit, prism:projector@0.1.0)
 * to show that the contract does not depend on Rust or on the Rust SDK.
 *
 * Counts events: in total, per event type, and per stream category. View keys (values are
 * JSON numbers, written as the Rust twin writes them: decimal digits, nothing else):
 *   total
 *   type/<EventType>
 *   category/<category>    (the stream name before its first '-', or the whole name)
 *
 * `projector_world.h` is not committed: prism-toolchain's C route (toolchain/src/c.rs)
 * generates it at build time with wit-bindgen's C generator, compiles this file with clang
 * for wasm32 (wasi-libc provides malloc and memcpy; nothing else of libc is used, and the
 * module is checked to import only Prism's interfaces), links it with wasm-ld and turns it
 * into a component.
 *
 * Unlike the Rust SDK, which keeps a batch's values in guest memory and sends its writes in
 * one `view.write-many` when `apply` ends, this projector reads and writes the view directly
 * for every event; the host's view sees the batch's own writes, so the result is the same.
 */

#include "projector_world.h"

#include <stdlib.h>
#include <string.h>

typedef projector_world_string_t string_t;

/* A part of the batch's byte buffer. */
typedef struct {
    const uint8_t *ptr;
    size_t len;
} slice_t;

/* ---- describe, init ---------------------------------------------------------------------- */

void exports_prism_projector_projector_describe(exports_prism_projector_projector_descriptor_t *ret) {
    /* The host frees what `describe` returns (post-return): the name must be allocated. */
    projector_world_string_dup(&ret->name, "event-counter");
    /* Every event type of every stream. */
    ret->event_types = (projector_world_list_string_t){NULL, 0};
    ret->stream_prefixes = (projector_world_list_string_t){NULL, 0};
    ret->schema_version = 1;
}

bool exports_prism_projector_projector_init(string_t *config, string_t *err) {
    (void)err;
    projector_world_string_free(config); /* Arguments of exports are ours to free. */
    return true;
}

/* ---- small string helpers ---------------------------------------------------------------- */

/* A growable byte buffer; aborts (traps) when memory runs out, like Rust's allocator. */
typedef struct {
    uint8_t *ptr;
    size_t len;
    size_t cap;
} buf_t;

static void buf_push(buf_t *buf, const void *bytes, size_t len) {
    if (buf->len + len > buf->cap) {
        size_t cap = buf->cap ? buf->cap * 2 : 64;
        while (cap < buf->len + len) cap *= 2;
        buf->ptr = realloc(buf->ptr, cap);
        if (!buf->ptr) abort();
        buf->cap = cap;
    }
    if (len) memcpy(buf->ptr + buf->len, bytes, len);
    buf->len += len;
}

static void buf_str(buf_t *buf, const char *s) { buf_push(buf, s, strlen(s)); }

static void buf_u64(buf_t *buf, uint64_t n) {
    char digits[20];
    size_t i = sizeof digits;
    do {
        digits[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    buf_push(buf, digits + i, sizeof digits - i);
}

/* `s` as Rust's `{:?}` shows a string (quotes, with `"` and `\` escaped). */
static void buf_quoted(buf_t *buf, slice_t s) {
    buf_str(buf, "\"");
    for (size_t i = 0; i < s.len; i++) {
        if (s.ptr[i] == '"' || s.ptr[i] == '\\') buf_str(buf, "\\");
        buf_push(buf, s.ptr + i, 1);
    }
    buf_str(buf, "\"");
}

/* Hands a buffer over as the message of an apply-error (the host frees it). */
static void fail(exports_prism_projector_projector_apply_error_t *err, size_t index, buf_t *message) {
    err->index = (uint32_t)index;
    err->message = (string_t){message->ptr, message->len};
}

/* ---- the view ---------------------------------------------------------------------------- */

static bool is_json_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/*
 * Parses a JSON value as an unsigned 64-bit integer, accepting exactly what serde_json
 * accepts for the Rust twin's `u64`: optional whitespace, `0` or digits without a leading
 * zero, optional whitespace; no sign, fraction, exponent or overflow.
 */
static bool parse_u64(const uint8_t *p, size_t len, uint64_t *out) {
    size_t i = 0;
    while (i < len && is_json_space(p[i])) i++;
    if (i == len || p[i] < '0' || p[i] > '9') return false;
    uint64_t n = 0;
    if (p[i] == '0') {
        i++;
    } else {
        for (; i < len && p[i] >= '0' && p[i] <= '9'; i++) {
            uint64_t digit = (uint64_t)(p[i] - '0');
            if (n > (UINT64_MAX - digit) / 10) return false;
            n = n * 10 + digit;
        }
    }
    while (i < len && is_json_space(p[i])) i++;
    if (i != len) return false;
    *out = n;
    return true;
}

/*
 * Adds one to the count under the key `prefix` + `part` (a missing key counts 0), as the Rust
 * twin's `view.update(key, |count: &mut u64| *count += 1)`. On a value that is not a count it
 * fails event `index`.
 */
static bool increment(const char *prefix, slice_t part, size_t index,
                      exports_prism_projector_projector_apply_error_t *err) {
    buf_t key = {0};
    buf_str(&key, prefix);
    buf_push(&key, part.ptr, part.len);
    string_t key_str = {key.ptr, key.len};

    uint64_t count = 0;
    projector_world_list_u8_t value;
    if (prism_projector_view_get(&key_str, &value)) {
        bool ok = parse_u64(value.ptr, value.len, &count);
        projector_world_list_u8_free(&value);
        if (!ok) {
            buf_t message = {0};
            buf_str(&message, "view key ");
            buf_quoted(&message, (slice_t){key.ptr, key.len});
            buf_str(&message, ": bad JSON value: expected an unsigned 64-bit integer");
            fail(err, index, &message);
            free(key.ptr);
            return false;
        }
    }
    count += 1; /* Wraps like the Rust twin's release build (no overflow checks). */

    buf_t json = {0};
    buf_u64(&json, count);
    projector_world_list_u8_t new_value = {json.ptr, json.len};
    prism_projector_view_put(&key_str, &new_value); /* Imports borrow their arguments. */
    free(json.ptr);
    free(key.ptr);
    return true;
}

/* ---- apply ------------------------------------------------------------------------------- */

/* The part of `bytes` at `offset`, `len` bytes long; false when it is out of bounds. */
static bool part_of(projector_world_list_u8_t bytes, uint32_t offset, uint32_t len, slice_t *out) {
    if ((uint64_t)offset + len > bytes.len) return false;
    *out = (slice_t){bytes.ptr + offset, len};
    return true;
}

/* The stream's category: the part of its name before the first '-', or the whole name. */
static slice_t category(slice_t stream) {
    const uint8_t *dash = stream.len ? memchr(stream.ptr, '-', stream.len) : NULL;
    return dash ? (slice_t){stream.ptr, (size_t)(dash - stream.ptr)} : stream;
}

/* Checks that an event's parts lie in the buffer, naming the first one that does not. */
static bool decode(const prism_projector_types_event_header_t *h, projector_world_list_u8_t bytes,
                   slice_t *stream, slice_t *type, size_t index,
                   exports_prism_projector_projector_apply_error_t *err) {
    slice_t data, metadata;
    const char *bad = !part_of(bytes, h->stream_offset, h->stream_len, stream) ? "stream"
                      : !part_of(bytes, h->type_offset, h->type_len, type) ? "type"
                      : !part_of(bytes, h->data_offset, h->data_len, &data) ? "data"
                      : !part_of(bytes, h->metadata_offset, h->metadata_len, &metadata) ? "metadata"
                      : NULL;
    if (!bad) return true;
    buf_t message = {0};
    buf_str(&message, "event ");
    buf_u64(&message, h->position);
    buf_str(&message, ": ");
    buf_str(&message, bad);
    buf_str(&message, " out of bounds");
    fail(err, index, &message);
    return false;
}

bool exports_prism_projector_projector_apply(exports_prism_projector_projector_batch_t *batch,
                                             exports_prism_projector_projector_apply_error_t *err) {
    bool ok = true;
    for (size_t i = 0; ok && i < batch->events.len; i++) {
        /* Starts this event's own instruction budget; names the event a trap belongs to. */
        prism_projector_host_begin_event((uint32_t)i);
        slice_t stream, type;
        ok = decode(&batch->events.ptr[i], batch->bytes, &stream, &type, i, err) &&
             increment("total", (slice_t){NULL, 0}, i, err) &&
             increment("type/", type, i, err) &&
             increment("category/", category(stream), i, err);
    }
    exports_prism_projector_projector_batch_free(batch); /* The batch is ours to free. */
    return ok;
}
