/*
 * Hostile inputs at the C ABI, from C, written only against include/davi.h: handles of the
 * wrong kind, freed or pointing at unreadable memory; non-finite pixels; out-of-range
 * options; malformed names; hostile model files; and threads (own contexts and one shared
 * context). Built and run by tests/hostile.rs under AddressSanitizer and UBSan.
 *
 *   hostile <good-model> <bad-model-dir> <bad-name>...
 *
 * Each <bad-name> is a file <bad-model-dir>/<bad-name>.safetensors that must be refused with
 * DAVI_STATUS_MODEL_ERROR and a message containing <bad-name> (the field it breaks).
 * Prints one line per failed check and "hostile: N checks, F failed"; exits 1 if F > 0.
 */
#define _DEFAULT_SOURCE /* mmap MAP_ANONYMOUS under -std=c11 */
#include "davi.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static int checks, failures;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        checks++;                                                                              \
        if (!(cond)) {                                                                         \
            failures++;                                                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                               \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
        }                                                                                      \
    } while (0)

#define W 24
#define H 16

static const char *good_model;

static DaviContext *new_context(const char *path, uint32_t threads) {
    DaviContextOptions o;
    davi_context_options_init(&o, sizeof o);
    o.model_path = path;
    o.device = "cpu";
    o.threads = threads;
    DaviContext *ctx = NULL;
    char err[512] = "";
    DaviStatus st = davi_context_new(&o, &ctx, err, sizeof err);
    CHECK(st == DAVI_STATUS_OK && ctx, "context for %s: %d %s", path, (int)st, err);
    return ctx;
}

static void last_error(DaviContext *ctx, char *buf, size_t len) {
    buf[0] = 0;
    davi_context_last_error(ctx, buf, len, NULL);
}

static DaviImage rgb_f32(float *px) {
    DaviImage im = {sizeof(DaviImage), W, H, DAVI_SAMPLE_TYPE_F32, DAVI_CHANNEL_LAYOUT_RGB,
                    0, (ptrdiff_t)(W * 3 * sizeof(float)), px};
    return im;
}

static void picture(float *px, int channels) {
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < channels; c++)
                px[(y * W + x) * channels + c] =
                    0.2f + 0.6f * (float)x / W +
                    0.1f * (float)((x * 7 + y * 13 + c * 29) % 17) / 17.0f;
}

static DaviRestoreOptions restore_options(void) {
    DaviRestoreOptions o;
    davi_restore_options_init(&o, sizeof o);
    o.tile = 16;
    o.overlap = 4;
    o.seed = 5;
    return o;
}

/* Restore the test picture as f32 RGB on ctx; returns the status. */
static DaviStatus restore_f32(DaviContext *ctx, DaviSpec *spec, float *out) {
    float in[W * H * 3];
    picture(in, 3);
    DaviImage i = rgb_f32(in), o = rgb_f32(out);
    DaviRestoreOptions opts = restore_options();
    return davi_restore(ctx, &i, &o, spec, &opts);
}

/* ---- handles ----------------------------------------------------------------------------- */

