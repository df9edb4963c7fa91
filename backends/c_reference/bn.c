/* A tiny Batch Normalization reference kernel in plain C99 that speaks bnconform's backend
 * protocol (docs/protocol.md): a handshake line on stdout, then one JSON request per line on
 * stdin, each answered by one JSON line. Arithmetic is float64 and two-pass (mean, then the
 * mean of squared deviations, each summed with Neumaier compensation), the running statistics
 * follow docs/semantics.md (EMA with the num_updates schedule and zero-debiasing, or the
 * cumulative average; biased or Bessel-corrected variance), and every output is returned as
 * float64. It reads float32 and float64 inputs and declares nothing else (no half dtypes, no
 * model extensions, no gradients), so bnconform marks those cases unsupported before asking.
 * Build: cc -std=c99 -O2 -o bn bn.c -lm (bnconform does this on first use). */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- a minimal JSON reader */

typedef struct J {
    char t;            /* 'n'ull, 'b'ool, 'd' number, 's'tring, 'a'rray, 'o'bject */
    double num;        /* number, or 0/1 for a bool */
    char *str;         /* string value */
    int len;           /* items of an array or object */
    struct J **items;  /* array items or object values */
    char **keys;       /* object keys */
} J;

static const char *cursor;

static void skip(void) { while (*cursor == ' ' || *cursor == '\t' || *cursor == '\n' || *cursor == '\r') cursor++; }

static J *node(char t) { J *j = calloc(1, sizeof(J)); j->t = t; return j; }

static void release(J *j) {
    if (!j) return;
    for (int i = 0; i < j->len; i++) { release(j->items[i]); if (j->keys) free(j->keys[i]); }
    free(j->items); free(j->keys); free(j->str); free(j);
}

static char *parse_string(void) {  /* cursor on the opening quote; the strings we need are ASCII */
    size_t cap = 16, n = 0;
    char *out = malloc(cap);
    for (cursor++; *cursor && *cursor != '"'; cursor++) {
        char c = *cursor;
        if (c == '\\') {
            c = *++cursor;
            if (c == 'n') c = '\n'; else if (c == 't') c = '\t'; else if (c == 'r') c = '\r';
            else if (c == 'b') c = '\b'; else if (c == 'f') c = '\f';
            else if (c == 'u') { c = (char)strtol((char[]){cursor[1], cursor[2], cursor[3], cursor[4], 0}, NULL, 16); cursor += 4; }
        }
        if (n + 2 > cap) out = realloc(out, cap *= 2);
        out[n++] = c;
    }
    if (*cursor != '"') { free(out); return NULL; }
    cursor++;
    out[n] = 0;
    return out;
}

static J *parse_value(void);

static J *parse_container(char close) {  /* cursor after '[' or '{' */
    J *j = node(close == ']' ? 'a' : 'o');
    int cap = 0;
    skip();
    if (*cursor == close) { cursor++; return j; }
    for (;;) {
        char *key = NULL;
        skip();
        if (close == '}') {
            if (*cursor != '"' || !(key = parse_string())) { release(j); return NULL; }
            skip();
            if (*cursor++ != ':') { free(key); release(j); return NULL; }
        }
        J *value = parse_value();
        if (!value) { free(key); release(j); return NULL; }
        if (j->len == cap) {
            cap = cap ? 2 * cap : 8;
            j->items = realloc(j->items, cap * sizeof(J *));
            if (close == '}') j->keys = realloc(j->keys, cap * sizeof(char *));
        }
        if (close == '}') j->keys[j->len] = key;
        j->items[j->len++] = value;
        skip();
        if (*cursor == ',') { cursor++; continue; }
        if (*cursor == close) { cursor++; return j; }
        release(j);
        return NULL;
    }
}

static J *parse_value(void) {
    skip();
    char c = *cursor;
    if (c == '{' || c == '[') { cursor++; return parse_container(c == '{' ? '}' : ']'); }
    if (c == '"') { char *s = parse_string(); if (!s) return NULL; J *j = node('s'); j->str = s; return j; }
    if (!strncmp(cursor, "true", 4)) { cursor += 4; J *j = node('b'); j->num = 1; return j; }
    if (!strncmp(cursor, "false", 5)) { cursor += 5; return node('b'); }
    if (!strncmp(cursor, "null", 4)) { cursor += 4; return node('n'); }
    char *end;
    double v = strtod(cursor, &end);  /* JSON numbers: strtod rounds to the nearest double */
    if (end == cursor) return NULL;
    cursor = end;
    J *j = node('d');
    j->num = v;
    return j;
}

