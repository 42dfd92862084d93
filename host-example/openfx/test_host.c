/*
 * test_host: a small OpenFX 1.4 host that loads DAVI.ofx the way real hosts do and checks
 * what it renders, under the capability profiles of three real hosts.
 *
 * It finds the bundle through OFX_PLUGIN_PATH (<dir>/<name>.ofx.bundle/Contents/Linux-x86-64/
 * <name>.ofx), dlopens it, and drives the OFX sequence: OfxGetNumberOfPlugins/OfxGetPlugin,
 * setHost, load, describe, describe-in-context (Filter and General), create instance, clip
 * preferences, region of definition, regions of interest, is-identity, render over several
 * frames (and render windows), abort mid-render, destroy instance, unload, dlclose. It
 * implements the suites the plug-in uses: property, image effect, parameter (with the C
 * variadic paramGetValue / paramGetValueAtTime / paramSetValue / paramSetValueAtTime),
 * memory, message V1/V2 (variadic too), multithread (serial) and progress.
 *
 * Profiles (what each host reports about itself, from openfx-misc's README-hosts.txt):
 *   resolve  Resolve 16: API 1.4, no tiles, no multi-resolution, RGBA/Alpha, float/short/byte,
 *            render scale always 1, message suite V1 only, no progress suite.
 *   nuke     Nuke 10: API 1.2, tiles, multi-resolution, RGBA/Alpha, float only, Filter and
 *            General contexts, progress suite, top-down images (negative row bytes).
 *   natron   Natron 2.1: API 1.4, tiles, multi-resolution, RGBA/RGB/Alpha, float/short/byte,
 *            proxy renders at render scale 0.5, message V2, progress suite.
 *
 * Usage: test_host --profile NAME --data DIR --models DIR [--quick]
 *   DIR holds the 8-bit PPM frames the Rust test (sdk/capi/tests/openfx.rs) wrote: clean.ppm,
 *   noisy0..2.ppm (denoising), small.ppm (clean / 4, for SR), blurred.ppm, gray.ppm (PGM).
 *   --models DIR  the default models (photo-<task>.safetensors), for the wrong-model check.
 *   --quick  fewer renders (the AddressSanitizer run).
 * Prints one line per check ("ok …" / "FAIL …") and exits 1 if any failed.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ofxCore.h"
#include "ofxImageEffect.h"
#include "ofxMemory.h"
#include "ofxMessage.h"
#include "ofxMultiThread.h"
#include "ofxParam.h"
#include "ofxProgress.h"
#include "ofxProperty.h"

/* ---------------------------------------------------------------------------------------
 * Checks
 * ------------------------------------------------------------------------------------- */

static int g_failures, g_checks;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    g_checks++;
    if (!ok) g_failures++;
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "test_host: out of memory\n");
        exit(2);
    }
    return p;
}

static char *xstrdup(const char *s) {
    char *d = xcalloc(strlen(s) + 1, 1);
    memcpy(d, s, strlen(s) + 1);
    return d;
}

/* ---------------------------------------------------------------------------------------
 * Profiles
 * ------------------------------------------------------------------------------------- */

typedef struct Profile {
    const char *name;
    const char *host_name;
    int api_major, api_minor;
    int tiles, multires;
    const char *components[3];
    int n_components;
    const char *depths[3];
    int n_depths;
    double render_scale; /* a proxy render at this scale besides full renders (1 = none) */
    int message_v2, progress;
    int negative_rows;   /* images top-down in memory (negative kOfxImagePropRowBytes) */
} Profile;

static const Profile PROFILES[] = {
    {"resolve", "DaVinciResolve", 1, 4, 0, 0,
     {kOfxImageComponentRGBA, kOfxImageComponentAlpha}, 2,
     {kOfxBitDepthFloat, kOfxBitDepthShort, kOfxBitDepthByte}, 3, 1.0, 0, 0, 0},
    {"nuke", "uk.co.thefoundry.nuke", 1, 2, 1, 1,
     {kOfxImageComponentRGBA, kOfxImageComponentAlpha}, 2, {kOfxBitDepthFloat}, 1, 1.0, 1, 1, 1},
    {"natron", "fr.inria.Natron", 1, 4, 1, 1,
     {kOfxImageComponentRGBA, kOfxImageComponentRGB, kOfxImageComponentAlpha}, 3,
     {kOfxBitDepthFloat, kOfxBitDepthShort, kOfxBitDepthByte}, 3, 0.5, 1, 1, 0},
};

static const Profile *g_profile;
static int g_quick;