static void handles(DaviContext *ctx, DaviSpec *spec) {
    /* A page nothing may read: a check that read through a bad handle would crash here. */
    void *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(page != MAP_FAILED, "mmap");
    DaviContext *bad_ctx[] = {(DaviContext *)(void *)spec, (DaviContext *)page,
                              (DaviContext *)((char *)page + 3)};
    DaviSpec *bad_spec[] = {(DaviSpec *)(void *)ctx, (DaviSpec *)page,
                            (DaviSpec *)((char *)page + 3)};
    float px[W * H * 3];
    picture(px, 3);
    DaviImage im = rgb_f32(px);
    for (size_t k = 0; k < 3; k++) {
        char buf[64];
        size_t n = 0;
        CHECK(davi_context_last_error(bad_ctx[k], buf, sizeof buf, &n) ==
                  DAVI_STATUS_INVALID_ARGUMENT, "last_error on bad context %zu", k);
        DaviSpec *s = NULL;
        CHECK(davi_context_spec(bad_ctx[k], &s) == DAVI_STATUS_INVALID_ARGUMENT && !s,
              "context_spec on bad context %zu", k);
        CHECK(davi_restore(bad_ctx[k], &im, &im, spec, NULL) == DAVI_STATUS_INVALID_ARGUMENT,
              "restore on bad context %zu", k);
        CHECK(davi_restore(ctx, &im, &im, bad_spec[k], NULL) == DAVI_STATUS_INVALID_ARGUMENT,
              "restore with bad spec %zu", k);
        CHECK(davi_spec_kind(bad_spec[k]) == NULL, "kind of bad spec %zu", k);
        CHECK(davi_spec_set_noise_sigma(bad_spec[k], 0.1) == DAVI_STATUS_INVALID_ARGUMENT,
              "setter on bad spec %zu", k);
        CHECK(davi_spec_to_text(bad_spec[k], buf, sizeof buf, &n) == DAVI_STATUS_INVALID_ARGUMENT,
              "to_text of bad spec %zu", k);
        uint32_t w = 0, h = 0;
        CHECK(davi_output_size(bad_spec[k], 4, 4, &w, &h) == DAVI_STATUS_INVALID_ARGUMENT,
              "output_size of bad spec %zu", k);
        /* Frees of anything but a live handle of their kind are ignored. */
        davi_context_free(bad_ctx[k]);
        davi_spec_free(bad_spec[k]);
    }
    char buf[128];
    last_error(ctx, buf, sizeof buf);
    CHECK(strstr(buf, "DaviSpec") != NULL, "the message names the kind: %s", buf);

    /* Freed handles: refused, and a second free is a no-op. */
    DaviSpec *gone = NULL;
    CHECK(davi_spec_new_task("denoise", &gone) == DAVI_STATUS_OK, "new spec");
    davi_spec_free(gone);
    CHECK(davi_spec_kind(gone) == NULL, "kind of a freed spec");
    CHECK(davi_restore(ctx, &im, &im, gone, NULL) == DAVI_STATUS_INVALID_ARGUMENT,
          "restore with a freed spec");
    davi_spec_free(gone);
    DaviContext *dead = new_context(good_model, 0);
    davi_context_free(dead);
    CHECK(davi_context_last_error(dead, buf, sizeof buf, NULL) == DAVI_STATUS_INVALID_ARGUMENT,
          "last_error of a freed context");
    davi_context_free(dead);
    munmap(page, 4096);
}

/* ---- pixels and options ------------------------------------------------------------------ */

static void pixels_and_options(DaviContext *ctx, DaviSpec *spec) {
    const float bad[] = {NAN, INFINITY, -INFINITY};
    char msg[512];
    for (int layout = 0; layout < 2; layout++) {
        int ch = layout ? 4 : 3;
        for (int k = 0; k < 3; k++) {
            for (int alpha = 0; alpha <= layout; alpha++) {
                float in[W * H * 4], out[W * H * 4];
                picture(in, ch);
                for (int j = 0; j < W * H * ch; j++) out[j] = 7.0f;
                /* pixel (5, 3): a colour sample, or the alpha sample */
                in[(3 * W + 5) * ch + (alpha ? 3 : 1)] = bad[k];
                DaviImage i = {sizeof(DaviImage), W, H, DAVI_SAMPLE_TYPE_F32,
                               layout ? DAVI_CHANNEL_LAYOUT_RGBA : DAVI_CHANNEL_LAYOUT_RGB, 0,
                               (ptrdiff_t)(W * ch * sizeof(float)), in};
                DaviImage o = i;
                o.data = out;
                DaviStatus st = davi_restore(ctx, &i, &o, spec, NULL);
                last_error(ctx, msg, sizeof msg);
                CHECK(st == DAVI_STATUS_INVALID_ARGUMENT && strstr(msg, "(5, 3)") &&
                          strstr(msg, "not finite"),
                      "non-finite %s (%d) in layout %d: %d %s", alpha ? "alpha" : "colour", k,
                      layout, (int)st, msg);
                int untouched = 1;
                for (int j = 0; j < W * H * ch; j++) untouched &= out[j] == 7.0f;
                CHECK(untouched, "output written after a refusal");
            }
        }
    }

    float in[W * H * 3], out[W * H * 3];
    picture(in, 3);
    DaviImage i = rgb_f32(in), o = rgb_f32(out);
    struct {
        uint32_t tile, overlap;
        double h;
        const char *word;
        DaviStatus want;
    } cases[] = {
        {0, 0xFFFFFFFFu, NAN, "overlap", DAVI_STATUS_INVALID_ARGUMENT},
        {0, 8, NAN, "overlap", DAVI_STATUS_INVALID_ARGUMENT},
        {16, 0xFFFFFFFFu, NAN, "overlap", DAVI_STATUS_INVALID_ARGUMENT},
        {0xFFFFFFFFu, 0, NAN, "multiple", DAVI_STATUS_INVALID_ARGUMENT},
        {16, 4, 1e300, "perturb_h", DAVI_STATUS_INVALID_ARGUMENT},
        {16, 4, 10.000001, "perturb_h", DAVI_STATUS_INVALID_ARGUMENT},
        {16, 4, -1e-300, "perturb_h", DAVI_STATUS_INVALID_ARGUMENT},
        {16, 4, -INFINITY, "perturb_h", DAVI_STATUS_INVALID_ARGUMENT},
        {16, 4, 10.0, "", DAVI_STATUS_OK},
        {16, 4, 0.0, "", DAVI_STATUS_OK},
        {0xFFFFFFFEu, 0, NAN, "", DAVI_STATUS_OK}, /* a tile larger than the image: one tile */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        DaviRestoreOptions opts = restore_options();
        opts.tile = cases[k].tile;
        opts.overlap = cases[k].overlap;
        opts.perturb_h = cases[k].h;
        DaviStatus st = davi_restore(ctx, &i, &o, spec, &opts);
        last_error(ctx, msg, sizeof msg);
        CHECK(st == cases[k].want && strstr(msg, cases[k].word),
              "options case %zu: status %d (%s), want %d", k, (int)st, msg, (int)cases[k].want);
        if (st == DAVI_STATUS_OK) {
            int finite = 1;
            for (int j = 0; j < W * H * 3; j++)
                finite &= isfinite(out[j]) && out[j] >= 0 && out[j] <= 1;
            CHECK(finite, "options case %zu: output outside [0, 1]", k);
        }
    }
}