static J *get(const J *obj, const char *key) {  /* NULL when absent (or obj is not an object) */
    if (!obj || obj->t != 'o') return NULL;
    for (int i = 0; i < obj->len; i++) if (!strcmp(obj->keys[i], key)) return obj->items[i];
    return NULL;
}

static int is_true(const J *j) { return j && j->t == 'b' && j->num != 0; }
static const char *text(const J *j) { return j && j->t == 's' ? j->str : ""; }

/* ---------------------------------------------------------------- arrays (docs/case-format.md) */

typedef struct { int rank; long shape[8]; long size; double *v; } Arr;

static int decode(const J *obj, Arr *a) {  /* {"dtype", "shape", "hex"}: strtod reads C99 hex floats, nan, inf */
    const J *shape = get(obj, "shape"), *hex = get(obj, "hex");
    if (!shape || shape->t != 'a' || !hex || hex->t != 'a' || shape->len > 8) return 0;
    a->rank = shape->len;
    a->size = 1;
    for (int i = 0; i < a->rank; i++) a->size *= (a->shape[i] = (long)shape->items[i]->num);
    if (hex->len != a->size) return 0;
    a->v = malloc((a->size ? a->size : 1) * sizeof(double));
    for (long i = 0; i < a->size; i++) a->v[i] = strtod(text(hex->items[i]), NULL);
    return 1;
}

static void put_double(double v) {
    if (isnan(v)) fputs("\"nan\"", stdout);
    else if (isinf(v)) fputs(v > 0 ? "\"inf\"" : "\"-inf\"", stdout);
    else printf("\"%a\"", v);  /* C99 hexadecimal: exact, and float.fromhex / strtod read it back */
}

static void put_array(const char *key, const double *v, const long *shape, int rank) {
    long size = 1;
    printf("\"%s\":{\"dtype\":\"float64\",\"shape\":[", key);
    for (int i = 0; i < rank; i++) { printf(i ? ",%ld" : "%ld", shape[i]); size *= shape[i]; }
    fputs("],\"hex\":[", stdout);
    for (long i = 0; i < size; i++) { if (i) putchar(','); put_double(v[i]); }
    fputs("]}", stdout);
}

/* ---------------------------------------------------------------- the kernel */

typedef struct { double sum, carry; } Sum;  /* Neumaier: error ~2 ulp whatever N is */

static void add(Sum *s, double x) {
    double t = s->sum + x;
    s->carry += fabs(s->sum) >= fabs(x) ? (s->sum - t) + x : (x - t) + s->sum;
    s->sum = t;
}

static double total(const Sum *s) { return isfinite(s->sum) ? s->sum + s->carry : s->sum; }

typedef struct {
    int axis, channels, scale, center, update_rule_cumulative, bessel, zero_debias, schedule;
    double eps, decay;
    const char *eps_mode;
} Knobs;

static double rounded(double v, const char *dtype, int *ok) {  /* a knob as the framework stores it */
    if (!*dtype || !strcmp(dtype, "float64")) return v;
    if (!strcmp(dtype, "float32")) return (double)(float)v;
    *ok = 0;
    return v;
}

static double inverse_std(double var, const Knobs *k) {
    if (!strcmp(k->eps_mode, "add_outside_sqrt")) return 1.0 / (sqrt(var) + k->eps);
    if (!strcmp(k->eps_mode, "max_inside_sqrt")) return 1.0 / sqrt(isnan(var) || var > k->eps ? var : k->eps);
    return 1.0 / sqrt(var + k->eps);
}

static long inner_size(const Arr *x, int axis) {
    long inner = 1;
    for (int i = axis + 1; i < x->rank; i++) inner *= x->shape[i];
    return inner;
}