static int profile_has(const char *const *list, int n, const char *v) {
    for (int i = 0; i < n; i++)
        if (strcmp(list[i], v) == 0) return 1;
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Property sets
 * ------------------------------------------------------------------------------------- */

enum { T_INT, T_DOUBLE, T_STRING, T_POINTER };
#define MAGIC_PROPS 0x0f7a0001u

typedef struct Prop {
    char *name;
    int type, count;
    int *i;
    double *d;
    char **s;
    void **p;
} Prop;

struct OfxPropertySetStruct {
    uint32_t magic;
    Prop *props;
    int n, cap;
};
typedef struct OfxPropertySetStruct PropSet;

static void props_init(PropSet *ps) {
    memset(ps, 0, sizeof *ps);
    ps->magic = MAGIC_PROPS;
}

static void props_free(PropSet *ps) {
    for (int k = 0; k < ps->n; k++) {
        Prop *p = &ps->props[k];
        for (int j = 0; p->s && j < p->count; j++) free(p->s[j]);
        free(p->name), free(p->i), free(p->d), free(p->s), free(p->p);
    }
    free(ps->props);
    memset(ps, 0, sizeof *ps);
}

static Prop *prop_find(PropSet *ps, const char *name) {
    for (int k = 0; k < ps->n; k++)
        if (strcmp(ps->props[k].name, name) == 0) return &ps->props[k];
    return NULL;
}

/* Find or create `name` with `type`, grown to hold index `count - 1`. */
static Prop *prop_slot(PropSet *ps, const char *name, int type, int count) {
    Prop *p = prop_find(ps, name);
    if (!p) {
        if (ps->n == ps->cap) {
            ps->cap = ps->cap ? ps->cap * 2 : 16;
            Prop *grown = realloc(ps->props, (size_t)ps->cap * sizeof *grown);
            if (!grown) exit(2);
            ps->props = grown;
        }
        p = &ps->props[ps->n++];
        memset(p, 0, sizeof *p);
        p->name = xstrdup(name);
        p->type = type;
    }
    if (p->type != type) return NULL;
    if (count > p->count) {
        int *i = xcalloc((size_t)count, sizeof *i);
        double *d = xcalloc((size_t)count, sizeof *d);
        char **s = xcalloc((size_t)count, sizeof *s);
        void **q = xcalloc((size_t)count, sizeof *q);
        for (int j = 0; j < p->count; j++) {
            i[j] = p->i ? p->i[j] : 0;
            d[j] = p->d ? p->d[j] : 0;
            s[j] = p->s ? p->s[j] : NULL;
            q[j] = p->p ? p->p[j] : NULL;
        }
        for (int j = p->count; j < count; j++) s[j] = xstrdup("");
        free(p->i), free(p->d), free(p->s), free(p->p);
        p->i = i, p->d = d, p->s = s, p->p = q;
        p->count = count;
    }
    return p;
}

static int valid_props(PropSet *ps) { return ps && ps->magic == MAGIC_PROPS; }

static OfxStatus set_any(PropSet *ps, const char *name, int type, int index, int iv, double dv,
                         const char *sv, void *pv) {
    if (!valid_props(ps) || !name) return kOfxStatErrBadHandle;
    if (index < 0 || index > 64) return kOfxStatErrBadIndex;
    Prop *p = prop_slot(ps, name, type, index + 1);
    if (!p) return kOfxStatErrValue;
    switch (type) {
    case T_INT: p->i[index] = iv; break;
    case T_DOUBLE: p->d[index] = dv; break;
    case T_STRING:
        free(p->s[index]);
        p->s[index] = xstrdup(sv ? sv : "");
        break;
    default: p->p[index] = pv; break;
    }
    return kOfxStatOK;
}

static Prop *get_slot(PropSet *ps, const char *name, int type, int index, OfxStatus *st) {
    *st = kOfxStatOK;
    if (!valid_props(ps) || !name) {
        *st = kOfxStatErrBadHandle;
        return NULL;
    }
    Prop *p = prop_find(ps, name);
    if (!p) *st = kOfxStatErrUnknown;
    else if (p->type != type) *st = kOfxStatErrValue;
    else if (index < 0 || index >= p->count) *st = kOfxStatErrBadIndex;
    return *st == kOfxStatOK ? p : NULL;
}

static OfxStatus propSetPointer(OfxPropertySetHandle h, const char *n, int i, void *v) {
    return set_any(h, n, T_POINTER, i, 0, 0, NULL, v);
}
static OfxStatus propSetString(OfxPropertySetHandle h, const char *n, int i, const char *v) {
    return set_any(h, n, T_STRING, i, 0, 0, v, NULL);
}
static OfxStatus propSetDouble(OfxPropertySetHandle h, const char *n, int i, double v) {
    return set_any(h, n, T_DOUBLE, i, 0, v, NULL, NULL);
}
static OfxStatus propSetInt(OfxPropertySetHandle h, const char *n, int i, int v) {
    return set_any(h, n, T_INT, i, v, 0, NULL, NULL);
}
static OfxStatus propSetPointerN(OfxPropertySetHandle h, const char *n, int c, void *const *v) {
    OfxStatus st = kOfxStatOK;
    for (int i = c - 1; i >= 0 && st == kOfxStatOK; i--) st = propSetPointer(h, n, i, v[i]);
    return st;
}
static OfxStatus propSetStringN(OfxPropertySetHandle h, const char *n, int c,
                                const char *const *v) {
    OfxStatus st = kOfxStatOK;
    for (int i = c - 1; i >= 0 && st == kOfxStatOK; i--) st = propSetString(h, n, i, v[i]);
    return st;
}
static OfxStatus propSetDoubleN(OfxPropertySetHandle h, const char *n, int c, const double *v) {
    OfxStatus st = kOfxStatOK;
    for (int i = c - 1; i >= 0 && st == kOfxStatOK; i--) st = propSetDouble(h, n, i, v[i]);
    return st;
}
static OfxStatus propSetIntN(OfxPropertySetHandle h, const char *n, int c, const int *v) {
    OfxStatus st = kOfxStatOK;
    for (int i = c - 1; i >= 0 && st == kOfxStatOK; i--) st = propSetInt(h, n, i, v[i]);
    return st;
}
static OfxStatus propGetPointer(OfxPropertySetHandle h, const char *n, int i, void **v) {
    OfxStatus st;
    Prop *p = get_slot(h, n, T_POINTER, i, &st);
    if (p && v) *v = p->p[i];
    return st;
}
static OfxStatus propGetString(OfxPropertySetHandle h, const char *n, int i, char **v) {
    OfxStatus st;
    Prop *p = get_slot(h, n, T_STRING, i, &st);
    if (p && v) *v = p->s[i];
    return st;
}
static OfxStatus propGetDouble(OfxPropertySetHandle h, const char *n, int i, double *v) {
    OfxStatus st;
    Prop *p = get_slot(h, n, T_DOUBLE, i, &st);
    if (p && v) *v = p->d[i];
    return st;
}
static OfxStatus propGetInt(OfxPropertySetHandle h, const char *n, int i, int *v) {
    OfxStatus st;
    Prop *p = get_slot(h, n, T_INT, i, &st);
    if (p && v) *v = p->i[i];
    return st;
}
static OfxStatus propGetPointerN(OfxPropertySetHandle h, const char *n, int c, void **v) {
    OfxStatus st = kOfxStatOK;
    for (int i = 0; i < c && st == kOfxStatOK; i++) st = propGetPointer(h, n, i, &v[i]);
    return st;
}
static OfxStatus propGetStringN(OfxPropertySetHandle h, const char *n, int c, char **v) {
    OfxStatus st = kOfxStatOK;
    for (int i = 0; i < c && st == kOfxStatOK; i++) st = propGetString(h, n, i, &v[i]);
    return st;
}
static OfxStatus propGetDoubleN(OfxPropertySetHandle h, const char *n, int c, double *v) {
    OfxStatus st = kOfxStatOK;
    for (int i = 0; i < c && st == kOfxStatOK; i++) st = propGetDouble(h, n, i, &v[i]);
    return st;
}
static OfxStatus propGetIntN(OfxPropertySetHandle h, const char *n, int c, int *v) {
    OfxStatus st = kOfxStatOK;
    for (int i = 0; i < c && st == kOfxStatOK; i++) st = propGetInt(h, n, i, &v[i]);
    return st;
}
static OfxStatus propReset(OfxPropertySetHandle h, const char *n) {
    if (!valid_props(h)) return kOfxStatErrBadHandle;
    return prop_find(h, n) ? kOfxStatOK : kOfxStatErrUnknown;
}
static OfxStatus propGetDimension(OfxPropertySetHandle h, const char *n, int *count) {
    if (!valid_props(h)) return kOfxStatErrBadHandle;
    Prop *p = prop_find(h, n);
    if (!p) return kOfxStatErrUnknown;
    *count = p->count;
    return kOfxStatOK;
}

static const OfxPropertySuiteV1 PROPERTY_SUITE = {
    propSetPointer,  propSetString,  propSetDouble,  propSetInt,     propSetPointerN,
    propSetStringN,  propSetDoubleN, propSetIntN,    propGetPointer, propGetString,
    propGetDouble,   propGetInt,     propGetPointerN, propGetStringN, propGetDoubleN,
    propGetIntN,     propReset,      propGetDimension,
};

/* Host-side shorthands. */
static int pint(PropSet *ps, const char *n, int i, int fallback) {
    int v;
    return propGetInt(ps, n, i, &v) == kOfxStatOK ? v : fallback;
}
static const char *pstr(PropSet *ps, const char *n, int i) {
    char *v;
    return propGetString(ps, n, i, &v) == kOfxStatOK ? v : NULL;
}
static int pdim(PropSet *ps, const char *n) {
    int c = 0;
    return propGetDimension(ps, n, &c) == kOfxStatOK ? c : 0;
}
static int phas_string(PropSet *ps, const char *n, const char *v) {
    for (int i = 0; i < pdim(ps, n); i++)
        if (strcmp(pstr(ps, n, i), v) == 0) return 1;
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Effects, clips, parameters
 * ------------------------------------------------------------------------------------- */

#define MAGIC_EFFECT 0x0f7a0002u
#define MAGIC_CLIP 0x0f7a0003u
#define MAGIC_PARAM 0x0f7a0004u
#define MAGIC_PARAMSET 0x0f7a0005u
#define MAGIC_MEMORY 0x0f7a0006u
#define MAX_PARAMS 32
#define MAX_CLIPS 4

struct OfxParamStruct {
    uint32_t magic;
    char *name, *type;
    PropSet props;
    int ival[2];
    double dval[2];
    char *sval;
};

struct OfxParamSetStruct {
    uint32_t magic;
    PropSet props;
    struct OfxParamStruct *params[MAX_PARAMS];
    int n;
};

struct OfxImageEffectStruct;
struct OfxImageClipStruct {
    uint32_t magic;
    char *name;
    PropSet props;
    struct OfxImageEffectStruct *effect;
};

typedef struct Frames Frames;
struct OfxImageEffectStruct {
    uint32_t magic;
    PropSet props;
    struct OfxParamSetStruct params;
    struct OfxImageClipStruct *clips[MAX_CLIPS];
    int nclips;
    int is_instance;
    /* Render state of an instance. */
    const Frames *frames;    /* the source clip's frames */
    const char *depth, *components;
    double scale;
    OfxRectI out_bounds;     /* the output image the host allocates */
    int abort_after;         /* abort() and progressUpdate say stop from their Nth call (0 = never) */
    int progress_calls, abort_calls, progress_open, images_out;
    double last_progress;
    int progress_backwards;
    PropSet *out_image;      /* the last output image handed out (kept until the next render) */
    PropSet *released[8];
};

static struct OfxImageClipStruct *clip_new(struct OfxImageEffectStruct *e, const char *name) {
    struct OfxImageClipStruct *c = xcalloc(1, sizeof *c);
    c->magic = MAGIC_CLIP;
    c->name = xstrdup(name);
    c->effect = e;
    props_init(&c->props);
    propSetString(&c->props, kOfxPropType, 0, kOfxTypeClip);
    propSetString(&c->props, kOfxPropName, 0, name);
    return c;
}

static void clip_free(struct OfxImageClipStruct *c) {
    props_free(&c->props);
    free(c->name);
    free(c);
}

static struct OfxParamStruct *param_new(const char *type, const char *name) {
    struct OfxParamStruct *p = xcalloc(1, sizeof *p);
    p->magic = MAGIC_PARAM;
    p->name = xstrdup(name);
    p->type = xstrdup(type);
    p->sval = xstrdup("");
    props_init(&p->props);
    propSetString(&p->props, kOfxPropType, 0, kOfxTypeParameter);
    propSetString(&p->props, kOfxPropName, 0, name);
    propSetString(&p->props, kOfxParamPropType, 0, type);
    return p;
}

static void param_free(struct OfxParamStruct *p) {
    props_free(&p->props);
    free(p->name), free(p->type), free(p->sval);
    free(p);
}

static struct OfxImageEffectStruct *effect_new(const char *context, int instance) {
    struct OfxImageEffectStruct *e = xcalloc(1, sizeof *e);
    e->magic = MAGIC_EFFECT;
    e->is_instance = instance;
    props_init(&e->props);
    props_init(&e->params.props);
    e->params.magic = MAGIC_PARAMSET;
    propSetString(&e->props, kOfxPropType, 0,
                  instance ? kOfxTypeImageEffectInstance : kOfxTypeImageEffect);
    if (context) propSetString(&e->props, kOfxImageEffectPropContext, 0, context);
    e->scale = 1.0;
    return e;
}

static void effect_free(struct OfxImageEffectStruct *e) {
    for (int i = 0; i < e->nclips; i++) clip_free(e->clips[i]);
    for (int i = 0; i < e->params.n; i++) param_free(e->params.params[i]);
    props_free(&e->params.props);
    props_free(&e->props);
    free(e);
}

static struct OfxImageClipStruct *effect_clip(struct OfxImageEffectStruct *e, const char *name) {
    for (int i = 0; i < e->nclips; i++)
        if (strcmp(e->clips[i]->name, name) == 0) return e->clips[i];
    return NULL;
}

static struct OfxParamStruct *effect_param(struct OfxImageEffectStruct *e, const char *name) {
    for (int i = 0; i < e->params.n; i++)
        if (strcmp(e->params.params[i]->name, name) == 0) return e->params.params[i];
    return NULL;
}

static void copy_props(PropSet *dst, PropSet *src) {
    for (int k = 0; k < src->n; k++) {
        Prop *p = &src->props[k];
        for (int j = 0; j < p->count; j++) {
            switch (p->type) {
            case T_INT: propSetInt(dst, p->name, j, p->i[j]); break;
            case T_DOUBLE: propSetDouble(dst, p->name, j, p->d[j]); break;
            case T_STRING: propSetString(dst, p->name, j, p->s[j]); break;
            default: propSetPointer(dst, p->name, j, p->p[j]); break;
            }
        }
    }
}

/* An instance made from a context descriptor: its clips and parameters (values = defaults). */
static struct OfxImageEffectStruct *instance_from(struct OfxImageEffectStruct *desc,
                                                  const char *context) {
    struct OfxImageEffectStruct *e = effect_new(context, 1);
    propSetInt(&e->props, kOfxImageEffectPropSupportsTiles, 0,
               pint(&desc->props, kOfxImageEffectPropSupportsTiles, 0, 1));
    propSetDouble(&e->props, kOfxImageEffectPropProjectSize, 0, 96);
    propSetDouble(&e->props, kOfxImageEffectPropProjectSize, 1, 64);
    propSetDouble(&e->props, kOfxImageEffectPropFrameRate, 0, 24.0);
    propSetPointer(&e->props, kOfxPropInstanceData, 0, NULL);
    for (int i = 0; i < desc->nclips; i++) {
        struct OfxImageClipStruct *c = clip_new(e, desc->clips[i]->name);
        copy_props(&c->props, &desc->clips[i]->props);
        propSetInt(&c->props, kOfxImageClipPropConnected, 0, 1);
        propSetString(&c->props, kOfxImageEffectPropComponents, 0, kOfxImageComponentRGBA);
        propSetString(&c->props, kOfxImageEffectPropPixelDepth, 0, kOfxBitDepthFloat);
        propSetString(&c->props, kOfxImageClipPropUnmappedComponents, 0, kOfxImageComponentRGBA);
        propSetString(&c->props, kOfxImageClipPropUnmappedPixelDepth, 0, kOfxBitDepthFloat);
        propSetString(&c->props, kOfxImageEffectPropPreMultiplication, 0, kOfxImageUnPreMultiplied);
        propSetDouble(&c->props, kOfxImagePropPixelAspectRatio, 0, 1.0);
        e->clips[e->nclips++] = c;
    }
    for (int i = 0; i < desc->params.n; i++) {
        struct OfxParamStruct *d = desc->params.params[i];
        struct OfxParamStruct *p = param_new(d->type, d->name);
        copy_props(&p->props, &d->props);
        PropSet *dp = &d->props;
        if (strcmp(d->type, kOfxParamTypeString) == 0) {
            const char *def = pstr(dp, kOfxParamPropDefault, 0);
            free(p->sval);
            p->sval = xstrdup(def ? def : "");
        } else if (strcmp(d->type, kOfxParamTypeDouble) == 0 ||
                   strcmp(d->type, kOfxParamTypeDouble2D) == 0) {
            for (int j = 0; j < 2; j++) propGetDouble(dp, kOfxParamPropDefault, j, &p->dval[j]);
        } else {
            p->ival[0] = pint(dp, kOfxParamPropDefault, 0, 0);
        }
        e->params.params[e->params.n++] = p;
    }
    return e;
}

/* ---------------------------------------------------------------------------------------
 * Frames and images
 * ------------------------------------------------------------------------------------- */

/* A clip's frames as 8-bit RGB, top row first, plus a per-pixel alpha pattern. */
struct Frames {
    int width, height, count;
    unsigned char *rgb[3];
};

static int read_pnm(const char *path, int *w, int *h, unsigned char **rgb) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char magic[3] = {0};
    int maxval = 0;
    int ok = fscanf(f, "%2s %d %d %d", magic, w, h, &maxval) == 4 && maxval == 255 &&
             (strcmp(magic, "P6") == 0 || strcmp(magic, "P5") == 0) && *w > 0 && *h > 0;
    if (ok) fgetc(f);
    int channels = ok && strcmp(magic, "P5") == 0 ? 1 : 3;
    size_t n = ok ? (size_t)*w * *h : 0;
    unsigned char *raw = ok ? xcalloc(n, (size_t)channels) : NULL;
    ok = ok && fread(raw, (size_t)channels, n, f) == n;
    fclose(f);
    if (!ok) {
        free(raw);
        return 0;
    }
    *rgb = xcalloc(n, 3);
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) (*rgb)[i * 3 + c] = raw[i * channels + (channels == 3 ? c : 0)];
    free(raw);
    return 1;
}

