/*
 * restore: restore a binary PPM/PGM photograph with libdavi, from C.
 *
 *   restore [--task T | --model FILE] [--device D] [--precision P] [--tile N] [--seed N]
 *           [--cycles N] [--quiet] IN.pnm OUT.pnm
 *
 * A small but complete libdavi host: it loads a model into a context (the installed default
 * model of --task, or a model file), asks the model which degradation it was trained for
 * (falling back to the official operator of --task), restores the picture through
 * overlapping tiles with a progress callback, and writes the result. --precision fp32 (the
 * default), bf16 or fp16 is the network's precision (DaviContextOptions.precision, ABI 4).
 * --cycles N repeats the whole create/restore/free cycle N times (the test suite runs it
 * under AddressSanitizer).
 * Errors print the status string and the context's detailed message, and exit non-zero.
 *
 * PNM: P5 (gray) or P6 (RGB), maxval 255 (8-bit) or 65535 (16-bit, big-endian on disk).
 * Gray input with a colorization model gives RGB output.
 *
 * Build (strict C11): cc -std=c11 -Wall -Wextra -Wpedantic -Werror restore.c \
 *                       $(pkg-config --cflags --libs davi) -o restore
 */
#include "davi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint32_t width;
    uint32_t height;
    uint32_t channels;      /* 1 (P5) or 3 (P6) */
    uint32_t sample_bytes;  /* 1 or 2 */
    unsigned char *data;    /* interleaved, top-down, native-endian samples */
} Picture;

typedef struct {
    const char *task;
    const char *model;
    const char *device;
    const char *precision;
    uint32_t tile;
    uint64_t seed;
    unsigned cycles;
    int quiet;
    const char *in_path;
    const char *out_path;
} Args;

/* --- PNM ------------------------------------------------------------------------------- */

static int read_token(FILE *f, unsigned long *value)
{
    int c = fgetc(f);
    for (;;) {
        while (c == ' ' || c == '\t' || c == '\n' || c == '\r') c = fgetc(f);
        if (c != '#') break;
        while (c != '\n' && c != EOF) c = fgetc(f);
    }
    if (c < '0' || c > '9') return -1;
    *value = 0;
    while (c >= '0' && c <= '9') {
        *value = *value * 10 + (unsigned long)(c - '0');
        if (*value > 1000000ul) return -1;
        c = fgetc(f);
    }
    return 0; /* the single whitespace after the token is consumed */
}

static int read_pnm(const char *path, Picture *pic)
{
    FILE *f = fopen(path, "rb");
    char magic[3] = {0};
    unsigned long w, h, maxval;
    size_t count, i;

    if (!f) {
        perror(path);
        return -1;
    }
    if (fread(magic, 1, 2, f) != 2 || magic[0] != 'P' || (magic[1] != '5' && magic[1] != '6') ||
        read_token(f, &w) || read_token(f, &h) || read_token(f, &maxval) || w == 0 || h == 0 ||
        (maxval != 255 && maxval != 65535)) {
        fprintf(stderr, "%s: not a binary PGM/PPM with maxval 255 or 65535\n", path);
        fclose(f);
        return -1;
    }
    pic->width = (uint32_t)w;
    pic->height = (uint32_t)h;
    pic->channels = magic[1] == '5' ? 1 : 3;
    pic->sample_bytes = maxval == 255 ? 1 : 2;
    count = (size_t)w * h * pic->channels;
    pic->data = malloc(count * pic->sample_bytes);
    if (!pic->data || fread(pic->data, pic->sample_bytes, count, f) != count) {
        fprintf(stderr, "%s: truncated\n", path);
        free(pic->data);
        pic->data = NULL;
        fclose(f);
        return -1;
    }
    fclose(f);
    if (pic->sample_bytes == 2) { /* big-endian on disk, native in memory */
        uint16_t *s = (uint16_t *)(void *)pic->data;
        for (i = 0; i < count; i++) {
            const unsigned char *b = pic->data + 2 * i;
            s[i] = (uint16_t)((b[0] << 8) | b[1]);
        }
    }
    return 0;
}