static void moments(const Arr *x, const Knobs *k, double *mean, double *var, long n) {
    long inner = inner_size(x, k->axis);
    Sum *s = calloc(k->channels, sizeof(Sum));
    for (long i = 0; i < x->size; i++) add(&s[(i / inner) % k->channels], x->v[i]);
    for (int c = 0; c < k->channels; c++) { mean[c] = total(&s[c]) / n; s[c].sum = s[c].carry = 0; }
    for (long i = 0; i < x->size; i++) {
        int c = (int)((i / inner) % k->channels);
        double d = x->v[i] - mean[c];
        add(&s[c], d * d);
    }
    for (int c = 0; c < k->channels; c++) var[c] = total(&s[c]) / n;
    free(s);
}

typedef struct { double *mean, *var, *z_mean, *z_var, product; long count; } Running;

static void update(Running *r, const Knobs *k, const double *mean, const double *var, long n) {
    double factor = k->bessel ? (double)n / (double)(n > 1 ? n - 1 : 1) : 1.0;
    double d = k->decay;
    if (k->schedule && (1.0 + r->count) / (10.0 + r->count) < d) d = (1.0 + r->count) / (10.0 + r->count);
    if (k->zero_debias) r->product *= d;
    for (int c = 0; c < k->channels; c++) {
        double v = k->bessel ? var[c] * factor : var[c];
        if (k->update_rule_cumulative) {
            r->mean[c] = r->mean[c] + (mean[c] - r->mean[c]) / (r->count + 1);
            r->var[c] = r->var[c] + (v - r->var[c]) / (r->count + 1);
        } else if (k->zero_debias) {
            r->z_mean[c] = d * r->z_mean[c] + (1.0 - d) * mean[c];
            r->z_var[c] = d * r->z_var[c] + (1.0 - d) * v;
            r->mean[c] = r->z_mean[c] / (1.0 - r->product);
            r->var[c] = r->z_var[c] / (1.0 - r->product);
        } else {
            r->mean[c] = d * r->mean[c] + (1.0 - d) * mean[c];
            r->var[c] = d * r->var[c] + (1.0 - d) * v;
        }
    }
    r->count++;
}

/* One step: y from the batch or running statistics, then the update; writes the step's outputs. */
static void step(const J *s, const Knobs *k, const double *gamma, const double *beta, Running *r) {
    Arr x;
    decode(get(s, "x"), &x);
    long n = x.size / k->channels, inner = inner_size(&x, k->axis);
    int batch = !strcmp(text(get(s, "normalize_with")), "batch");
    double *mean = calloc(k->channels, sizeof(double)), *var = calloc(k->channels, sizeof(double));
    double *y = malloc((x.size ? x.size : 1) * sizeof(double));
    if (n > 0) moments(&x, k, mean, var, n);
    const double *use_mean = batch ? mean : r->mean, *use_var = batch ? var : r->var;
    for (long i = 0; i < x.size; i++) {
        int c = (int)((i / inner) % k->channels);
        double scaled = (x.v[i] - use_mean[c]) * inverse_std(use_var[c], k);
        y[i] = scaled * (k->scale ? gamma[c] : 1.0) + (k->center ? beta[c] : 0.0);
    }
    if (is_true(get(s, "update_running_stats")) && n > 0) update(r, k, mean, var, n);
    long c_shape[1] = {k->channels};
    putchar('{');
    put_array("y", y, x.shape, x.rank);
    if (batch && n > 0) { putchar(','); put_array("batch_mean", mean, c_shape, 1); putchar(','); put_array("batch_var", var, c_shape, 1); }
    putchar(','); put_array("running_mean", r->mean, c_shape, 1);
    putchar(','); put_array("running_var", r->var, c_shape, 1);
    printf(",\"num_updates\":%ld}", r->count);
    free(x.v); free(mean); free(var); free(y);
}

/* Why this kernel cannot run the case (bnconform's capability check already filtered most), or NULL. */
static const char *refuse(const J *cfg, const J *steps) {
    const J *rs = get(cfg, "running_stats");
    if (get(cfg, "renorm") || get(cfg, "virtual_batch_size")) return "no model extensions (renorm, ghost batches)";
    for (int i = 0; i < steps->len; i++) {
        const J *s = steps->items[i];
        if (get(s, "sample_weights") || get(s, "replica_sizes") || get(s, "dy"))
            return "no sample weights, replicas or gradients";
        if (is_true(get(s, "update_running_stats")) && !rs) return "a step updates running statistics the case does not describe";
    }
    return NULL;
}