/* ---- contexts and names ------------------------------------------------------------------ */

static void context_options_and_names(void) {
    struct {
        uint32_t threads;
        const char *device, *word;
        DaviStatus want;
    } cases[] = {
        {0xFFFFFFFFu, "cpu", "threads", DAVI_STATUS_INVALID_ARGUMENT},
        {1025, "cpu", "threads", DAVI_STATUS_INVALID_ARGUMENT},
        {0, "cpu ", "cpu ", DAVI_STATUS_DEVICE_ERROR},
        {0, " cpu", " cpu", DAVI_STATUS_DEVICE_ERROR},
        {0, "CPU", "CPU", DAVI_STATUS_DEVICE_ERROR},
        {0, "cuda:+0", "cuda:+0", DAVI_STATUS_DEVICE_ERROR},
        {0, "cuda:", "cuda:", DAVI_STATUS_DEVICE_ERROR},
        {0, "", "device", DAVI_STATUS_DEVICE_ERROR},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        DaviContextOptions o;
        davi_context_options_init(&o, sizeof o);
        o.model_path = good_model;
        o.device = cases[k].device;
        o.threads = cases[k].threads;
        DaviContext *ctx = NULL;
        char err[512] = "";
        DaviStatus st = davi_context_new(&o, &ctx, err, sizeof err);
        CHECK(st == cases[k].want && !ctx && strstr(err, cases[k].word),
              "context case %zu: status %d (%s), want %d", k, (int)st, err, (int)cases[k].want);
        davi_context_free(ctx);
    }
    DaviSpec *s = NULL;
    CHECK(davi_spec_new_task("den\xffoise", &s) == DAVI_STATUS_INVALID_SPEC && !s,
          "a task name that is not UTF-8 is an invalid spec");
    CHECK(davi_spec_new_task("Denoise", &s) == DAVI_STATUS_INVALID_SPEC && !s,
          "task names are exact");
    char err[256] = "";
    CHECK(davi_spec_parse("kind = \"denoising\"\nnoise_sigma = 9e9\n", &s, err, sizeof err) ==
                  DAVI_STATUS_INVALID_SPEC && !s && strstr(err, "noise_sigma"),
          "noise_sigma 9e9 in a spec: %s", err);
    CHECK(davi_spec_parse("kind = \"den\xc3\x28oising\"", &s, err, sizeof err) ==
              DAVI_STATUS_INVALID_SPEC, "spec text that is not UTF-8");
    /* Setter values at which the operator would break: refused, spec unchanged. */
    DaviSpec *blur = NULL, *color = NULL;
    davi_spec_new_task("deblur", &blur);
    davi_spec_new_task("colorize", &color);
    CHECK(davi_spec_set_blur(blur, 1.0, 1, DAVI_BLUR_MODE_DDRM) == DAVI_STATUS_INVALID_ARGUMENT,
          "ddrm blur with one tap");
    CHECK(davi_spec_set_blur(blur, 1.0, 3, 7) == DAVI_STATUS_INVALID_ARGUMENT, "blur mode 7");
    CHECK(davi_spec_set_gray_weights(color, 0, 0, 1e-300) == DAVI_STATUS_INVALID_ARGUMENT,
          "gray weights summing to 1e-300");
    CHECK(davi_spec_set_gray_weights(color, 1e300, 0, 0) == DAVI_STATUS_INVALID_ARGUMENT,
          "gray weight 1e300");
    CHECK(davi_spec_set_gray_weights(color, NAN, 1, 1) == DAVI_STATUS_INVALID_ARGUMENT,
          "gray weight NaN");
    char text[256] = "";
    davi_spec_to_text(color, text, sizeof text, NULL);
    CHECK(davi_spec_parse(text, &s, err, sizeof err) == DAVI_STATUS_OK, "text parses back");
    davi_spec_free(s);
    davi_spec_free(blur);
    davi_spec_free(color);
}