static int write_pnm(const char *path, const Picture *pic)
{
    FILE *f = fopen(path, "wb");
    size_t count = (size_t)pic->width * pic->height * pic->channels, i;
    int ok;

    if (!f) {
        perror(path);
        return -1;
    }
    fprintf(f, "P%c\n%u %u\n%u\n", pic->channels == 1 ? '5' : '6', (unsigned)pic->width,
            (unsigned)pic->height, pic->sample_bytes == 1 ? 255u : 65535u);
    if (pic->sample_bytes == 1) {
        ok = fwrite(pic->data, 1, count, f) == count;
    } else {
        const uint16_t *s = (const uint16_t *)(const void *)pic->data;
        ok = 1;
        for (i = 0; ok && i < count; i++) {
            unsigned char b[2] = {(unsigned char)(s[i] >> 8), (unsigned char)(s[i] & 0xff)};
            ok = fwrite(b, 1, 2, f) == 2;
        }
    }
    if (fclose(f) != 0) ok = 0;
    if (!ok) fprintf(stderr, "%s: write failed\n", path);
    return ok ? 0 : -1;
}

/* --- libdavi ----------------------------------------------------------------------------- */

typedef struct {
    unsigned calls;
    float last;
    int quiet;
} Progress;

/* Called by davi_restore on this thread, between tiles. Returning non-zero would cancel. */
static int32_t on_progress(void *user_data, float fraction)
{
    Progress *p = user_data;
    p->calls++;
    p->last = fraction;
    if (!p->quiet) fprintf(stderr, "\rrestoring %3d%%", (int)(fraction * 100.0f + 0.5f));
    return 0;
}

static int fail(const char *what, DaviStatus status, const DaviContext *ctx)
{
    char message[1024] = "";
    if (ctx) davi_context_last_error(ctx, message, sizeof message, NULL);
    fprintf(stderr, "restore: %s: %s%s%s\n", what, davi_status_string(status),
            message[0] ? ": " : "", message);
    return -1;
}

static DaviImage describe(const Picture *pic)
{
    DaviImage d;
    memset(&d, 0, sizeof d);
    d.struct_size = (uint32_t)sizeof d;
    d.width = pic->width;
    d.height = pic->height;
    d.sample_type = pic->sample_bytes == 1 ? DAVI_SAMPLE_TYPE_U8 : DAVI_SAMPLE_TYPE_U16;
    d.layout = pic->channels == 1 ? DAVI_CHANNEL_LAYOUT_GRAY : DAVI_CHANNEL_LAYOUT_RGB;
    d.flags = 0;
    d.row_stride = (ptrdiff_t)((size_t)pic->width * pic->channels * pic->sample_bytes);
    d.data = pic->data;
    return d;
}

