/*
 * Training through the C API, from C, written only against include/davi.h. Built and run by
 * tests/training.rs under AddressSanitizer and UBSan.
 *
 *   training <images-dir> <scratch-dir>
 *
 * 1. trains the tiny prior preset to its end in this thread and exports it (the teacher);
 * 2. trains the tiny DAVI preset 4 steps uninterrupted (this thread), and again in libdavi's
 *    thread, cancelled from the progress callback after step 2, freed, resumed from its run
 *    directory alone and finished: every step's loss terms and held-out PSNR equal the
 *    uninterrupted run's, bit for bit;
 * 3. exports the resumed generator and restores a picture with it through davi_context_new;
 * 4. refusals: bad TOML, missing data, a corrupt checkpoint (left as it is);
 * 5. a checkpoint that cannot be written (RLIMIT_FSIZE: what a full disk looks like to the
 *    writer): DAVI_STATUS_IO_ERROR naming the step kept, which is byte for byte intact and
 *    resumes to the end;
 * 6. cancel from this thread while libdavi's thread trains, and free of a running handle.
 * Prints one line per failed check and "training: N checks, F failed"; exits 1 if F > 0.
 */
#define _DEFAULT_SOURCE /* nanosleep, setrlimit under -std=c11 */
#include "davi.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

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

#define MAX_TERMS 16
#define MAX_EVENTS 64

/* One progress report, copied (the library's struct is valid only during the callback). */
typedef struct {
    uint64_t step, checkpoint_step;
    int evaluated;
    double loss, psnr;
    uint32_t terms;
    char names[MAX_TERMS][40];
    double values[MAX_TERMS];
} Event;

typedef struct {
    Event events[MAX_EVENTS];
    int count;
    uint64_t cancel_at; /* return non-zero after this step (0: never) */
} Log;

static int32_t on_progress(void *user_data, const DaviTrainingProgress *p) {
    Log *log = user_data;
    if (log->count < MAX_EVENTS && p->struct_size >= sizeof *p) {
        Event *e = &log->events[log->count++];
        e->step = p->step;
        e->checkpoint_step = p->checkpoint_step;
        e->evaluated = (int)p->evaluated;
        e->loss = p->loss;
        e->psnr = p->heldout_psnr;
        e->terms = p->term_count < MAX_TERMS ? p->term_count : MAX_TERMS;
        for (uint32_t i = 0; i < e->terms; i++) {
            snprintf(e->names[i], sizeof e->names[i], "%s", p->term_names[i]);
            e->values[i] = p->term_values[i];
        }
    }
    return p->step == log->cancel_at;
}

static char images[1024], scratch[1024];

static void path(char *out, size_t len, const char *name) {
    snprintf(out, len, "%s/%s", scratch, name);
}

/* davi_training_new; on failure the message goes to err (if not NULL). */
static DaviStatus open_run(const char *preset, const char *config, const char *const *overrides,
                           size_t count, const char *run_dir, uint32_t resume, uint32_t kind,
                           DaviTraining **out, char *err, size_t err_len) {
    DaviTrainingOptions o;
    DaviStatus st = davi_training_options_init(&o, sizeof o);
    CHECK(st == DAVI_STATUS_OK, "options_init: %d", (int)st);
    o.kind = kind;
    o.preset = preset;
    o.config = config;
    o.overrides = overrides;
    o.override_count = count;
    o.run_dir = run_dir;
    o.resume = resume;
    *out = NULL;
    return davi_training_new(&o, out, err, err_len);
}

static void last_error(DaviTraining *t, char *buf, size_t len) {
    buf[0] = 0;
    davi_training_last_error(t, buf, len, NULL);
}

static DaviTrainingInfo info_of(DaviTraining *t) {
    DaviTrainingInfo i;
    memset(&i, 0, sizeof i);
    DaviStatus st = davi_training_info(t, &i, sizeof i);
    CHECK(st == DAVI_STATUS_OK && i.struct_size == sizeof i, "info: %d", (int)st);
    return i;
}

static DaviTrainingRunOptions run_options(uint64_t max_steps, Log *log) {
    DaviTrainingRunOptions o;
    davi_training_run_options_init(&o, sizeof o);
    o.max_steps = max_steps;
    o.progress = log ? on_progress : NULL;
    o.user_data = log;
    return o;
}