static Frames *frames_load(const char *dir, const char *const *names, int count) {
    Frames *f = xcalloc(1, sizeof *f);
    for (int i = 0; i < count; i++) {
        char path[1024];
        int w, h;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (!read_pnm(path, &w, &h, &f->rgb[i])) {
            fprintf(stderr, "test_host: cannot read %s\n", path);
            exit(2);
        }
        if (i && (w != f->width || h != f->height)) exit(2);
        f->width = w, f->height = h, f->count = i + 1;
    }
    return f;
}

static void frames_free(Frames *f) {
    for (int i = 0; f && i < f->count; i++) free(f->rgb[i]);
    free(f);
}

static int depth_bytes(const char *depth) {
    return strcmp(depth, kOfxBitDepthByte) == 0 ? 1 : strcmp(depth, kOfxBitDepthShort) == 0 ? 2 : 4;
}
static int comps_count(const char *comps) {
    return strcmp(comps, kOfxImageComponentRGBA) == 0 ? 4
           : strcmp(comps, kOfxImageComponentRGB) == 0 ? 3 : 1;
}

/* The alpha pattern of the source clip at pixel (x, y), in [0, 1], exactly representable in
 * every depth after the host's conversion (so "untouched" can be checked bit for bit). */
static double alpha_at(int x, int y) { return (double)((x * 37 + y * 11) % 256) / 255.0; }

static void put_sample(unsigned char *p, int bytes, double v) {
    if (bytes == 1) *p = (unsigned char)lround(v * 255.0);
    else if (bytes == 2) {
        uint16_t s = (uint16_t)lround(v * 65535.0);
        memcpy(p, &s, 2);
    } else {
        float s = (float)v;
        memcpy(p, &s, 4);
    }
}

static double get_sample(const unsigned char *p, int bytes) {
    if (bytes == 1) return *p / 255.0;
    if (bytes == 2) {
        uint16_t s;
        memcpy(&s, p, 2);
        return s / 65535.0;
    }
    float s;
    memcpy(&s, p, 4);
    return s;
}

/* A host image: a property set whose kOfxImagePropData points into `alloc`. */
typedef struct HostImage {
    PropSet props; /* first: the handle is the property set */
    unsigned char *alloc;
    size_t alloc_len;
} HostImage;

static PropSet *image_new(const char *depth, const char *comps, OfxRectI b, double scale,
                          int fill_byte) {
    HostImage *img = xcalloc(1, sizeof *img);
    props_init(&img->props);
    int w = b.x2 - b.x1, h = b.y2 - b.y1;
    int px = depth_bytes(depth) * comps_count(comps);
    int row = w * px + 12 * depth_bytes(depth); /* padded rows */
    img->alloc_len = (size_t)row * (size_t)h;
    img->alloc = xcalloc(img->alloc_len, 1);
    memset(img->alloc, fill_byte, img->alloc_len);
    unsigned char *data = img->alloc;
    int row_bytes = row;
    if (g_profile->negative_rows) {
        data = img->alloc + (size_t)row * (size_t)(h - 1);
        row_bytes = -row;
    }
    PropSet *p = &img->props;
    propSetString(p, kOfxPropType, 0, kOfxTypeImage);
    propSetPointer(p, kOfxImagePropData, 0, data);
    int bounds[4] = {b.x1, b.y1, b.x2, b.y2};
    propSetIntN(p, kOfxImagePropBounds, 4, bounds);
    propSetIntN(p, kOfxImagePropRegionOfDefinition, 4, bounds);
    propSetInt(p, kOfxImagePropRowBytes, 0, row_bytes);
    propSetString(p, kOfxImageEffectPropPixelDepth, 0, depth);
    propSetString(p, kOfxImageEffectPropComponents, 0, comps);
    propSetString(p, kOfxImageEffectPropPreMultiplication, 0, kOfxImageUnPreMultiplied);
    propSetDouble(p, kOfxImageEffectPropRenderScale, 0, scale);
    propSetDouble(p, kOfxImageEffectPropRenderScale, 1, scale);
    propSetDouble(p, kOfxImagePropPixelAspectRatio, 0, 1.0);
    propSetString(p, kOfxImagePropField, 0, kOfxImageFieldNone);
    propSetString(p, kOfxImagePropUniqueIdentifier, 0, "test");
    return p;
}

static void image_free(PropSet *p) {
    HostImage *img = (HostImage *)p;
    free(img->alloc);
    props_free(&img->props);
    free(img);
}

static unsigned char *image_pixel(PropSet *p, int x, int y) {
    void *data = NULL;
    propGetPointer(p, kOfxImagePropData, 0, &data);
    int b[4];
    propGetIntN(p, kOfxImagePropBounds, 4, b);
    int rb = pint(p, kOfxImagePropRowBytes, 0, 0);
    int px = depth_bytes(pstr(p, kOfxImageEffectPropPixelDepth, 0)) *
             comps_count(pstr(p, kOfxImageEffectPropComponents, 0));
    return (unsigned char *)data + (ptrdiff_t)(y - b[1]) * rb + (ptrdiff_t)(x - b[0]) * px;
}

/* The source image of frame `t` at render scale `scale` (box-filtered for proxies). */
static PropSet *source_image(const Frames *f, int t, const char *depth, const char *comps,
                             double scale) {
    int step = scale < 0.75 ? 2 : 1;
    OfxRectI b = {0, 0, f->width / step, f->height / step};
    PropSet *img = image_new(depth, comps, b, scale, 0);
    int bytes = depth_bytes(depth), nc = comps_count(comps);
    const unsigned char *rgb = f->rgb[t % f->count];
    for (int y = 0; y < b.y2; y++)
        for (int x = 0; x < b.x2; x++) {
            double v[3] = {0, 0, 0};
            for (int dy = 0; dy < step; dy++)
                for (int dx = 0; dx < step; dx++) {
                    int row = f->height - 1 - (y * step + dy); /* OFX y is up */
                    for (int c = 0; c < 3; c++)
                        v[c] += rgb[((size_t)row * f->width + x * step + dx) * 3 + c];
                }
            unsigned char *p = image_pixel(img, x, y);
            for (int c = 0; c < nc && nc > 1; c++)
                put_sample(p + (size_t)c * bytes, bytes,
                           c == 3 ? alpha_at(x, y) : v[c] / (255.0 * step * step));
            if (nc == 1) put_sample(p, bytes, alpha_at(x, y));
        }
    return img;
}

/* 8-bit RGB (top row first) of an image's colour channels, for PSNR. */
static unsigned char *image_rgb8(PropSet *img, int *w, int *h) {
    int b[4];
    propGetIntN(img, kOfxImagePropBounds, 4, b);
    *w = b[2] - b[0], *h = b[3] - b[1];
    int bytes = depth_bytes(pstr(img, kOfxImageEffectPropPixelDepth, 0));
    unsigned char *out = xcalloc((size_t)*w * *h, 3);
    for (int y = 0; y < *h; y++)
        for (int x = 0; x < *w; x++)
            for (int c = 0; c < 3; c++) {
                double v = get_sample(image_pixel(img, b[0] + x, b[1] + y) + (size_t)c * bytes, bytes);
                v = v < 0 ? 0 : v > 1 ? 1 : v;
                out[((size_t)(*h - 1 - y) * *w + x) * 3 + c] = (unsigned char)lround(v * 255.0);
            }
    return out;
}

static double psnr(const unsigned char *a, const unsigned char *b, size_t n) {
    double se = 0;
    for (size_t i = 0; i < n; i++) se += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    double mse = se / (double)n;
    return 10.0 * log10(255.0 * 255.0 / (mse > 1e-12 ? mse : 1e-12));
}

/* ---------------------------------------------------------------------------------------
 * Image effect suite
 * ------------------------------------------------------------------------------------- */

static int valid_effect(OfxImageEffectHandle e) { return e && e->magic == MAGIC_EFFECT; }
static int valid_clip(OfxImageClipHandle c) { return c && c->magic == MAGIC_CLIP; }

static OfxStatus getPropertySet(OfxImageEffectHandle e, OfxPropertySetHandle *out) {
    if (!valid_effect(e) || !out) return kOfxStatErrBadHandle;
    *out = &e->props;
    return kOfxStatOK;
}
static OfxStatus getParamSet(OfxImageEffectHandle e, OfxParamSetHandle *out) {
    if (!valid_effect(e) || !out) return kOfxStatErrBadHandle;
    *out = &e->params;
    return kOfxStatOK;
}
static OfxStatus clipDefine(OfxImageEffectHandle e, const char *name, OfxPropertySetHandle *out) {
    if (!valid_effect(e) || e->is_instance || !name) return kOfxStatErrBadHandle;
    if (effect_clip(e, name)) return kOfxStatErrExists;
    if (e->nclips == MAX_CLIPS) return kOfxStatErrMemory;
    struct OfxImageClipStruct *c = clip_new(e, name);
    e->clips[e->nclips++] = c;
    if (out) *out = &c->props;
    return kOfxStatOK;
}
static OfxStatus clipGetHandle(OfxImageEffectHandle e, const char *name, OfxImageClipHandle *out,
                               OfxPropertySetHandle *props) {
    if (!valid_effect(e) || !name || !out) return kOfxStatErrBadHandle;
    struct OfxImageClipStruct *c = effect_clip(e, name);
    if (!c) return kOfxStatErrUnknown;
    *out = c;
    if (props) *props = &c->props;
    return kOfxStatOK;
}
static OfxStatus clipGetPropertySet(OfxImageClipHandle c, OfxPropertySetHandle *out) {
    if (!valid_clip(c) || !out) return kOfxStatErrBadHandle;
    *out = &c->props;
    return kOfxStatOK;
}