static void unsupported(long id, const char *why) {
    printf("{\"id\":%ld,\"unsupported\":\"c.reference: %s\"}\n", id, why);
}

static void answer(long id, const J *c) {
    const J *cfg = get(c, "config"), *state = get(c, "initial_state"), *steps = get(c, "steps");
    if (!cfg || !state || !steps || steps->t != 'a' || !get(cfg, "epsilon") || !get(state, "num_updates")) {
        unsupported(id, "the case lacks config, initial_state or steps");
        return;
    }
    const J *rs = get(cfg, "running_stats");
    const char *why = refuse(cfg, steps);
    Knobs k = {0};
    int ok = 1;
    k.axis = (int)get(cfg, "channel_axis")->num;
    k.scale = is_true(get(cfg, "scale"));
    k.center = is_true(get(cfg, "center"));
    k.eps_mode = text(get(cfg, "epsilon_mode"));
    double eps = get(cfg, "epsilon")->num, floor_ = get(cfg, "epsilon_floor") ? get(cfg, "epsilon_floor")->num : 0.0;
    k.eps = rounded(eps > floor_ ? eps : floor_, text(get(cfg, "epsilon_dtype")), &ok);
    if (rs) {
        const J *decay = get(rs, "decay");
        k.update_rule_cumulative = !strcmp(text(get(rs, "rule")), "cumulative");
        k.bessel = !strcmp(text(get(rs, "variance")), "bessel");
        k.zero_debias = is_true(get(rs, "zero_debias"));
        k.schedule = is_true(get(rs, "num_updates_schedule"));
        k.decay = decay && decay->t == 'd' ? rounded(decay->num, text(get(rs, "decay_dtype")), &ok) : 0.0;
    }
    if (!why && !ok) why = "epsilon or decay stored in a dtype other than float32/float64";
    if (why) {
        unsupported(id, why);
        return;
    }
    Arr gamma, beta, rmean, rvar;
    decode(get(state, "gamma"), &gamma); decode(get(state, "beta"), &beta);
    decode(get(state, "running_mean"), &rmean); decode(get(state, "running_var"), &rvar);
    k.channels = (int)gamma.size;
    Running r = {rmean.v, rvar.v, calloc(k.channels, sizeof(double)), calloc(k.channels, sizeof(double)), 1.0,
                 (long)get(state, "num_updates")->num};
    printf("{\"id\":%ld,\"outputs\":[", id);
    for (int i = 0; i < steps->len; i++) { if (i) putchar(','); step(steps->items[i], &k, gamma.v, beta.v, &r); }
    fputs("]}\n", stdout);
    free(gamma.v); free(beta.v); free(rmean.v); free(rvar.v); free(r.z_mean); free(r.z_var);
}

static const char *HANDSHAKE =
    "{\"protocol\":1,\"name\":\"c.reference\",\"version\":\"1.0\",\"devices\":[\"cpu\"],"
    "\"notes\":\"plain C99, float64 two-pass with compensated sums; reads float32/float64 inputs, returns float64\","
    "\"decay_parameter\":[\"decay\",\"old\"],\"deviations\":[],"
    "\"capabilities\":{\"dtypes\":[[\"float64\",\"float64\"],[\"float32\",\"float32\"]],\"extensions\":[],\"gradients\":[]}}";

static char *read_line(void) {  /* one request line of any length, or NULL at EOF */
    size_t cap = 1 << 16, n = 0;
    char *line = malloc(cap);
    while (fgets(line + n, (int)(cap - n), stdin)) {
        n += strlen(line + n);
        if (n && line[n - 1] == '\n') return line;
        if (n + 1 == cap) line = realloc(line, cap *= 2);
    }
    if (n) return line;
    free(line);
    return NULL;
}

int main(void) {
    puts(HANDSHAKE);
    fflush(stdout);
    for (char *line; (line = read_line()) != NULL; free(line)) {
        cursor = line;
        J *request = parse_value();
        const J *id = get(request, "id"), *c = get(request, "case");
        if (!id || id->t != 'd' || !c) {
            printf("{\"id\":%s,\"error\":{\"type\":\"ValueError\",\"message\":\"Expected: a request with id and case\"}}\n",
                   id && id->t == 'd' ? "0" : "null");
        } else {
            answer((long)id->num, c);
        }
        fflush(stdout);
        release(request);
    }
    return 0;
}