static int same_event(const Event *a, const Event *b) {
    if (a->step != b->step || a->evaluated != b->evaluated || a->terms != b->terms) return 0;
    if (a->loss != b->loss) return 0;
    if (!(a->psnr == b->psnr || (isnan(a->psnr) && isnan(b->psnr)))) return 0;
    for (uint32_t i = 0; i < a->terms; i++)
        if (strcmp(a->names[i], b->names[i]) || a->values[i] != b->values[i]) return 0;
    return 1;
}

static long file_size(const char *p) {
    FILE *f = fopen(p, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n;
}

/* The bytes of a file (malloc'd; *len receives the size), or NULL. */
static unsigned char *read_file(const char *p, long *len) {
    *len = file_size(p);
    FILE *f = fopen(p, "rb");
    if (!f || *len < 0) {
        if (f) fclose(f);
        return NULL;
    }
    unsigned char *b = malloc((size_t)*len + 1);
    size_t got = fread(b, 1, (size_t)*len, f);
    fclose(f);
    if ((long)got != *len) {
        free(b);
        return NULL;
    }
    return b;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The overrides of the tiny DAVI preset on the test images and teacher. */
static char davi_set[8][1100];
static const char *davi_overrides[8];

static void make_davi_overrides(const char *teacher, int steps) {
    snprintf(davi_set[0], sizeof davi_set[0], "data.train_dir=\"%s\"", images);
    snprintf(davi_set[1], sizeof davi_set[1], "data.heldout_dir=\"%s\"", images);
    snprintf(davi_set[2], sizeof davi_set[2], "davi.teacher=\"%s\"", teacher);
    snprintf(davi_set[3], sizeof davi_set[3], "run.total_steps=%d", steps);
    snprintf(davi_set[4], sizeof davi_set[4], "run.checkpoint_every=1000");
    snprintf(davi_set[5], sizeof davi_set[5], "run.eval_every=2");
    snprintf(davi_set[6], sizeof davi_set[6], "run.device=\"cpu\"");
    for (int i = 0; i < 7; i++) davi_overrides[i] = davi_set[i];
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: training <images-dir> <scratch-dir>\n");
        return 2;
    }
    snprintf(images, sizeof images, "%s", argv[1]);
    snprintf(scratch, sizeof scratch, "%s", argv[2]);
    CHECK(davi_abi_version() >= DAVI_ABI_VERSION, "ABI %u", davi_abi_version());
    char err[1024], msg[1024], dir[1200], file[1300], teacher[1200];
    DaviTraining *t = NULL;
    DaviStatus st;

    /* ---- 1. the prior (teacher), in this thread -------------------------------------------- */
    char set0[1100];
    snprintf(set0, sizeof set0, "data.train_dir=\"%s\"", images);
    const char *prior_set[] = {set0, "run.total_steps=2", "run.device=\"cpu\""};
    path(dir, sizeof dir, "prior");
    st = open_run("tiny-prior", NULL, prior_set, 3, dir, 0, DAVI_TRAINING_KIND_PRIOR, &t, err,
                  sizeof err);
    CHECK(st == DAVI_STATUS_OK && t, "prior: %d %s", (int)st, err);
    if (!t) return 1;
    Log prior_log = {.count = 0, .cancel_at = 0};
    DaviTrainingRunOptions ro = run_options(0, &prior_log);
    st = davi_training_run(t, &ro);
    CHECK(st == DAVI_STATUS_OK, "prior run: %d", (int)st);
    CHECK(prior_log.count == 2 && isfinite(prior_log.events[1].loss), "prior events: %d",
          prior_log.count);
    DaviTrainingInfo pi = info_of(t);
    CHECK(pi.kind == DAVI_TRAINING_KIND_PRIOR && pi.step == 2 && pi.finished == 1 &&
              pi.checkpoint_step == 2 && pi.running == 0,
          "prior info: kind %u step %llu", pi.kind, (unsigned long long)pi.step);
    path(teacher, sizeof teacher, "teacher.safetensors");
    CHECK(davi_training_export(t, teacher) == DAVI_STATUS_OK, "export the prior");
    size_t n = 0;
    CHECK(davi_training_run_dir(t, msg, sizeof msg, &n) == DAVI_STATUS_OK && strcmp(msg, dir) == 0,
          "run_dir %s", msg);
    davi_training_free(t);
    /* A prior is a teacher, not a restorer. */
    DaviContextOptions co;
    davi_context_options_init(&co, sizeof co);
    co.model_path = teacher;
    co.device = "cpu";
    DaviContext *ctx = NULL;
    st = davi_context_new(&co, &ctx, err, sizeof err);
    CHECK(st == DAVI_STATUS_MODEL_ERROR && !ctx, "a prior as a restorer: %d %s", (int)st, err);

    /* ---- 2. DAVI: uninterrupted, then cancelled and resumed ---------------------------------- */
    make_davi_overrides(teacher, 4);
    static Log full, part, rest;
    path(dir, sizeof dir, "full");
    st = open_run("tiny-davi", NULL, davi_overrides, 7, dir, 0, DAVI_TRAINING_KIND_DAVI, &t, err,
                  sizeof err);
    CHECK(st == DAVI_STATUS_OK, "davi: %d %s", (int)st, err);
    if (!t) return 1;
    ro = run_options(0, &full);
    CHECK(davi_training_run(t, &ro) == DAVI_STATUS_OK, "uninterrupted run");
    davi_training_free(t);
    CHECK(full.count == 4, "uninterrupted: %d events", full.count);
    CHECK(full.events[1].evaluated && isfinite(full.events[1].psnr) && full.events[1].psnr > 0 &&
              !full.events[0].evaluated && isnan(full.events[0].psnr) &&
              full.events[3].evaluated,
          "validation PSNR at steps 2 and 4 only");
    int has_ikl = 0;
    for (uint32_t i = 0; i < full.events[0].terms; i++)
        has_ikl |= strcmp(full.events[0].names[i], "ikl") == 0;
    CHECK(has_ikl && isfinite(full.events[0].loss), "loss terms of a DAVI step");

    path(dir, sizeof dir, "part");
    st = open_run("tiny-davi", NULL, davi_overrides, 7, dir, 0, DAVI_TRAINING_KIND_DAVI, &t, err,
                  sizeof err);
    CHECK(st == DAVI_STATUS_OK, "davi part: %d %s", (int)st, err);
    part.cancel_at = 2;
    ro = run_options(0, &part);
    CHECK(davi_training_start(t, &ro) == DAVI_STATUS_OK, "start");
    st = davi_training_wait(t);
    last_error(t, msg, sizeof msg);
    CHECK(st == DAVI_STATUS_CANCELLED && strstr(msg, "cancelled at step 2"), "wait: %d %s",
          (int)st, msg);
    DaviTrainingInfo ci = info_of(t);
    CHECK(ci.step == 2 && ci.checkpoint_step == 2 && !ci.running && !ci.finished,
          "after cancel: step %llu checkpoint %llu", (unsigned long long)ci.step,
          (unsigned long long)ci.checkpoint_step);
    davi_training_free(t);
    /* Resume from the run directory alone: its saved config. */
    st = open_run(NULL, NULL, NULL, 0, dir, 0, DAVI_TRAINING_KIND_ANY, &t, err, sizeof err);
    CHECK(st == DAVI_STATUS_OK && t, "resume: %d %s", (int)st, err);
    if (!t) return 1;
    ci = info_of(t);
    CHECK(ci.kind == DAVI_TRAINING_KIND_DAVI && ci.step == 2 && ci.total_steps == 4,
          "resumed info");
    ro = run_options(0, &rest);
    CHECK(davi_training_start(t, &ro) == DAVI_STATUS_OK, "start resumed");
    CHECK(davi_training_wait(t) == DAVI_STATUS_OK, "resumed run");
    CHECK(part.count == 2 && rest.count == 2, "events: %d + %d", part.count, rest.count);
    for (int i = 0; i < 4; i++) {
        const Event *got = i < 2 ? &part.events[i] : &rest.events[i - 2];
        CHECK(i < part.count + rest.count && same_event(got, &full.events[i]),
              "step %d differs from the uninterrupted run (loss %.17g vs %.17g, psnr %.17g vs %.17g)",
              i + 1, got->loss, full.events[i].loss, got->psnr, full.events[i].psnr);
    }
    if (rest.count == 2)
        printf("resumed step 4: loss %.17g (uninterrupted %.17g), held-out PSNR %.4f dB "
               "(uninterrupted %.4f dB)\n",
               rest.events[1].loss, full.events[3].loss, rest.events[1].psnr, full.events[3].psnr);
    snprintf(file, sizeof file, "%s/model.safetensors", dir);
    CHECK(file_size(file) > 0, "the finished run wrote %s", file);

    /* ---- 3. export and restore --------------------------------------------------------------- */
    path(file, sizeof file, "exported.safetensors");
    CHECK(davi_training_export(t, file) == DAVI_STATUS_OK, "export");
    davi_training_free(t);
    co.model_path = file;
    st = davi_context_new(&co, &ctx, err, sizeof err);
    CHECK(st == DAVI_STATUS_OK && ctx, "load the exported model: %d %s", (int)st, err);
    if (ctx) {
        DaviSpec *spec = NULL;
        CHECK(davi_context_spec(ctx, &spec) == DAVI_STATUS_OK &&
                  strcmp(davi_spec_kind(spec), "super_resolution") == 0,
              "the exported model's operator");
        unsigned char in[16 * 12 * 3], out[64 * 48 * 3];
        for (size_t j = 0; j < sizeof in; j++) in[j] = (unsigned char)(40 + (j * 7) % 150);
        memset(out, 0, sizeof out);
        uint32_t ow = 0, oh = 0;
        CHECK(davi_output_size(spec, 16, 12, &ow, &oh) == DAVI_STATUS_OK && ow == 64 && oh == 48,
              "output size %ux%u", ow, oh);
        DaviImage i = {sizeof(DaviImage), 16, 12, DAVI_SAMPLE_TYPE_U8, DAVI_CHANNEL_LAYOUT_RGB, 0,
                       16 * 3, in};
        DaviImage o = {sizeof(DaviImage), 64, 48, DAVI_SAMPLE_TYPE_U8, DAVI_CHANNEL_LAYOUT_RGB, 0,
                       64 * 3, out};
        st = davi_restore(ctx, &i, &o, spec, NULL);
        davi_context_last_error(ctx, msg, sizeof msg, NULL);
        long nonzero = 0;
        for (size_t j = 0; j < sizeof out; j++) nonzero += out[j] != 0;
        CHECK(st == DAVI_STATUS_OK && nonzero > 0, "restore with the exported model: %d %s",
              (int)st, msg);
        davi_spec_free(spec);
        davi_context_free(ctx);
    }

    /* ---- 4. refusals -------------------------------------------------------------------------- */
    path(dir, sizeof dir, "refused");
    st = open_run(NULL, "name = \"x\"\n[run\n", NULL, 0, dir, 0, 0, &t, err, sizeof err);
    CHECK(st == DAVI_STATUS_INVALID_CONFIG && !t && strstr(err, "config:"), "bad TOML: %d %s",
          (int)st, err);
    const char *missing[] = {"data.train_dir=\"/nonexistent/photos\""};
    st = open_run("tiny-prior", NULL, missing, 1, dir, 0, 0, &t, err, sizeof err);
    CHECK(st == DAVI_STATUS_NOT_FOUND && !t && strstr(err, "/nonexistent/photos"),
          "missing data: %d %s", (int)st, err);
    CHECK(strcmp(davi_status_string(DAVI_STATUS_IO_ERROR), "a file could not be read or written") == 0,
          "status string");

    /* ---- 5. a checkpoint that cannot be written ------------------------------------------------ */
    path(dir, sizeof dir, "disk");
    st = open_run("tiny-davi", NULL, davi_overrides, 7, dir, 0, DAVI_TRAINING_KIND_DAVI, &t, err,
                  sizeof err);
    CHECK(st == DAVI_STATUS_OK, "disk run: %d %s", (int)st, err);
    if (!t) return 1;
    ro = run_options(1, NULL);
    CHECK(davi_training_run(t, &ro) == DAVI_STATUS_OK, "one step");
    char ckpt[1300];
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", dir);
    long kept_len = 0;
    unsigned char *kept = read_file(ckpt, &kept_len);
    CHECK(kept && kept_len > 1000000, "checkpoint of step 1: %ld bytes", kept_len);
    struct rlimit old_limit, small;
    getrlimit(RLIMIT_FSIZE, &old_limit);
    small = old_limit;
    small.rlim_cur = (rlim_t)(kept_len / 2); /* room for the log, grids, best model: not this */
    signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0, "setrlimit");
    st = davi_training_run(t, &ro);
    setrlimit(RLIMIT_FSIZE, &old_limit);
    last_error(t, msg, sizeof msg);
    CHECK(st == DAVI_STATUS_IO_ERROR && strstr(msg, "checkpoint of step 2") &&
              strstr(msg, "step 1 is kept") && strstr(msg, "File too large"),
          "full disk: %d %s", (int)st, msg);
    long now_len = 0;
    unsigned char *now = read_file(ckpt, &now_len);
    CHECK(kept && now && now_len == kept_len && memcmp(kept, now, (size_t)kept_len) == 0,
          "the checkpoint of step 1 is left byte for byte");
    free(now);
    st = davi_training_run(t, &ro);
    last_error(t, msg, sizeof msg);
    CHECK(st == DAVI_STATUS_INVALID_ARGUMENT && strstr(msg, "failed earlier"),
          "a failed run does not go on: %d %s", (int)st, msg);
    davi_training_free(t);
    st = open_run(NULL, NULL, NULL, 0, dir, 0, 0, &t, err, sizeof err);
    CHECK(st == DAVI_STATUS_OK && t && info_of(t).step == 1, "resume after the failure: %d %s",
          (int)st, err);
    if (t) {
        ro = run_options(0, NULL);
        CHECK(davi_training_run(t, &ro) == DAVI_STATUS_OK && info_of(t).finished, "finish");
        davi_training_free(t);
    }
    /* A corrupt checkpoint: MODEL_ERROR, and the file is left as it is. */
    FILE *f = fopen(ckpt, "r+b");
    CHECK(f != NULL, "open the checkpoint");
    if (f) {
        fseek(f, 8, SEEK_SET);
        fputs("garbage, not JSON", f);
        fclose(f);
    }
    long bad_len = 0;
    unsigned char *bad = read_file(ckpt, &bad_len);
    st = open_run(NULL, NULL, NULL, 0, dir, 0, 0, &t, err, sizeof err);
    CHECK(st == DAVI_STATUS_MODEL_ERROR && !t && strstr(err, "checkpoint.safetensors"),
          "corrupt checkpoint: %d %s", (int)st, err);
    now = read_file(ckpt, &now_len);
    CHECK(bad && now && now_len == bad_len && memcmp(bad, now, (size_t)bad_len) == 0,
          "the corrupt checkpoint is left as it is");
    free(now);
    free(bad);
    free(kept);

    /* ---- 6. cancel from this thread, and free while running --------------------------------- */
    path(dir, sizeof dir, "cancel");
    const char *long_set[] = {set0, "run.total_steps=200", "run.checkpoint_every=1000",
                              "run.device=\"cpu\""};
    st = open_run("tiny-prior", NULL, long_set, 4, dir, 0, 0, &t, err, sizeof err);
    CHECK(st == DAVI_STATUS_OK, "long prior: %d %s", (int)st, err);
    if (!t) return 1;
    ro = run_options(0, NULL);
    CHECK(davi_training_start(t, &ro) == DAVI_STATUS_OK, "start long");
    CHECK(davi_training_start(t, &ro) == DAVI_STATUS_BUSY, "one run at a time");
    while (info_of(t).step < 1) sleep_ms(5);
    CHECK(davi_training_cancel(t) == DAVI_STATUS_OK, "cancel");
    st = davi_training_wait(t);
    ci = info_of(t);
    CHECK(st == DAVI_STATUS_CANCELLED && ci.step >= 1 && ci.step < 200 &&
              ci.checkpoint_step == ci.step && !ci.running,
          "cancelled from another thread: %d at %llu", (int)st, (unsigned long long)ci.step);
    CHECK(davi_training_start(t, &ro) == DAVI_STATUS_OK, "start again");
    davi_training_free(t); /* cancels, checkpoints and joins */

    printf("training: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