/* One complete cycle: context, spec, restore, free. Fills `out` on success. */
static int restore_once(const Args *args, const Picture *in, Picture *out)
{
    DaviContextOptions copts;
    DaviRestoreOptions ropts;
    DaviContext *ctx = NULL;
    DaviSpec *spec = NULL;
    DaviImage src, dst;
    Progress progress = {0, 0.0f, args->quiet};
    char err[1024] = "";
    uint32_t ow, oh;
    const char *kind;
    DaviStatus st;
    int rc = -1;

    davi_context_options_init(&copts, sizeof copts);
    copts.model_path = args->model;
    copts.task = args->model ? NULL : args->task;
    copts.device = args->device;
    copts.precision = args->precision;
    st = davi_context_new(&copts, &ctx, err, sizeof err);
    if (st != DAVI_STATUS_OK) {
        fprintf(stderr, "restore: loading the model: %s: %s\n", davi_status_string(st), err);
        return -1;
    }
    /* The operator the model was trained for; the official one of the task otherwise. */
    st = davi_context_spec(ctx, &spec);
    if (st == DAVI_STATUS_NOT_FOUND) st = davi_spec_new_task(args->task, &spec);
    if (st != DAVI_STATUS_OK) {
        fail("making the operator spec", st, ctx);
        goto done;
    }
    st = davi_output_size(spec, in->width, in->height, &ow, &oh);
    if (st != DAVI_STATUS_OK) {
        fail("output size", st, ctx);
        goto done;
    }
    kind = davi_spec_kind(spec);
    out->width = ow;
    out->height = oh;
    out->channels = strcmp(kind, "colorization") == 0 ? 3 : in->channels;
    out->sample_bytes = in->sample_bytes;
    out->data = malloc((size_t)ow * oh * out->channels * out->sample_bytes);
    if (!out->data) {
        fprintf(stderr, "restore: out of memory\n");
        goto done;
    }

    davi_restore_options_init(&ropts, sizeof ropts);
    if (args->tile) ropts.tile = args->tile;
    ropts.seed = args->seed;
    ropts.progress = on_progress;
    ropts.user_data = &progress;
    src = describe(in);
    dst = describe(out);
    st = davi_restore(ctx, &src, &dst, spec, &ropts);
    if (!args->quiet) fputc('\n', stderr);
    if (st != DAVI_STATUS_OK) {
        fail("restoring", st, ctx);
        free(out->data);
        out->data = NULL;
        goto done;
    }
    printf("restored %s: %ux%u -> %ux%u, %u progress calls, last %.3f\n", kind,
           (unsigned)in->width, (unsigned)in->height, (unsigned)ow, (unsigned)oh, progress.calls,
           (double)progress.last);
    rc = 0;
done:
    davi_spec_free(spec);
    davi_context_free(ctx);
    return rc;
}

static int parse_args(int argc, char **argv, Args *a)
{
    int i, positional = 0;
    a->task = "denoise";
    a->model = NULL;
    a->device = "auto";
    a->precision = NULL;
    a->tile = 0;
    a->seed = 0;
    a->cycles = 1;
    a->quiet = 0;
    a->in_path = a->out_path = NULL;
    for (i = 1; i < argc; i++) {
        const char *s = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(s, "--task") == 0 && has_value) a->task = argv[++i];
        else if (strcmp(s, "--model") == 0 && has_value) a->model = argv[++i];
        else if (strcmp(s, "--device") == 0 && has_value) a->device = argv[++i];
        else if (strcmp(s, "--precision") == 0 && has_value) a->precision = argv[++i];
        else if (strcmp(s, "--tile") == 0 && has_value) a->tile = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (strcmp(s, "--seed") == 0 && has_value) a->seed = strtoull(argv[++i], NULL, 10);
        else if (strcmp(s, "--cycles") == 0 && has_value) a->cycles = (unsigned)strtoul(argv[++i], NULL, 10);
        else if (strcmp(s, "--quiet") == 0) a->quiet = 1;
        else if (s[0] == '-' && s[1] == '-') return -1;
        else if (positional == 0) { a->in_path = s; positional++; }
        else if (positional == 1) { a->out_path = s; positional++; }
        else return -1;
    }
    return a->in_path && a->out_path && a->cycles > 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    Args args;
    Picture in = {0, 0, 0, 0, NULL}, out = {0, 0, 0, 0, NULL};
    unsigned cycle;
    int rc = 1;

    if (parse_args(argc, argv, &args) != 0) {
        fprintf(stderr, "usage: restore [--task T | --model FILE] [--device D] [--precision P] "
                        "[--tile N] [--seed N] [--cycles N] [--quiet] IN.pnm OUT.pnm\n");
        return 2;
    }
    if (davi_abi_version() < DAVI_ABI_VERSION) {
        fprintf(stderr, "restore: libdavi %s implements ABI %u, this program needs %u\n",
                davi_version(), (unsigned)davi_abi_version(), (unsigned)DAVI_ABI_VERSION);
        return 1;
    }
    if (read_pnm(args.in_path, &in) != 0) return 1;
    for (cycle = 0; cycle < args.cycles; cycle++) {
        free(out.data);
        out.data = NULL;
        if (restore_once(&args, &in, &out) != 0) goto done;
    }
    if (write_pnm(args.out_path, &out) != 0) goto done;
    rc = 0;
done:
    free(in.data);
    free(out.data);
    return rc;
}