static void hostile_models(const char *dir, int n, char **names) {
    /* Not regular files: refused before anything is read (reading /dev/zero never ends). */
    const char *not_files[] = {"/dev/zero", "/dev/null", dir};
    for (size_t k = 0; k < sizeof not_files / sizeof not_files[0]; k++) {
        DaviContextOptions o;
        davi_context_options_init(&o, sizeof o);
        o.model_path = not_files[k];
        o.device = "cpu";
        DaviContext *ctx = NULL;
        char err[1024] = "";
        DaviStatus st = davi_context_new(&o, &ctx, err, sizeof err);
        CHECK(st == DAVI_STATUS_MODEL_ERROR && !ctx && strstr(err, "not a regular file"),
              "model path %s: status %d (%s)", not_files[k], (int)st, err);
    }
    for (int k = 0; k < n; k++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s.safetensors", dir, names[k]);
        DaviContextOptions o;
        davi_context_options_init(&o, sizeof o);
        o.model_path = path;
        o.device = "cpu";
        DaviContext *ctx = NULL;
        char err[1024] = "";
        DaviStatus st = davi_context_new(&o, &ctx, err, sizeof err);
        CHECK(st == DAVI_STATUS_MODEL_ERROR && !ctx && strstr(err, names[k]),
              "model with bad %s: status %d (%s), want MODEL_ERROR naming it", names[k],
              (int)st, err);
        davi_context_free(ctx);
    }
}

/* ---- threads ----------------------------------------------------------------------------- */

#define THREADS 8
#define ROUNDS 6

struct job {
    DaviContext *ctx; /* shared, or NULL: make an own context */
    DaviSpec *spec;
    const float *reference;
    int same, ok;
};

static void *worker(void *arg) {
    struct job *j = arg;
    DaviContext *ctx = j->ctx ? j->ctx : new_context(good_model, 0);
    for (int r = 0; r < ROUNDS; r++) {
        float out[W * H * 3];
        if (restore_f32(ctx, j->spec, out) == DAVI_STATUS_OK) {
            j->ok++;
            j->same += memcmp(out, j->reference, sizeof out) == 0;
        }
    }
    if (!j->ctx) davi_context_free(ctx);
    return NULL;
}

static void threads(DaviSpec *spec) {
    static float reference[W * H * 3];
    DaviContext *ctx = new_context(good_model, 0);
    CHECK(restore_f32(ctx, spec, reference) == DAVI_STATUS_OK, "sequential restore");
    for (int shared = 0; shared <= 1; shared++) {
        pthread_t t[THREADS];
        struct job jobs[THREADS];
        for (int k = 0; k < THREADS; k++) {
            jobs[k] = (struct job){shared ? ctx : NULL, spec, reference, 0, 0};
            pthread_create(&t[k], NULL, worker, &jobs[k]);
        }
        int ok = 0, same = 0;
        for (int k = 0; k < THREADS; k++) {
            pthread_join(t[k], NULL);
            ok += jobs[k].ok;
            same += jobs[k].same;
        }
        CHECK(ok == THREADS * ROUNDS && same == ok,
              "%s: %d of %d restores OK, %d bit-identical to the sequential one",
              shared ? "one shared context" : "own contexts", ok, THREADS * ROUNDS, same);
    }
    /* A different intra-op thread count may change float results in the last bits only. */
    DaviContext *one = new_context(good_model, 1);
    float single[W * H * 3];
    CHECK(restore_f32(one, spec, single) == DAVI_STATUS_OK, "threads = 1 restore");
    double worst = 0;
    for (int j = 0; j < W * H * 3; j++) {
        double d = (double)single[j] - (double)reference[j];
        d = d < 0 ? -d : d;
        worst = d > worst ? d : worst;
    }
    printf("threads = 1 vs default: largest difference %.3g\n", worst);
    CHECK(worst <= 1e-5, "threads = 1 differs from the default by %g", worst);
    davi_context_free(one);
    davi_context_free(ctx);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: hostile <good-model> <bad-model-dir> <bad-name>...\n");
        return 2;
    }
    good_model = argv[1];
    DaviContext *ctx = new_context(good_model, 0);
    DaviSpec *spec = NULL;
    CHECK(davi_spec_new_task("denoise", &spec) == DAVI_STATUS_OK, "spec");
    if (!ctx || !spec) return 1;
    handles(ctx, spec);
    pixels_and_options(ctx, spec);
    context_options_and_names();
    hostile_models(argv[2], argc - 3, argv + 3);
    threads(spec);
    davi_spec_free(spec);
    davi_context_free(ctx);
    printf("hostile: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