static OfxStatus clipGetImage(OfxImageClipHandle c, OfxTime time, const OfxRectD *region,
                              OfxPropertySetHandle *out) {
    (void)region;
    if (!valid_clip(c) || !out) return kOfxStatErrBadHandle;
    struct OfxImageEffectStruct *e = c->effect;
    if (!e->is_instance || !e->frames) return kOfxStatFailed;
    PropSet *img;
    if (strcmp(c->name, kOfxImageEffectOutputClipName) == 0) {
        /* Filled with a sentinel, so the checks see what the plug-in did not write. */
        img = image_new(e->depth, pstr(&c->props, kOfxImageEffectPropComponents, 0),
                        e->out_bounds, e->scale, 0x5a);
        if (e->out_image) image_free(e->out_image);
        e->out_image = img;
    } else {
        img = source_image(e->frames, (int)time, e->depth, e->components, e->scale);
    }
    e->images_out++;
    *out = img;
    return kOfxStatOK;
}

static struct OfxImageEffectStruct *g_rendering; /* the instance inside render, for release */
static OfxStatus clipReleaseImage(OfxPropertySetHandle img) {
    if (!valid_props(img)) return kOfxStatErrBadHandle;
    struct OfxImageEffectStruct *e = g_rendering;
    if (!e) return kOfxStatErrBadHandle;
    e->images_out--;
    if (img != e->out_image) image_free(img); /* the output is kept for the checks */
    return kOfxStatOK;
}

static OfxStatus clipGetRegionOfDefinition(OfxImageClipHandle c, OfxTime time, OfxRectD *out) {
    (void)time;
    if (!valid_clip(c) || !out) return kOfxStatErrBadHandle;
    struct OfxImageEffectStruct *e = c->effect;
    if (!e->frames) return kOfxStatFailed;
    out->x1 = 0, out->y1 = 0, out->x2 = e->frames->width, out->y2 = e->frames->height;
    if (strcmp(c->name, kOfxImageEffectOutputClipName) == 0) {
        out->x2 = (e->out_bounds.x2 - e->out_bounds.x1) / e->scale;
        out->y2 = (e->out_bounds.y2 - e->out_bounds.y1) / e->scale;
    }
    return kOfxStatOK;
}

static int effectAbort(OfxImageEffectHandle e) {
    if (!valid_effect(e)) return 0;
    e->abort_calls++;
    return e->abort_after > 0 && e->abort_calls >= e->abort_after;
}

struct OfxImageMemoryStruct {
    uint32_t magic;
    void *data;
    int locks;
};
static int g_memory_live;
static OfxStatus imageMemoryAlloc(OfxImageEffectHandle e, size_t n, OfxImageMemoryHandle *out) {
    (void)e;
    if (!out) return kOfxStatErrBadHandle;
    struct OfxImageMemoryStruct *m = xcalloc(1, sizeof *m);
    m->magic = MAGIC_MEMORY;
    m->data = xcalloc(n, 1);
    g_memory_live++;
    *out = m;
    return kOfxStatOK;
}
static OfxStatus imageMemoryFree(OfxImageMemoryHandle m) {
    if (!m || m->magic != MAGIC_MEMORY) return kOfxStatErrBadHandle;
    free(m->data);
    m->magic = 0;
    free(m);
    g_memory_live--;
    return kOfxStatOK;
}
static OfxStatus imageMemoryLock(OfxImageMemoryHandle m, void **out) {
    if (!m || m->magic != MAGIC_MEMORY || !out) return kOfxStatErrBadHandle;
    m->locks++;
    *out = m->data;
    return kOfxStatOK;
}
static OfxStatus imageMemoryUnlock(OfxImageMemoryHandle m) {
    if (!m || m->magic != MAGIC_MEMORY) return kOfxStatErrBadHandle;
    m->locks--;
    return kOfxStatOK;
}

static const OfxImageEffectSuiteV1 EFFECT_SUITE = {
    getPropertySet,   getParamSet,     clipDefine,        clipGetHandle,
    clipGetPropertySet, clipGetImage,  clipReleaseImage,  clipGetRegionOfDefinition,
    effectAbort,      imageMemoryAlloc, imageMemoryFree,  imageMemoryLock,
    imageMemoryUnlock,
};

/* ---------------------------------------------------------------------------------------
 * Parameter suite (four C-variadic functions)
 * ------------------------------------------------------------------------------------- */

static int valid_param(OfxParamHandle p) { return p && p->magic == MAGIC_PARAM; }

static OfxStatus paramDefine(OfxParamSetHandle set, const char *type, const char *name,
                             OfxPropertySetHandle *props) {
    if (!set || set->magic != MAGIC_PARAMSET || !type || !name) return kOfxStatErrBadHandle;
    for (int i = 0; i < set->n; i++)
        if (strcmp(set->params[i]->name, name) == 0) return kOfxStatErrExists;
    if (set->n == MAX_PARAMS) return kOfxStatErrMemory;
    struct OfxParamStruct *p = param_new(type, name);
    set->params[set->n++] = p;
    if (props) *props = &p->props;
    return kOfxStatOK;
}
static OfxStatus paramGetHandle(OfxParamSetHandle set, const char *name, OfxParamHandle *out,
                                OfxPropertySetHandle *props) {
    if (!set || set->magic != MAGIC_PARAMSET || !name || !out) return kOfxStatErrBadHandle;
    for (int i = 0; i < set->n; i++)
        if (strcmp(set->params[i]->name, name) == 0) {
            *out = set->params[i];
            if (props) *props = &set->params[i]->props;
            return kOfxStatOK;
        }
    return kOfxStatErrUnknown;
}
static OfxStatus paramSetGetPropertySet(OfxParamSetHandle set, OfxPropertySetHandle *out) {
    if (!set || set->magic != MAGIC_PARAMSET || !out) return kOfxStatErrBadHandle;
    *out = &set->props;
    return kOfxStatOK;
}
static OfxStatus paramGetPropertySet(OfxParamHandle p, OfxPropertySetHandle *out) {
    if (!valid_param(p) || !out) return kOfxStatErrBadHandle;
    *out = &p->props;
    return kOfxStatOK;
}

static int is_type(OfxParamHandle p, const char *t) { return strcmp(p->type, t) == 0; }

static OfxStatus get_value(OfxParamHandle p, va_list ap) {
    if (!valid_param(p)) return kOfxStatErrBadHandle;
    if (is_type(p, kOfxParamTypeInteger) || is_type(p, kOfxParamTypeBoolean) ||
        is_type(p, kOfxParamTypeChoice)) {
        *va_arg(ap, int *) = p->ival[0];
    } else if (is_type(p, kOfxParamTypeDouble)) {
        *va_arg(ap, double *) = p->dval[0];
    } else if (is_type(p, kOfxParamTypeDouble2D)) {
        *va_arg(ap, double *) = p->dval[0];
        *va_arg(ap, double *) = p->dval[1];
    } else if (is_type(p, kOfxParamTypeString)) {
        *va_arg(ap, char **) = p->sval;
    } else {
        return kOfxStatErrUnsupported;
    }
    return kOfxStatOK;
}

static OfxStatus set_value(OfxParamHandle p, va_list ap) {
    if (!valid_param(p)) return kOfxStatErrBadHandle;
    if (is_type(p, kOfxParamTypeInteger) || is_type(p, kOfxParamTypeBoolean) ||
        is_type(p, kOfxParamTypeChoice)) {
        p->ival[0] = va_arg(ap, int);
    } else if (is_type(p, kOfxParamTypeDouble)) {
        p->dval[0] = va_arg(ap, double);
    } else if (is_type(p, kOfxParamTypeDouble2D)) {
        p->dval[0] = va_arg(ap, double);
        p->dval[1] = va_arg(ap, double);
    } else if (is_type(p, kOfxParamTypeString)) {
        const char *s = va_arg(ap, const char *);
        free(p->sval);
        p->sval = xstrdup(s ? s : "");
    } else {
        return kOfxStatErrUnsupported;
    }
    return kOfxStatOK;
}

static OfxStatus paramGetValue(OfxParamHandle p, ...) {
    va_list ap;
    va_start(ap, p);
    OfxStatus st = get_value(p, ap);
    va_end(ap);
    return st;
}
static OfxStatus paramGetValueAtTime(OfxParamHandle p, OfxTime time, ...) {
    va_list ap;
    va_start(ap, time);
    OfxStatus st = get_value(p, ap); /* no animation in this host */
    va_end(ap);
    return st;
}
static OfxStatus paramGetDerivative(OfxParamHandle p, OfxTime t, ...) {
    (void)p, (void)t;
    return kOfxStatErrUnsupported;
}
static OfxStatus paramGetIntegral(OfxParamHandle p, OfxTime t1, OfxTime t2, ...) {
    (void)p, (void)t1, (void)t2;
    return kOfxStatErrUnsupported;
}
static OfxStatus paramSetValue(OfxParamHandle p, ...) {
    va_list ap;
    va_start(ap, p);
    OfxStatus st = set_value(p, ap);
    va_end(ap);
    return st;
}
static OfxStatus paramSetValueAtTime(OfxParamHandle p, OfxTime time, ...) {
    va_list ap;
    va_start(ap, time);
    OfxStatus st = set_value(p, ap);
    va_end(ap);
    return st;
}
static OfxStatus paramGetNumKeys(OfxParamHandle p, unsigned int *n) {
    if (!valid_param(p) || !n) return kOfxStatErrBadHandle;
    *n = 0;
    return kOfxStatOK;
}
static OfxStatus paramGetKeyTime(OfxParamHandle p, unsigned int i, OfxTime *t) {
    (void)p, (void)i, (void)t;
    return kOfxStatErrBadIndex;
}
static OfxStatus paramGetKeyIndex(OfxParamHandle p, OfxTime t, int dir, int *i) {
    (void)p, (void)t, (void)dir, (void)i;
    return kOfxStatFailed;
}
static OfxStatus paramDeleteKey(OfxParamHandle p, OfxTime t) {
    (void)p, (void)t;
    return kOfxStatErrBadIndex;
}
static OfxStatus paramDeleteAllKeys(OfxParamHandle p) {
    return valid_param(p) ? kOfxStatOK : kOfxStatErrBadHandle;
}
static OfxStatus paramCopy(OfxParamHandle to, OfxParamHandle from, OfxTime off,
                           const OfxRangeD *range) {
    (void)to, (void)from, (void)off, (void)range;
    return kOfxStatOK; /* a no-op, as in Resolve */
}
static OfxStatus paramEditBegin(OfxParamSetHandle set, const char *name) {
    (void)set, (void)name;
    return kOfxStatOK;
}
static OfxStatus paramEditEnd(OfxParamSetHandle set) {
    (void)set;
    return kOfxStatOK;
}

static const OfxParameterSuiteV1 PARAMETER_SUITE = {
    paramDefine,        paramGetHandle,     paramSetGetPropertySet, paramGetPropertySet,
    paramGetValue,      paramGetValueAtTime, paramGetDerivative,    paramGetIntegral,
    paramSetValue,      paramSetValueAtTime, paramGetNumKeys,       paramGetKeyTime,
    paramGetKeyIndex,   paramDeleteKey,     paramDeleteAllKeys,     paramCopy,
    paramEditBegin,     paramEditEnd,
};

/* ---------------------------------------------------------------------------------------
 * Memory, message, progress and multithread suites
 * ------------------------------------------------------------------------------------- */

static OfxStatus memoryAlloc(void *handle, size_t n, void **out) {
    (void)handle;
    if (!out) return kOfxStatErrBadHandle;
    *out = malloc(n ? n : 1);
    return *out ? kOfxStatOK : kOfxStatErrMemory;
}
static OfxStatus memoryFree(void *p) {
    free(p);
    return kOfxStatOK;
}
static const OfxMemorySuiteV1 MEMORY_SUITE = {memoryAlloc, memoryFree};

static char g_last_message[2048];
static int g_messages;

static void record_message(const char *kind, const char *type, const char *fmt, va_list ap) {
    vsnprintf(g_last_message, sizeof g_last_message, fmt, ap);
    g_messages++;
    printf("      [%s %s] %s\n", kind, type ? type : "?", g_last_message);
}

/* Messages whose handle was not an instance (or NULL). The spec allows a descriptor, but
 * hosts built on HostSupport (Natron) cast every handle to an instance and crash. */
static int g_descriptor_messages;

static OfxStatus message(void *handle, const char *type, const char *id, const char *fmt, ...) {
    (void)id;
    if (!fmt) return kOfxStatFailed;
    struct OfxImageEffectStruct *e = handle;
    if (e && (!valid_effect(e) || !e->is_instance)) g_descriptor_messages++;
    va_list ap;
    va_start(ap, fmt);
    record_message("message", type, fmt, ap);
    va_end(ap);
    return kOfxStatOK;
}
static OfxStatus setPersistentMessage(void *handle, const char *type, const char *id,
                                      const char *fmt, ...) {
    (void)id;
    struct OfxImageEffectStruct *e = handle;
    if (!e || !valid_effect(e) || !e->is_instance || !fmt) return kOfxStatErrBadHandle;
    va_list ap;
    va_start(ap, fmt);
    record_message("persistent", type, fmt, ap);
    va_end(ap);
    return kOfxStatOK;
}
static int g_persistent_clears;
static OfxStatus clearPersistentMessage(void *handle) {
    struct OfxImageEffectStruct *e = handle;
    if (!e || !valid_effect(e) || !e->is_instance) return kOfxStatErrBadHandle;
    g_persistent_clears++;
    return kOfxStatOK;
}
static const OfxMessageSuiteV1 MESSAGE_SUITE_V1 = {message};
static const OfxMessageSuiteV2 MESSAGE_SUITE_V2 = {message, setPersistentMessage,
                                                   clearPersistentMessage};

static OfxStatus progressStart(void *handle, const char *label) {
    struct OfxImageEffectStruct *e = handle;
    if (!valid_effect(e) || !label) return kOfxStatErrBadHandle;
    if (e->progress_open) check(0, "progressStart while a progress bar is open");
    e->progress_open = 1;
    e->last_progress = 0;
    return kOfxStatOK;
}
static OfxStatus progressUpdate(void *handle, double v) {
    struct OfxImageEffectStruct *e = handle;
    if (!valid_effect(e) || !e->progress_open) return kOfxStatErrBadHandle;
    if (v < e->last_progress - 1e-9 || v > 1.0 + 1e-9) e->progress_backwards = 1;
    e->last_progress = v;
    e->progress_calls++;
    return e->abort_after > 0 && e->progress_calls >= e->abort_after ? kOfxStatReplyNo
                                                                     : kOfxStatOK;
}
static OfxStatus progressEnd(void *handle) {
    struct OfxImageEffectStruct *e = handle;
    if (!valid_effect(e) || !e->progress_open) return kOfxStatErrBadHandle;
    e->progress_open = 0;
    return kOfxStatOK;
}
static const OfxProgressSuiteV1 PROGRESS_SUITE = {progressStart, progressUpdate, progressEnd};

static OfxStatus multiThread(OfxThreadFunctionV1 f, unsigned int n, void *arg) {
    for (unsigned int i = 0; i < n; i++) f(i, n, arg);
    return kOfxStatOK;
}
static OfxStatus multiThreadNumCPUs(unsigned int *n) {
    *n = 1;
    return kOfxStatOK;
}
static OfxStatus multiThreadIndex(unsigned int *i) {
    *i = 0;
    return kOfxStatOK;
}
static int multiThreadIsSpawnedThread(void) { return 0; }
struct OfxMutex {
    pthread_mutex_t m;
};
static OfxStatus mutexCreate(OfxMutexHandle *out, int count) {
    (void)count;
    struct OfxMutex *m = xcalloc(1, sizeof *m);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&m->m, &a);
    pthread_mutexattr_destroy(&a);
    *out = m;
    return kOfxStatOK;
}
static OfxStatus mutexDestroy(const OfxMutexHandle m) {
    pthread_mutex_destroy(&m->m);
    free(m);
    return kOfxStatOK;
}
static OfxStatus mutexLock(const OfxMutexHandle m) {
    return pthread_mutex_lock(&m->m) ? kOfxStatFailed : kOfxStatOK;
}
static OfxStatus mutexUnLock(const OfxMutexHandle m) {
    return pthread_mutex_unlock(&m->m) ? kOfxStatFailed : kOfxStatOK;
}
static OfxStatus mutexTryLock(const OfxMutexHandle m) {
    return pthread_mutex_trylock(&m->m) ? kOfxStatFailed : kOfxStatOK;
}
static const OfxMultiThreadSuiteV1 MULTITHREAD_SUITE = {
    multiThread, multiThreadNumCPUs, multiThreadIndex, multiThreadIsSpawnedThread,
    mutexCreate, mutexDestroy,       mutexLock,        mutexUnLock,
    mutexTryLock,
};

/* ---------------------------------------------------------------------------------------
 * The host
 * ------------------------------------------------------------------------------------- */

static PropSet g_host_props;

static const void *fetchSuite(OfxPropertySetHandle host, const char *name, int version) {
    if (host != &g_host_props || !name) return NULL;
    if (strcmp(name, kOfxPropertySuite) == 0 && version == 1) return &PROPERTY_SUITE;
    if (strcmp(name, kOfxImageEffectSuite) == 0 && version == 1) return &EFFECT_SUITE;
    if (strcmp(name, kOfxParameterSuite) == 0 && version == 1) return &PARAMETER_SUITE;
    if (strcmp(name, kOfxMemorySuite) == 0 && version == 1) return &MEMORY_SUITE;
    if (strcmp(name, kOfxMultiThreadSuite) == 0 && version == 1) return &MULTITHREAD_SUITE;
    if (strcmp(name, kOfxMessageSuite) == 0 && version == 1) return &MESSAGE_SUITE_V1;
    if (strcmp(name, kOfxMessageSuite) == 0 && version == 2 && g_profile->message_v2)
        return &MESSAGE_SUITE_V2;
    if (strcmp(name, kOfxProgressSuite) == 0 && version == 1 && g_profile->progress)
        return &PROGRESS_SUITE;
    return NULL;
}

static OfxHost g_host = {&g_host_props, fetchSuite};

static void host_props_init(const Profile *pr) {
    PropSet *h = &g_host_props;
    props_init(h);
    propSetString(h, kOfxPropType, 0, kOfxTypeImageEffectHost);
    propSetString(h, kOfxPropName, 0, pr->host_name);
    propSetString(h, kOfxPropLabel, 0, pr->name);
    propSetInt(h, kOfxPropAPIVersion, 0, pr->api_major);
    propSetInt(h, kOfxPropAPIVersion, 1, pr->api_minor);
    propSetInt(h, kOfxImageEffectHostPropIsBackground, 0, 0);
    propSetInt(h, kOfxImageEffectPropSupportsOverlays, 0, 1);
    propSetInt(h, kOfxImageEffectPropSupportsMultiResolution, 0, pr->multires);
    propSetInt(h, kOfxImageEffectPropSupportsTiles, 0, pr->tiles);
    propSetInt(h, kOfxImageEffectPropTemporalClipAccess, 0, 1);
    propSetStringN(h, kOfxImageEffectPropSupportedComponents, pr->n_components, pr->components);
    propSetString(h, kOfxImageEffectPropSupportedContexts, 0, kOfxImageEffectContextFilter);
    propSetString(h, kOfxImageEffectPropSupportedContexts, 1, kOfxImageEffectContextGeneral);
    propSetStringN(h, kOfxImageEffectPropSupportedPixelDepths, pr->n_depths, pr->depths);
    propSetInt(h, kOfxImageEffectPropSupportsMultipleClipDepths, 0, 0);
    propSetInt(h, kOfxImageEffectPropSupportsMultipleClipPARs, 0, 0);
    propSetInt(h, kOfxImageEffectPropSetableFrameRate, 0, 0);
    propSetInt(h, kOfxImageEffectPropSetableFielding, 0, 0);
    propSetInt(h, kOfxParamHostPropSupportsStringAnimation, 0, 0);
    propSetInt(h, kOfxParamHostPropSupportsChoiceAnimation, 0, 0);
    propSetInt(h, kOfxParamHostPropSupportsBooleanAnimation, 0, 0);
    propSetInt(h, kOfxParamHostPropMaxParameters, 0, -1);
    propSetInt(h, kOfxImageEffectInstancePropSequentialRender, 0, 0);
}

/* ---------------------------------------------------------------------------------------
 * Driving one plug-in
 * ------------------------------------------------------------------------------------- */

typedef struct Loaded {
    OfxPlugin *plugin;
    const char *id;
    int described;   /* describe succeeded */
    struct OfxImageEffectStruct *desc;
    struct OfxImageEffectStruct *ctx_desc[2]; /* Filter, General */
} Loaded;

static const char *CONTEXTS[2] = {kOfxImageEffectContextFilter, kOfxImageEffectContextGeneral};

static OfxStatus call(OfxPlugin *p, const char *action, const void *handle, PropSet *in,
                      PropSet *out) {
    return p->mainEntry(action, handle, in, out);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void describe_plugin(Loaded *l) {
    OfxPlugin *p = l->plugin;
    int is_sr = strstr(l->id, ".sr4") != NULL;
    g_messages = 0;
    l->desc = effect_new(NULL, 0);
    OfxStatus st = call(p, kOfxActionDescribe, l->desc, NULL, NULL);
    if (is_sr && !g_profile->multires) {
        check(st == kOfxStatErrMissingHostFeature && g_messages > 0 &&
                  strstr(g_last_message, "multi-resolution"),
              "%s: describe refused without multi-resolution (status %d, message \"%s\")", l->id,
              st, g_messages ? g_last_message : "");
        return;
    }
    check(st == kOfxStatOK, "%s: describe (status %d)", l->id, st);
    if (st != kOfxStatOK) return;
    PropSet *d = &l->desc->props;
    check(pint(d, kOfxImageEffectPropSupportsTiles, 0, 1) == 0 &&
              pint(d, kOfxImageEffectPropSupportsMultiResolution, 0, 0) == 1 &&
              phas_string(d, kOfxImageEffectPropSupportedContexts, kOfxImageEffectContextFilter) &&
              phas_string(d, kOfxImageEffectPropSupportedContexts, kOfxImageEffectContextGeneral) &&
              phas_string(d, kOfxImageEffectPropSupportedPixelDepths, kOfxBitDepthByte) &&
              phas_string(d, kOfxImageEffectPropSupportedPixelDepths, kOfxBitDepthShort) &&
              phas_string(d, kOfxImageEffectPropSupportedPixelDepths, kOfxBitDepthFloat) &&
              pstr(d, kOfxImageEffectPluginRenderThreadSafety, 0) &&
              strcmp(pstr(d, kOfxImageEffectPluginRenderThreadSafety, 0),
                     kOfxImageEffectRenderInstanceSafe) == 0 &&
              pstr(d, kOfxPropLabel, 0) && strncmp(pstr(d, kOfxPropLabel, 0), "DAVI ", 5) == 0,
          "%s: descriptor \"%s\": no tiles, multi-resolution, Filter+General, 8/16/float, "
          "instance-safe",
          l->id, pstr(d, kOfxPropLabel, 0) ? pstr(d, kOfxPropLabel, 0) : "?");
    l->described = 1;

    for (int c = 0; c < 2; c++) {
        if (!phas_string(&g_host_props, kOfxImageEffectPropSupportedContexts, CONTEXTS[c]))
            continue;
        struct OfxImageEffectStruct *cd = effect_new(CONTEXTS[c], 0);
        copy_props(&cd->props, d);
        propSetString(&cd->props, kOfxImageEffectPropContext, 0, CONTEXTS[c]);
        PropSet in;
        props_init(&in);
        propSetString(&in, kOfxImageEffectPropContext, 0, CONTEXTS[c]);
        st = call(p, kOfxImageEffectActionDescribeInContext, cd, &in, NULL);
        props_free(&in);
        struct OfxImageClipStruct *src = effect_clip(cd, kOfxImageEffectSimpleSourceClipName);
        struct OfxImageClipStruct *out = effect_clip(cd, kOfxImageEffectOutputClipName);
        /* Every Double parameter has an explicit range (Resolve's default is -1..1). */
        int ranged = 1, nparams = cd->params.n;
        for (int i = 0; i < cd->params.n; i++) {
            struct OfxParamStruct *pp = cd->params.params[i];
            if (is_type(pp, kOfxParamTypeDouble) || is_type(pp, kOfxParamTypeDouble2D))
                ranged = ranged && pdim(&pp->props, kOfxParamPropMin) > 0 &&
                         pdim(&pp->props, kOfxParamPropMax) > 0 &&
                         pdim(&pp->props, kOfxParamPropDisplayMax) > 0;
        }
        const char *names[] = {"modelFile", "device", "precision", "seed", "useModelVariation",
                               "variation", "tileSize", "overlap"};
        int all = 1;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            all = all && effect_param(cd, names[i]) != NULL;
        if (strstr(l->id, ".inpaint"))
            all = all && effect_param(cd, "holeCentre") && effect_param(cd, "holeSize");
        check(st == kOfxStatOK && src && out && all && ranged &&
                  phas_string(&src->props, kOfxImageEffectPropSupportedComponents,
                              kOfxImageComponentRGBA) &&
                  phas_string(&src->props, kOfxImageEffectPropSupportedComponents,
                              kOfxImageComponentAlpha),
              "%s: describe in %s context (status %d): Source+Output clips, %d parameters, "
              "ranged doubles",
              l->id, CONTEXTS[c] + strlen("OfxImageEffectContext"), st, nparams);
        l->ctx_desc[c] = cd;
    }
}

static struct OfxImageEffectStruct *create(Loaded *l, int context, const Frames *frames) {
    if (!l->ctx_desc[context]) return NULL;
    struct OfxImageEffectStruct *e = instance_from(l->ctx_desc[context], CONTEXTS[context]);
    e->frames = frames;
    OfxStatus st = call(l->plugin, kOfxActionCreateInstance, e, NULL, NULL);
    check(st == kOfxStatOK, "%s: create instance in %s context (status %d)", l->id,
          CONTEXTS[context] + strlen("OfxImageEffectContext"), st);
    if (st != kOfxStatOK) {
        effect_free(e);
        return NULL;
    }
    return e;
}

static void destroy(Loaded *l, struct OfxImageEffectStruct *e) {
    if (!e) return;
    OfxStatus st = call(l->plugin, kOfxActionDestroyInstance, e, NULL, NULL);
    check(st == kOfxStatOK, "%s: destroy instance (status %d)", l->id, st);
    if (e->out_image) image_free(e->out_image);
    effect_free(e);
}

static void set_int(struct OfxImageEffectStruct *e, const char *name, int v) {
    paramSetValue(effect_param(e, name), v);
}
static void set_string(struct OfxImageEffectStruct *e, const char *name, const char *v) {
    paramSetValue(effect_param(e, name), v);
}

/* Tell the instance the source format, run clip preferences and region of definition, and
 * size the output image. Returns 0 if a check failed. */
static int prepare(Loaded *l, struct OfxImageEffectStruct *e, const char *depth,
                   const char *comps, double scale, int factor) {
    e->depth = depth, e->components = comps, e->scale = scale;
    struct OfxImageClipStruct *src = effect_clip(e, kOfxImageEffectSimpleSourceClipName);
    struct OfxImageClipStruct *out = effect_clip(e, kOfxImageEffectOutputClipName);
    propSetString(&src->props, kOfxImageEffectPropComponents, 0, comps);
    propSetString(&src->props, kOfxImageClipPropUnmappedComponents, 0, comps);
    propSetString(&src->props, kOfxImageEffectPropPixelDepth, 0, depth);
    propSetString(&out->props, kOfxImageEffectPropPixelDepth, 0, depth);

    PropSet out_args;
    props_init(&out_args);
    propSetString(&out_args, "OfxImageClipPropComponents_Output", 0, kOfxImageComponentRGBA);
    OfxStatus st = call(l->plugin, kOfxImageEffectActionGetClipPreferences, e, NULL, &out_args);
    char got[64] = "";
    const char *asked = pstr(&out_args, "OfxImageClipPropComponents_Output", 0);
    snprintf(got, sizeof got, "%s", asked ? asked : "");
    int ok = (st == kOfxStatOK || st == kOfxStatReplyDefault) && strcmp(got, comps) == 0;
    propSetString(&out->props, kOfxImageEffectPropComponents, 0, got[0] ? got : comps);
    props_free(&out_args);

    PropSet in;
    props_init(&in);
    propSetDouble(&in, kOfxPropTime, 0, 0);
    propSetDouble(&in, kOfxImageEffectPropRenderScale, 0, scale);
    propSetDouble(&in, kOfxImageEffectPropRenderScale, 1, scale);
    PropSet rod_out;
    props_init(&rod_out);
    double def[4] = {0, 0, e->frames->width, e->frames->height};
    propSetDoubleN(&rod_out, kOfxImageEffectPropRegionOfDefinition, 4, def);
    st = call(l->plugin, kOfxImageEffectActionGetRegionOfDefinition, e, &in, &rod_out);
    double rod[4] = {0, 0, 0, 0};
    propGetDoubleN(&rod_out, kOfxImageEffectPropRegionOfDefinition, 4, rod);
    int rod_ok = (st == kOfxStatOK || st == kOfxStatReplyDefault) && rod[0] == 0 && rod[1] == 0 &&
                 rod[2] == e->frames->width * factor && rod[3] == e->frames->height * factor;
    props_free(&rod_out);

    /* Regions of interest: the whole source, whatever window is asked for. */
    PropSet roi_out;
    props_init(&roi_out);
    double window[4] = {0, 0, rod[2] / 2, rod[3] / 2};
    propSetDoubleN(&in, kOfxImageEffectPropRegionOfInterest, 4, window);
    st = call(l->plugin, kOfxImageEffectActionGetRegionsOfInterest, e, &in, &roi_out);
    double roi[4] = {0, 0, 0, 0};
    propGetDoubleN(&roi_out, "OfxImageClipPropRoI_Source", 4, roi);
    int roi_ok = st == kOfxStatOK && roi[2] == e->frames->width && roi[3] == e->frames->height;
    props_free(&roi_out);
    props_free(&in);

    int step = scale < 0.75 ? 2 : 1;
    e->out_bounds = (OfxRectI){0, 0, e->frames->width / step * factor,
                               e->frames->height / step * factor};
    check(ok && rod_ok && roi_ok,
          "%s: %s %s scale %.1f: clip preferences keep %s, region of definition %gx%g, "
          "regions of interest = whole source",
          l->id, depth + strlen("OfxBitDepth"), comps + strlen("OfxImageComponent"), scale,
          got[0] ? got + strlen("OfxImageComponent") : "?", rod[2], rod[3]);
    return ok && rod_ok && roi_ok;
}

/* One render of frame `t` over `window` (NULL = the whole output). */
static OfxStatus render(Loaded *l, struct OfxImageEffectStruct *e, int t, const OfxRectI *window,
                        double *seconds) {
    PropSet in;
    props_init(&in);
    propSetDouble(&in, kOfxPropTime, 0, t);
    propSetString(&in, kOfxImageEffectPropFieldToRender, 0, kOfxImageFieldNone);
    OfxRectI w = window ? *window : e->out_bounds;
    int wv[4] = {w.x1, w.y1, w.x2, w.y2};
    propSetIntN(&in, kOfxImageEffectPropRenderWindow, 4, wv);
    propSetDouble(&in, kOfxImageEffectPropRenderScale, 0, e->scale);
    propSetDouble(&in, kOfxImageEffectPropRenderScale, 1, e->scale);
    propSetInt(&in, kOfxImageEffectPropSequentialRenderStatus, 0, 0);
    propSetInt(&in, kOfxImageEffectPropInteractiveRenderStatus, 0, 0);
    propSetInt(&in, kOfxImageEffectPropRenderQualityDraft, 0, 0);
    e->progress_calls = e->abort_calls = 0;
    e->progress_backwards = 0;
    g_rendering = e;
    double t0 = now();
    OfxStatus st = call(l->plugin, kOfxImageEffectActionRender, e, &in, NULL);
    if (seconds) *seconds = now() - t0;
    g_rendering = NULL;
    props_free(&in);
    if (e->images_out != 0) check(0, "%s: %d images not released after render", l->id, e->images_out);
    if (e->progress_open) check(0, "%s: progress bar left open after render", l->id);
    if (e->progress_backwards) check(0, "%s: progress went backwards or past 1", l->id);
    e->images_out = 0;
    e->progress_open = 0;
    return st;
}

/* Compare the output's alpha with the source's, sample for sample (up to `factor` for SR,
 * where alpha is resampled). */
static int alpha_kept(struct OfxImageEffectStruct *e, int t) {
    PropSet *src = source_image(e->frames, t, e->depth, e->components, e->scale);
    PropSet *out = e->out_image;
    int nc = comps_count(e->components), bytes = depth_bytes(e->depth);
    if (nc == 3) {
        image_free(src);
        return 1;
    }
    int ok = 1;
    for (int y = e->out_bounds.y1; ok && y < e->out_bounds.y2; y++)
        for (int x = e->out_bounds.x1; ok && x < e->out_bounds.x2; x++)
            ok = memcmp(image_pixel(out, x, y) + (size_t)(nc - 1) * bytes,
                        image_pixel(src, x, y) + (size_t)(nc - 1) * bytes, (size_t)bytes) == 0;
    image_free(src);
    return ok;
}

/* PSNR of the output's colours against `clean` (8-bit RGB, top row first). */
static double output_psnr(struct OfxImageEffectStruct *e, const unsigned char *clean) {
    int w, h;
    unsigned char *rgb = image_rgb8(e->out_image, &w, &h);
    double v = psnr(rgb, clean, (size_t)w * h * 3);
    free(rgb);
    return v;
}

/* ---------------------------------------------------------------------------------------
 * Scenarios
 * ------------------------------------------------------------------------------------- */

typedef struct Data {
    const char *models; /* the folder of the default models, for the wrong-model check */
    Frames *clean, *noisy, *small, *blurred, *gray;
} Data;

/* Denoising on a real photo: every depth and component layout of the profile, several
 * frames; alpha bit for bit; Alpha-only passes through; proxy render; render windows; abort;
 * a bad model path. */
static void scenario_denoise(Loaded *l, const Data *d) {
    int context = strcmp(g_profile->name, "resolve") == 0 ? 0 : 1; /* Filter / General */
    struct OfxImageEffectStruct *e = create(l, context, d->noisy);
    if (!e) return;
    set_int(e, "device", 1); /* CPU */
    const unsigned char *clean = d->clean->rgb[0];
    size_t n = (size_t)d->clean->width * d->clean->height * 3;
    int rgb_comps[2] = {0, 0};
    for (int i = 0; i < g_profile->n_components; i++) {
        if (strcmp(g_profile->components[i], kOfxImageComponentRGBA) == 0) rgb_comps[0] = 1;
        if (strcmp(g_profile->components[i], kOfxImageComponentRGB) == 0) rgb_comps[1] = 1;
    }
    const char *comps_list[2] = {kOfxImageComponentRGBA, kOfxImageComponentRGB};
    for (int di = 0; di < g_profile->n_depths; di++) {
        for (int ci = 0; ci < 2; ci++) {
            /* Every depth in RGBA, RGB once (float and 8-bit): enough for each code path. */
            if (!rgb_comps[ci] || (g_quick && (di > 0 || ci > 0))) continue;
            if (ci == 1 && di == 1) continue;
            const char *depth = g_profile->depths[di], *comps = comps_list[ci];
            if (!prepare(l, e, depth, comps, 1.0, 1)) continue;
            int frames = di == 0 && ci == 0 && !g_quick ? 3 : 1;
            for (int t = 0; t < frames; t++) {
                double secs = 0;
                OfxStatus st = render(l, e, t, NULL, &secs);
                double before = psnr(d->noisy->rgb[t], clean, n);
                double after = st == kOfxStatOK ? output_psnr(e, clean) : 0;
                check(st == kOfxStatOK && after > before + 0.5 && alpha_kept(e, t),
                      "%s: %s %s frame %d: status %d, PSNR noisy %.2f dB -> restored %.2f dB, "
                      "alpha untouched (%.2f s)",
                      l->id, depth + strlen("OfxBitDepth"), comps + strlen("OfxImageComponent"),
                      t, st, before, after, secs);
            }
        }
    }

    /* Alpha-only images pass through (identity), alpha untouched. */
    if (profile_has(g_profile->components, g_profile->n_components, kOfxImageComponentAlpha) &&
        prepare(l, e, g_profile->depths[0], kOfxImageComponentAlpha, 1.0, 1)) {
        PropSet in, out;
        props_init(&in), props_init(&out);
        propSetDouble(&in, kOfxPropTime, 0, 1);
        OfxStatus ident = call(l->plugin, kOfxImageEffectActionIsIdentity, e, &in, &out);
        const char *clip = pstr(&out, kOfxPropName, 0);
        OfxStatus st = render(l, e, 1, NULL, NULL);
        check(ident == kOfxStatOK && clip && strcmp(clip, "Source") == 0 && st == kOfxStatOK &&
                  alpha_kept(e, 1),
              "%s: Alpha-only source: identity (status %d, clip %s), render copies it (status %d)",
              l->id, ident, clip ? clip : "-", st);
        props_free(&in), props_free(&out);
    }

    /* Proxy render at the profile's render scale. */
    if (g_profile->render_scale != 1.0 && !g_quick &&
        prepare(l, e, kOfxBitDepthFloat, kOfxImageComponentRGBA, g_profile->render_scale, 1)) {
        OfxStatus st = render(l, e, 0, NULL, NULL);
        check(st == kOfxStatOK && e->out_bounds.x2 == d->clean->width / 2 && alpha_kept(e, 0),
              "%s: proxy render at scale %.1f: %dx%d output (status %d), alpha untouched", l->id,
              g_profile->render_scale, e->out_bounds.x2, e->out_bounds.y2, st);
    }

    /* Render windows (tile hosts): two halves give the pixels of the whole-frame render, and
     * nothing outside the window is written. */
    if (g_profile->tiles && prepare(l, e, kOfxBitDepthFloat, kOfxImageComponentRGBA, 1.0, 1)) {
        OfxStatus st = render(l, e, 2, NULL, NULL);
        PropSet *whole = e->out_image;
        e->out_image = NULL;
        int W = e->out_bounds.x2, H = e->out_bounds.y2, same = st == kOfxStatOK, outside = 1;
        size_t px = 16;
        OfxRectI halves[2] = {{0, 0, W / 2, H}, {W / 2, 0, W, H}};
        for (int k = 0; k < 2 && same; k++) {
            OfxStatus sk = render(l, e, 2, &halves[k], NULL);
            same = sk == kOfxStatOK;
            for (int y = 0; same && y < H; y++)
                for (int x = 0; x < W; x++) {
                    int inside = x >= halves[k].x1 && x < halves[k].x2;
                    unsigned char *got = image_pixel(e->out_image, x, y);
                    if (inside && memcmp(got, image_pixel(whole, x, y), px) != 0) same = 0;
                    if (!inside) {
                        unsigned char sentinel[16];
                        memset(sentinel, 0x5a, sizeof sentinel);
                        if (memcmp(got, sentinel, px) != 0) outside = 0;
                    }
                }
        }
        image_free(whole);
        check(same && outside,
              "%s: two render windows give the whole-frame pixels, nothing written outside", l->id);
    }

    /* Abort mid-render: once the render has started, the host's first abort() poll (and
     * progress update, where the host has a progress suite) says stop. Then a normal render
     * works again. */
    if (prepare(l, e, g_profile->depths[0], kOfxImageComponentRGBA, 1.0, 1)) {
        set_int(e, "tileSize", 32);
        set_int(e, "overlap", 8);
        e->abort_after = 1;
        int before = g_messages;
        OfxStatus st = render(l, e, 0, NULL, NULL);
        int polled = e->abort_calls;
        e->abort_after = 0;
        check(st == kOfxStatFailed && polled >= 1 && g_messages == before,
              "%s: abort mid-render returns kOfxStatFailed without an error message (status %d, "
              "abort polled %d times)",
              l->id, st, polled);
        st = render(l, e, 0, NULL, NULL);
        check(st == kOfxStatOK && e->progress_calls + e->abort_calls >= 2,
              "%s: render after the abort works, with tiles of 32 (status %d, %d progress "
              "callbacks, %d abort polls)",
              l->id, st, e->progress_calls, e->abort_calls);
        set_int(e, "tileSize", 0);
        set_int(e, "overlap", 0);
    }

    /* A model file that does not exist: kOfxStatFailed and a message naming it; the default
     * model comes back when the parameter is cleared. */
    if (prepare(l, e, g_profile->depths[0], kOfxImageComponentRGBA, 1.0, 1)) {
        set_string(e, "modelFile", "/nonexistent/davi-model.safetensors");
        int before = g_messages;
        OfxStatus st = render(l, e, 0, NULL, NULL);
        check(st == kOfxStatFailed && g_messages > before &&
                  strstr(g_last_message, "/nonexistent/davi-model.safetensors"),
              "%s: a missing model file fails the render with a message naming it (status %d)",
              l->id, st);
        set_string(e, "modelFile", "");
        st = render(l, e, 0, NULL, NULL);
        check(st == kOfxStatOK, "%s: back to the default model (status %d)", l->id, st);
        /* A model for another task is refused, naming both. */
        char wrong[1200];
        snprintf(wrong, sizeof wrong, "%s/photo-deblur.safetensors", d->models);
        set_string(e, "modelFile", wrong);
        before = g_messages;
        st = render(l, e, 0, NULL, NULL);
        check(st == kOfxStatFailed && g_messages > before && strstr(g_last_message, "gaussian_blur"),
              "%s: a deblurring model in the denoiser is refused with a message (status %d)",
              l->id, st);
        set_string(e, "modelFile", "");
    }

    /* Precision: fp16 on the CPU fails with libdavi's message naming it; bf16 restores (on a
     * CPU with bf16 instructions) or fails with a message saying the CPU lacks them. */
    if (prepare(l, e, g_profile->depths[0], kOfxImageComponentRGBA, 1.0, 1)) {
        size_t n = (size_t)d->clean->width * d->clean->height * 3;
        double before_psnr = psnr(d->noisy->rgb[0], d->clean->rgb[0], n);
        set_int(e, "precision", 2); /* fp16 */
        int before = g_messages;
        OfxStatus st = render(l, e, 0, NULL, NULL);
        check(st == kOfxStatFailed && g_messages > before && strstr(g_last_message, "fp16") &&
                  strstr(g_last_message, "CUDA"),
              "%s: precision fp16 on the CPU fails the render with a message (status %d)", l->id,
              st);
        set_int(e, "precision", 1); /* bf16 */
        before = g_messages;
        st = render(l, e, 0, NULL, NULL);
        double after = st == kOfxStatOK ? output_psnr(e, d->clean->rgb[0]) : 0;
        check((st == kOfxStatOK && after > before_psnr + 0.5 && alpha_kept(e, 0)) ||
                  (st == kOfxStatFailed && g_messages > before &&
                   strstr(g_last_message, "bf16 instructions")),
              "%s: precision bf16 on the CPU: status %d, PSNR noisy %.2f dB -> %.2f dB (a CPU "
              "without bf16 instructions fails with a message)",
              l->id, st, before_psnr, after);
        set_int(e, "precision", 0);
        st = render(l, e, 0, NULL, NULL);
        check(st == kOfxStatOK, "%s: back to fp32 (status %d)", l->id, st);
    }
    destroy(l, e);
}

/* 4x super-resolution on a multi-resolution host: the output is four times larger and closer
 * to the original than a pixel-replicated enlargement. */
static void scenario_sr4(Loaded *l, const Data *d) {
    struct OfxImageEffectStruct *e = create(l, 1, d->small);
    if (!e) return;
    set_int(e, "device", 1);
    if (prepare(l, e, kOfxBitDepthFloat, kOfxImageComponentRGBA, 1.0, 4)) {
        double secs = 0;
        OfxStatus st = render(l, e, 0, NULL, &secs);
        int W = d->clean->width, H = d->clean->height, sw = d->small->width;
        unsigned char *nearest = xcalloc((size_t)W * H, 3);
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                memcpy(nearest + ((size_t)y * W + x) * 3,
                       d->small->rgb[0] + ((size_t)(y / 4) * sw + x / 4) * 3, 3);
        size_t n = (size_t)W * H * 3;
        double before = psnr(nearest, d->clean->rgb[0], n);
        double after = st == kOfxStatOK && e->out_bounds.x2 == W ? output_psnr(e, d->clean->rgb[0]) : 0;
        free(nearest);
        check(st == kOfxStatOK && after > before + 0.5,
              "%s: %dx%d -> %dx%d: PSNR pixel-replicated %.2f dB -> restored %.2f dB (%.2f s)",
              l->id, d->small->width, d->small->height, e->out_bounds.x2, e->out_bounds.y2, before,
              after, secs);
    }
    destroy(l, e);
}

/* Deblurring, inpainting and colorization: each renders a frame at 8-bit RGBA and keeps alpha;
 * deblurring must also beat its blurred input. */
static void scenario_other(Loaded *l, const Data *d, const Frames *input, int psnr_check) {
    struct OfxImageEffectStruct *e = create(l, 0, input);
    if (!e) return;
    set_int(e, "device", 1);
    const char *depth = g_profile->depths[g_profile->n_depths - 1];
    if (prepare(l, e, depth, kOfxImageComponentRGBA, 1.0, 1)) {
        double secs = 0;
        OfxStatus st = render(l, e, 0, NULL, &secs);
        size_t n = (size_t)d->clean->width * d->clean->height * 3;
        double before = psnr(input->rgb[0], d->clean->rgb[0], n);
        double after = st == kOfxStatOK ? output_psnr(e, d->clean->rgb[0]) : 0;
        check(st == kOfxStatOK && alpha_kept(e, 0) && (!psnr_check || after > before + 0.5),
              "%s: %s RGBA: status %d, PSNR input %.2f dB -> restored %.2f dB, alpha untouched "
              "(%.2f s)",
              l->id, depth + strlen("OfxBitDepth"), st, before, after, secs);
    }
    destroy(l, e);
}

/* ---------------------------------------------------------------------------------------
 * Loading the bundle
 * ------------------------------------------------------------------------------------- */

static void *load_bundle(char *found, size_t len) {
    const char *path = getenv("OFX_PLUGIN_PATH");
    if (!path) return NULL;
    char *dirs = xstrdup(path), *save = NULL;
    void *lib = NULL;
    for (char *dir = strtok_r(dirs, ":", &save); dir && !lib; dir = strtok_r(NULL, ":", &save)) {
        DIR *dp = opendir(dir);
        if (!dp) continue;
        struct dirent *ent;
        while (!lib && (ent = readdir(dp))) {
            size_t nl = strlen(ent->d_name);
            if (nl <= 11 || strcmp(ent->d_name + nl - 11, ".ofx.bundle") != 0) continue;
            snprintf(found, len, "%s/%s/Contents/Linux-x86-64/%.*s", dir, ent->d_name,
                     (int)(nl - 7), ent->d_name);
            lib = dlopen(found, RTLD_NOW | RTLD_LOCAL);
            if (!lib) printf("dlopen %s: %s\n", found, dlerror());
        }
        closedir(dp);
    }
    free(dirs);
    return lib;
}

int main(int argc, char **argv) {
    const char *profile = NULL, *dir = NULL, *models = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--profile") == 0 && i + 1 < argc) profile = argv[++i];
        else if (strcmp(argv[i], "--data") == 0 && i + 1 < argc) dir = argv[++i];
        else if (strcmp(argv[i], "--models") == 0 && i + 1 < argc) models = argv[++i];
        else if (strcmp(argv[i], "--quick") == 0) g_quick = 1;
        else {
            fprintf(stderr, "usage: test_host --profile resolve|nuke|natron --data DIR --models DIR [--quick]\n");
            return 2;
        }
    }
    for (size_t i = 0; profile && i < sizeof PROFILES / sizeof PROFILES[0]; i++)
        if (strcmp(PROFILES[i].name, profile) == 0) g_profile = &PROFILES[i];
    if (!g_profile || !dir || !models) {
        fprintf(stderr, "usage: test_host --profile resolve|nuke|natron --data DIR --models DIR [--quick]\n");
        return 2;
    }
    printf("profile %s: API %d.%d, tiles %d, multi-resolution %d, render scale %.1f\n",
           g_profile->name, g_profile->api_major, g_profile->api_minor, g_profile->tiles,
           g_profile->multires, g_profile->render_scale);

    Data data = {models, NULL, NULL, NULL, NULL, NULL};
    const char *clean[] = {"clean.ppm"}, *noisy[] = {"noisy0.ppm", "noisy1.ppm", "noisy2.ppm"},
               *small[] = {"small.ppm"}, *blurred[] = {"blurred.ppm"}, *gray[] = {"gray.pgm"};
    data.clean = frames_load(dir, clean, 1);
    data.noisy = frames_load(dir, noisy, 3);
    data.small = frames_load(dir, small, 1);
    data.blurred = frames_load(dir, blurred, 1);
    data.gray = frames_load(dir, gray, 1);

    host_props_init(g_profile);
    char path[4096];
    void *lib = load_bundle(path, sizeof path);
    check(lib != NULL, "found and loaded the bundle through OFX_PLUGIN_PATH: %s",
          lib ? path : "(none)");
    if (!lib) return 1;
    int (*count_fn)(void) = NULL;
    OfxPlugin *(*get_fn)(int) = NULL;
    *(void **)&count_fn = dlsym(lib, "OfxGetNumberOfPlugins");
    *(void **)&get_fn = dlsym(lib, "OfxGetPlugin");
    int n = count_fn ? count_fn() : 0;
    check(get_fn && n == 5, "OfxGetNumberOfPlugins = %d", n);

    Loaded loaded[8];
    memset(loaded, 0, sizeof loaded);
    for (int i = 0; i < n && i < 8; i++) {
        OfxPlugin *p = get_fn(i);
        if (!p) continue;
        loaded[i].plugin = p;
        loaded[i].id = p->pluginIdentifier;
        check(strcmp(p->pluginApi, kOfxImageEffectPluginApi) == 0 && p->apiVersion == 1 &&
                  p->setHost && p->mainEntry,
              "plug-in %d: %s %d.%d, API %s %d", i, p->pluginIdentifier, p->pluginVersionMajor,
              p->pluginVersionMinor, p->pluginApi, p->apiVersion);
        p->setHost(&g_host);
        OfxStatus st = call(p, kOfxActionLoad, NULL, NULL, NULL);
        check(st == kOfxStatOK || st == kOfxStatReplyDefault, "%s: load (status %d)", p->pluginIdentifier, st);
        describe_plugin(&loaded[i]);
    }

    for (int i = 0; i < n && i < 8; i++) {
        Loaded *l = &loaded[i];
        if (!l->described) continue;
        if (strstr(l->id, ".denoise")) scenario_denoise(l, &data);
        else if (strstr(l->id, ".sr4")) scenario_sr4(l, &data);
        else if (g_quick) continue;
        else if (strstr(l->id, ".deblur")) scenario_other(l, &data, data.blurred, 1);
        else if (strstr(l->id, ".inpaint")) scenario_other(l, &data, data.clean, 0);
        else if (strstr(l->id, ".colorize")) scenario_other(l, &data, data.gray, 0);
    }

    for (int i = 0; i < n && i < 8; i++) {
        Loaded *l = &loaded[i];
        if (!l->plugin) continue;
        OfxStatus st = call(l->plugin, kOfxActionUnload, NULL, NULL, NULL);
        check(st == kOfxStatOK || st == kOfxStatReplyDefault, "%s: unload (status %d)", l->id, st);
        if (l->desc) effect_free(l->desc);
        for (int c = 0; c < 2; c++)
            if (l->ctx_desc[c]) effect_free(l->ctx_desc[c]);
    }
    check(g_descriptor_messages == 0,
          "messages name an instance or no handle, never a descriptor (%d did)",
          g_descriptor_messages);
    check(g_memory_live == 0, "all image memory the plug-in allocated was freed (%d left)",
          g_memory_live);
    check(dlclose(lib) == 0, "dlclose");
    frames_free(data.clean), frames_free(data.noisy), frames_free(data.small);
    frames_free(data.blurred), frames_free(data.gray);
    props_free(&g_host_props);
    printf("%s: %d checks, %d failed\n", g_profile->name, g_checks, g_failures);
    return g_failures ? 1 : 0;
}
