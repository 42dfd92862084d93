/*
 * DAVI.ofx: libdavi's OpenFX image-effect plug-in (C11, against include/davi.h and the
 * OpenFX 1.4 API; the headers are fetched at build time by fetch-sdk.sh).
 *
 * Five effects, one per restoration task, in the host's "DAVI" group: Denoise, Deblur,
 * Super-Resolution 4x, Inpaint and Colorize. Each restores whole frames (SupportsTiles = 0;
 * libdavi tiles internally, seam-free) of RGBA or RGB images in 8-bit, 16-bit or float, keeps
 * alpha bit for bit, and passes Alpha-only images through. Every entry point checks every
 * handle and every host call and answers kOfxStatFailed or kOfxStatErrMissingHostFeature with
 * a message through the host's message suite; nothing below it can unwind (libdavi catches
 * its own panics and returns a status).
 *
 * One DaviContext (a loaded model on a device) per effect instance, loaded at the first render
 * and reloaded only when the "Model File", "Device" or "Precision" parameter changes; renders
 * of one instance are serialised by the host (kOfxImageEffectRenderInstanceSafe) and, in case
 * a host overlaps them anyway, by a per-instance mutex. The host's progress suite and abort() are
 * wired to libdavi's progress/cancel callback.
 *
 * Default models: "Model File" empty means photo-<task>.safetensors from $DAVI_MODEL_DIR,
 * then <bundle>/Contents/Resources/models, then libdavi's own search. Design notes, per-host
 * behaviour and troubleshooting: docs/hosts/openfx.md. Built and installed by install.sh
 * beside this file; tested by test_host.c through sdk/capi/tests/openfx.rs.
 */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "davi.h"
#include "ofxCore.h"
#include "ofxImageEffect.h"
#include "ofxMessage.h"
#include "ofxMultiThread.h"
#include "ofxParam.h"
#include "ofxProgress.h"
#include "ofxProperty.h"

#define DAVI_OFX_EXPORT __attribute__((visibility("default")))

/* ---------------------------------------------------------------------------------------
 * The effects
 * ------------------------------------------------------------------------------------- */

enum Task { TASK_DENOISE, TASK_DEBLUR, TASK_SR4, TASK_INPAINT, TASK_COLORIZE, TASK_COUNT };

typedef struct TaskInfo {
    const char *id;          /* OFX plug-in identifier; also the icon's file name */
    const char *task;        /* libdavi task name (default model photo-<task>.safetensors) */
    const char *kind;        /* the spec kind a model for this effect must have */
    const char *label;       /* what the host shows */
    const char *short_label;
    const char *description;
} TaskInfo;

static const TaskInfo TASKS[TASK_COUNT] = {
    {"org.libdavi.davi.denoise", "denoise", "denoising", "DAVI Denoise", "Denoise",
     "Removes sensor and compression noise with a DAVI one-step diffusion-prior generator."},
    {"org.libdavi.davi.deblur", "deblur", "gaussian_blur", "DAVI Deblur", "Deblur",
     "Sharpens an out-of-focus (Gaussian-blurred) picture with a DAVI generator. The default "
     "model undoes a blur of sigma 3 pixels at full resolution."},
    {"org.libdavi.davi.sr4", "sr4", "super_resolution", "DAVI Super-Resolution 4x", "SR 4x",
     "Makes a picture four times larger in each direction with a DAVI generator. Needs a host "
     "that lets an effect change the frame size (multi-resolution)."},
    {"org.libdavi.davi.inpaint", "inpaint", "inpainting", "DAVI Inpaint", "Inpaint",
     "Fills a rectangular hole (centre and size in fractions of the frame) with a DAVI "
     "generator."},
    {"org.libdavi.davi.colorize", "colorize", "colorization", "DAVI Colorize", "Colorize",
     "Gives a black-and-white picture plausible colours with a DAVI generator."},
};

/* Parameter names (script names). */
#define P_MODEL "modelFile"
#define P_DEVICE "device"
#define P_PRECISION "precision"
#define P_SEED "seed"
#define P_MODEL_VARIATION "useModelVariation"
#define P_VARIATION "variation"
#define P_TILE "tileSize"
#define P_OVERLAP "overlap"
#define P_HOLE_CENTRE "holeCentre"
#define P_HOLE_SIZE "holeSize"

static const char *const DEVICES[] = {"auto", "cpu", "cuda"};
static const char *const DEVICE_LABELS[] = {"Auto (CUDA if present, else CPU)", "CPU", "CUDA"};
#define DEVICE_COUNT 3

/* DaviContextOptions.precision values (libdavi ABI 4), in choice order. */
static const char *const PRECISIONS[] = {"fp32", "bf16", "fp16"};
static const char *const PRECISION_LABELS[] = {
    "Full (fp32)", "bfloat16 (CUDA, CPUs with bf16 instructions)", "float16 (CUDA only)"};
#define PRECISION_COUNT 3

/* ---------------------------------------------------------------------------------------
 * Host suites (one host per process: every OfxPlugin gets the same OfxHost)
 * ------------------------------------------------------------------------------------- */

static OfxHost *g_host;
static const OfxPropertySuiteV1 *g_prop;
static const OfxImageEffectSuiteV1 *g_effect;
static const OfxParameterSuiteV1 *g_param;
static const OfxMessageSuiteV1 *g_message;
static const OfxMessageSuiteV2 *g_message2;
static const OfxProgressSuiteV1 *g_progress;
/* Whether the host lets an effect's output region differ from its input's (read at load). */
static int g_host_multires;

static const void *fetch(const char *name, int version) {
    if (!g_host || !g_host->fetchSuite) return NULL;
    return g_host->fetchSuite(g_host->host, name, version);
}

/* Post a message of `type` for `instance` (an effect instance, or NULL). Errors also become the
 * instance's persistent message where the host has message suite V2. Never pass a descriptor:
 * hosts built on the OpenFX HostSupport library (Natron among them) treat every message
 * handle as an instance, and a descriptor there crashes the host. */
static void post(OfxImageEffectHandle instance, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void post(OfxImageEffectHandle instance, const char *type, const char *fmt, ...) {
    void *handle = instance;
    char text[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (g_message2 && handle && strcmp(type, kOfxMessageError) == 0 &&
        g_message2->setPersistentMessage(handle, type, "davi.error", "%s", text) == kOfxStatOK)
        return;
    if (g_message && g_message->message(handle, type, "davi.error", "%s", text) == kOfxStatOK)
        return;
    /* No message suite: the host's log is the last resort. */
    fprintf(stderr, "DAVI.ofx: %s\n", text);
}

static void clear_persistent(void *handle) {
    if (g_message2 && handle) g_message2->clearPersistentMessage(handle);
}

/* ---------------------------------------------------------------------------------------
 * Property helpers: every getter returns a default when the host lacks the property.
 * ------------------------------------------------------------------------------------- */

static int get_int(OfxPropertySetHandle props, const char *name, int index, int fallback) {
    int v = fallback;
    if (!props || g_prop->propGetInt(props, name, index, &v) != kOfxStatOK) return fallback;
    return v;
}

static double get_double(OfxPropertySetHandle props, const char *name, int index,
                         double fallback) {
    double v = fallback;
    if (!props || g_prop->propGetDouble(props, name, index, &v) != kOfxStatOK) return fallback;
    return v;
}

static const char *get_string(OfxPropertySetHandle props, const char *name, int index) {
    char *v = NULL;
    if (!props || g_prop->propGetString(props, name, index, &v) != kOfxStatOK) return NULL;
    return v;
}

static void *get_pointer(OfxPropertySetHandle props, const char *name, int index) {
    void *v = NULL;
    if (!props || g_prop->propGetPointer(props, name, index, &v) != kOfxStatOK) return NULL;
    return v;
}

static int get_rect_i(OfxPropertySetHandle props, const char *name, OfxRectI *r) {
    int v[4];
    if (!props || g_prop->propGetIntN(props, name, 4, v) != kOfxStatOK) return 0;
    r->x1 = v[0], r->y1 = v[1], r->x2 = v[2], r->y2 = v[3];
    return 1;
}

static int str_eq(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }

/* ---------------------------------------------------------------------------------------
 * Instances
 * ------------------------------------------------------------------------------------- */

typedef struct Instance {
    pthread_mutex_t lock;  /* held by render and by destroy */
    DaviContext *ctx;      /* NULL until the first render; reloaded on model/device change */
    char *ctx_model;       /* model file the context was made from ("" = default) */
    int ctx_device;        /* DEVICES index it was made on */
    int ctx_precision;     /* PRECISIONS index it was made with */
    OfxImageClipHandle source, output;
    OfxParamHandle model, device, precision, seed, model_variation, variation, tile, overlap;
    OfxParamHandle hole_centre, hole_size; /* inpainting only */
} Instance;

static Instance *instance_of(OfxImageEffectHandle effect) {
    OfxPropertySetHandle props = NULL;
    if (!effect || g_effect->getPropertySet(effect, &props) != kOfxStatOK) return NULL;
    return get_pointer(props, kOfxPropInstanceData, 0);
}

/* ---------------------------------------------------------------------------------------
 * Describe
 * ------------------------------------------------------------------------------------- */

/* The folder of this .ofx file, i.e. <bundle>/Contents/Linux-x86-64, or "" if unknown. */
static void own_dir(char *buf, size_t len) {
    Dl_info info;
    buf[0] = '\0';
    if (dladdr((const void *)TASKS, &info) && info.dli_fname) { /* any object of this file */
        snprintf(buf, len, "%s", info.dli_fname);
        char *slash = strrchr(buf, '/');
        if (slash) *slash = '\0';
        else buf[0] = '\0';
    }
}

static OfxStatus describe(int task, OfxImageEffectHandle desc) {
    const TaskInfo *t = &TASKS[task];
    OfxPropertySetHandle p = NULL;
    if (g_effect->getPropertySet(desc, &p) != kOfxStatOK) return kOfxStatErrBadHandle;

    if (task == TASK_SR4 && !g_host_multires) {
        /* Without multi-resolution support the output must be the size of the input, which a
         * 4x enlargement cannot be: tell the host not to offer this effect. */
        post(NULL, kOfxMessageError, /* not the descriptor: see post() */
             "%s needs a host that supports multi-resolution effects (the output is four times "
             "larger than the input); this host does not, so the effect is not offered. Scale "
             "the clip up in the host and use DAVI Deblur or Denoise instead.",
             t->label);
        return kOfxStatErrMissingHostFeature;
    }

    g_prop->propSetString(p, kOfxPropLabel, 0, t->label);
    g_prop->propSetString(p, kOfxPropShortLabel, 0, t->short_label);
    g_prop->propSetString(p, kOfxPropLongLabel, 0, t->label);
    g_prop->propSetString(p, kOfxImageEffectPluginPropGrouping, 0, "DAVI");
    /* Newer than 1.0: a host may not know these; failures are fine. */
    g_prop->propSetString(p, kOfxPropPluginDescription, 0, t->description);
    g_prop->propSetString(p, kOfxPropVersionLabel, 0, DAVI_VERSION_STRING);
    char icon[256];
    snprintf(icon, sizeof icon, "%s.png", t->id);
    g_prop->propSetString(p, kOfxPropIcon, 1, icon);

    g_prop->propSetString(p, kOfxImageEffectPropSupportedContexts, 0,
                          kOfxImageEffectContextFilter);
    g_prop->propSetString(p, kOfxImageEffectPropSupportedContexts, 1,
                          kOfxImageEffectContextGeneral);
    g_prop->propSetString(p, kOfxImageEffectPropSupportedPixelDepths, 0, kOfxBitDepthFloat);
    g_prop->propSetString(p, kOfxImageEffectPropSupportedPixelDepths, 1, kOfxBitDepthShort);
    g_prop->propSetString(p, kOfxImageEffectPropSupportedPixelDepths, 2, kOfxBitDepthByte);
    g_prop->propSetInt(p, kOfxImageEffectPluginPropSingleInstance, 0, 0);
    g_prop->propSetString(p, kOfxImageEffectPluginRenderThreadSafety, 0,
                          kOfxImageEffectRenderInstanceSafe);
    g_prop->propSetInt(p, kOfxImageEffectPluginPropHostFrameThreading, 0, 0);
    /* Whole frames: the network sees all of it; libdavi tiles internally. */
    g_prop->propSetInt(p, kOfxImageEffectPropSupportsTiles, 0, 0);
    /* Input and output may have different regions (SR enlarges; the others keep the source's
     * region wherever it lies). */
    g_prop->propSetInt(p, kOfxImageEffectPropSupportsMultiResolution, 0, 1);
    g_prop->propSetInt(p, kOfxImageEffectPropTemporalClipAccess, 0, 0);
    g_prop->propSetInt(p, kOfxImageEffectPropSupportsMultipleClipDepths, 0, 0);
    g_prop->propSetInt(p, kOfxImageEffectPropSupportsMultipleClipPARs, 0, 0);
    g_prop->propSetInt(p, kOfxImageEffectPluginPropFieldRenderTwiceAlways, 0, 0);
    return kOfxStatOK;
}

static OfxPropertySetHandle define_param(OfxParamSetHandle set, const char *type,
                                         const char *name, const char *label,
                                         const char *hint) {
    OfxPropertySetHandle p = NULL;
    if (g_param->paramDefine(set, type, name, &p) != kOfxStatOK || !p) return NULL;
    g_prop->propSetString(p, kOfxPropLabel, 0, label);
    g_prop->propSetString(p, kOfxParamPropHint, 0, hint);
    g_prop->propSetString(p, kOfxParamPropScriptName, 0, name);
    return p;
}

static void int_range(OfxPropertySetHandle p, int def, int lo, int hi, int display_hi) {
    g_prop->propSetInt(p, kOfxParamPropDefault, 0, def);
    g_prop->propSetInt(p, kOfxParamPropMin, 0, lo);
    g_prop->propSetInt(p, kOfxParamPropMax, 0, hi);
    g_prop->propSetInt(p, kOfxParamPropDisplayMin, 0, lo);
    g_prop->propSetInt(p, kOfxParamPropDisplayMax, 0, display_hi);
}

/* Double ranges are always explicit: Resolve's default range is -1..1. */
static void double_range(OfxPropertySetHandle p, int dims, const double *def, double lo,
                         double hi) {
    for (int i = 0; i < dims; i++) {
        g_prop->propSetDouble(p, kOfxParamPropDefault, i, def[i]);
        g_prop->propSetDouble(p, kOfxParamPropMin, i, lo);
        g_prop->propSetDouble(p, kOfxParamPropMax, i, hi);
        g_prop->propSetDouble(p, kOfxParamPropDisplayMin, i, lo);
        g_prop->propSetDouble(p, kOfxParamPropDisplayMax, i, hi);
    }
}

static OfxStatus describe_in_context(int task, OfxImageEffectHandle desc,
                                     OfxPropertySetHandle in_args) {
    const char *context = get_string(in_args, kOfxImageEffectPropContext, 0);
    if (!str_eq(context, kOfxImageEffectContextFilter) &&
        !str_eq(context, kOfxImageEffectContextGeneral))
        return kOfxStatErrMissingHostFeature;

    OfxPropertySetHandle clip = NULL;
    const char *clips[2] = {kOfxImageEffectSimpleSourceClipName, kOfxImageEffectOutputClipName};
    for (int i = 0; i < 2; i++) {
        if (g_effect->clipDefine(desc, clips[i], &clip) != kOfxStatOK || !clip)
            return kOfxStatFailed;
        g_prop->propSetString(clip, kOfxImageEffectPropSupportedComponents, 0,
                              kOfxImageComponentRGBA);
        g_prop->propSetString(clip, kOfxImageEffectPropSupportedComponents, 1,
                              kOfxImageComponentRGB);
        g_prop->propSetString(clip, kOfxImageEffectPropSupportedComponents, 2,
                              kOfxImageComponentAlpha);
        g_prop->propSetInt(clip, kOfxImageEffectPropSupportsTiles, 0, 0);
        if (i == 0) {
            g_prop->propSetInt(clip, kOfxImageClipPropIsMask, 0, 0);
            g_prop->propSetInt(clip, kOfxImageEffectPropTemporalClipAccess, 0, 0);
        }
    }

    OfxParamSetHandle set = NULL;
    if (g_effect->getParamSet(desc, &set) != kOfxStatOK || !set) return kOfxStatFailed;
    OfxPropertySetHandle p;

    p = define_param(set, kOfxParamTypeString, P_MODEL, "Model File",
                     "A DAVI model file (.safetensors) trained for this task. Empty: the "
                     "default model, photo-<task>.safetensors, from $DAVI_MODEL_DIR or the "
                     "bundle's Contents/Resources/models.");
    if (!p) return kOfxStatFailed;
    g_prop->propSetString(p, kOfxParamPropStringMode, 0, kOfxParamStringIsFilePath);
    g_prop->propSetInt(p, kOfxParamPropStringFilePathExists, 0, 1);
    g_prop->propSetString(p, kOfxParamPropDefault, 0, "");
    g_prop->propSetInt(p, kOfxParamPropAnimates, 0, 0);

    p = define_param(set, kOfxParamTypeChoice, P_DEVICE, "Device",
                     "Where the network runs. Auto takes the first CUDA GPU, else the CPU. "
                     "Changing it reloads the model.");
    if (!p) return kOfxStatFailed;
    for (int i = 0; i < DEVICE_COUNT; i++)
        g_prop->propSetString(p, kOfxParamPropChoiceOption, i, DEVICE_LABELS[i]);
    g_prop->propSetInt(p, kOfxParamPropDefault, 0, 0);
    g_prop->propSetInt(p, kOfxParamPropAnimates, 0, 0);

    p = define_param(set, kOfxParamTypeChoice, P_PRECISION, "Precision",
                     "Numeric precision of the network. bfloat16 (CUDA GPUs, CPUs with bf16 "
                     "instructions) is faster on GPUs and on CPUs with AMX, with results "
                     "slightly different from full precision; float16 needs CUDA. Changing it "
                     "reloads the model.");
    if (!p) return kOfxStatFailed;
    for (int i = 0; i < PRECISION_COUNT; i++)
        g_prop->propSetString(p, kOfxParamPropChoiceOption, i, PRECISION_LABELS[i]);
    g_prop->propSetInt(p, kOfxParamPropDefault, 0, 0);
    g_prop->propSetInt(p, kOfxParamPropAnimates, 0, 0);

    p = define_param(set, kOfxParamTypeInteger, P_SEED, "Seed",
                     "Seed of the generator's perturbation noise. The same frame, settings and "
                     "seed give the same pixels.");
    if (!p) return kOfxStatFailed;
    int_range(p, 0, 0, 2147483647, 1000);

    p = define_param(set, kOfxParamTypeBoolean, P_MODEL_VARIATION, "Model's Variation",
                     "Use the perturbation strength the model was trained with. Off: use "
                     "Variation.");
    if (!p) return kOfxStatFailed;
    g_prop->propSetInt(p, kOfxParamPropDefault, 0, 1);

    p = define_param(set, kOfxParamTypeDouble, P_VARIATION, "Variation",
                     "DAVI's perturbation strength h when Model's Variation is off. 0 makes the "
                     "result a fixed function of the frame (steadiest on video); larger values "
                     "add more generated detail.");
    if (!p) return kOfxStatFailed;
    double h = 0.1;
    double_range(p, 1, &h, 0.0, 1.0);
    g_prop->propSetString(p, kOfxParamPropDoubleType, 0, kOfxParamDoubleTypePlain);
    g_prop->propSetDouble(p, kOfxParamPropIncrement, 0, 0.01);
    g_prop->propSetInt(p, kOfxParamPropDigits, 0, 3);

    p = define_param(set, kOfxParamTypeInteger, P_TILE, "Tile Size",
                     "Edge of the square tiles the network runs on, in pixels of the image it "
                     "restores (rounded down to a multiple of 4; at least 16). Smaller tiles "
                     "use less memory. 0: the model's preferred tile.");
    if (!p) return kOfxStatFailed;
    int_range(p, 0, 0, 8192, 1024);

    p = define_param(set, kOfxParamTypeInteger, P_OVERLAP, "Overlap",
                     "Pixels neighbouring tiles share and cross-fade over (no seams); must be "
                     "smaller than the tile. 0: automatic.");
    if (!p) return kOfxStatFailed;
    int_range(p, 0, 0, 4096, 128);

    if (task == TASK_INPAINT) {
        double centre[2] = {0.5, 0.5}, size[2] = {0.5, 0.5};
        p = define_param(set, kOfxParamTypeDouble2D, P_HOLE_CENTRE, "Hole Centre",
                         "Centre of the rectangle to fill, as fractions of the frame's width and "
                         "height from its bottom-left corner.");
        if (!p) return kOfxStatFailed;
        double_range(p, 2, centre, 0.0, 1.0);
        g_prop->propSetString(p, kOfxParamPropDoubleType, 0, kOfxParamDoubleTypePlain);
        p = define_param(set, kOfxParamTypeDouble2D, P_HOLE_SIZE, "Hole Size",
                         "Width and height of the rectangle to fill, as fractions of the "
                         "frame.");
        if (!p) return kOfxStatFailed;
        double_range(p, 2, size, 0.0, 1.0);
        g_prop->propSetString(p, kOfxParamPropDoubleType, 0, kOfxParamDoubleTypePlain);
    }
    return kOfxStatOK;
}

/* ---------------------------------------------------------------------------------------
 * Instance life
 * ------------------------------------------------------------------------------------- */

static OfxStatus create_instance(int task, OfxImageEffectHandle effect) {
    OfxPropertySetHandle props = NULL;
    OfxParamSetHandle set = NULL;
    if (g_effect->getPropertySet(effect, &props) != kOfxStatOK ||
        g_effect->getParamSet(effect, &set) != kOfxStatOK)
        return kOfxStatErrBadHandle;
    if (task == TASK_SR4 && !g_host_multires) {
        post(effect, kOfxMessageError, "%s needs a host with multi-resolution support.",
             TASKS[task].label);
        return kOfxStatErrMissingHostFeature;
    }
    Instance *inst = calloc(1, sizeof *inst);
    if (!inst) return kOfxStatErrMemory;
    pthread_mutex_init(&inst->lock, NULL);
    int ok = g_effect->clipGetHandle(effect, kOfxImageEffectSimpleSourceClipName, &inst->source,
                                     NULL) == kOfxStatOK &&
             g_effect->clipGetHandle(effect, kOfxImageEffectOutputClipName, &inst->output,
                                     NULL) == kOfxStatOK;
    struct {
        const char *name;
        OfxParamHandle *handle;
    } params[] = {
        {P_MODEL, &inst->model},     {P_DEVICE, &inst->device},
        {P_PRECISION, &inst->precision},
        {P_SEED, &inst->seed},       {P_MODEL_VARIATION, &inst->model_variation},
        {P_VARIATION, &inst->variation}, {P_TILE, &inst->tile},
        {P_OVERLAP, &inst->overlap}, {P_HOLE_CENTRE, &inst->hole_centre},
        {P_HOLE_SIZE, &inst->hole_size},
    };
    if (!ok) {
        pthread_mutex_destroy(&inst->lock);
        free(inst);
        post(effect, kOfxMessageError, "%s: the host did not give back the Source and Output "
             "clips the effect defined.", TASKS[task].label);
        return kOfxStatFailed;
    }
    /* A parameter the host could not make (some hosts lack a type, e.g. String) keeps its
     * default: a NULL handle is read as the default value. */
    size_t count = sizeof params / sizeof params[0] - (task == TASK_INPAINT ? 0 : 2);
    for (size_t i = 0; i < count; i++)
        if (g_param->paramGetHandle(set, params[i].name, params[i].handle, NULL) != kOfxStatOK)
            *params[i].handle = NULL;
    g_prop->propSetPointer(props, kOfxPropInstanceData, 0, inst);
    return kOfxStatOK;
}

static OfxStatus destroy_instance(OfxImageEffectHandle effect) {
    Instance *inst = instance_of(effect);
    if (!inst) return kOfxStatOK;
    pthread_mutex_lock(&inst->lock);
    davi_context_free(inst->ctx);
    free(inst->ctx_model);
    pthread_mutex_unlock(&inst->lock);
    pthread_mutex_destroy(&inst->lock);
    free(inst);
    OfxPropertySetHandle props = NULL;
    if (g_effect->getPropertySet(effect, &props) == kOfxStatOK)
        g_prop->propSetPointer(props, kOfxPropInstanceData, 0, NULL);
    return kOfxStatOK;
}

/* ---------------------------------------------------------------------------------------
 * Regions and clip preferences
 * ------------------------------------------------------------------------------------- */

static int source_is_alpha(Instance *inst) {
    OfxPropertySetHandle cp = NULL;
    if (g_effect->clipGetPropertySet(inst->source, &cp) != kOfxStatOK) return 0;
    return str_eq(get_string(cp, kOfxImageEffectPropComponents, 0), kOfxImageComponentAlpha);
}

static OfxStatus region_of_definition(int task, OfxImageEffectHandle effect,
                                      OfxPropertySetHandle in_args,
                                      OfxPropertySetHandle out_args) {
    if (task != TASK_SR4) return kOfxStatReplyDefault;
    Instance *inst = instance_of(effect);
    if (!inst) return kOfxStatErrBadHandle;
    OfxTime time = get_double(in_args, kOfxPropTime, 0, 0.0);
    OfxRectD rod;
    if (g_effect->clipGetRegionOfDefinition(inst->source, time, &rod) != kOfxStatOK)
        return kOfxStatReplyDefault; /* no source yet: the render will say so */
    double out[4] = {rod.x1 * 4.0, rod.y1 * 4.0, rod.x2 * 4.0, rod.y2 * 4.0};
    g_prop->propSetDoubleN(out_args, kOfxImageEffectPropRegionOfDefinition, 4, out);
    return kOfxStatOK;
}

static OfxStatus regions_of_interest(OfxImageEffectHandle effect, OfxPropertySetHandle in_args,
                                     OfxPropertySetHandle out_args) {
    /* The network needs the whole source frame, whatever part of the output is asked for. */
    Instance *inst = instance_of(effect);
    if (!inst) return kOfxStatErrBadHandle;
    OfxTime time = get_double(in_args, kOfxPropTime, 0, 0.0);
    OfxRectD rod;
    if (g_effect->clipGetRegionOfDefinition(inst->source, time, &rod) != kOfxStatOK)
        return kOfxStatReplyDefault;
    double roi[4] = {rod.x1, rod.y1, rod.x2, rod.y2};
    g_prop->propSetDoubleN(out_args, "OfxImageClipPropRoI_" kOfxImageEffectSimpleSourceClipName,
                           4, roi);
    return kOfxStatOK;
}

static OfxStatus clip_preferences(OfxImageEffectHandle effect, OfxPropertySetHandle out_args) {
    Instance *inst = instance_of(effect);
    if (!inst) return kOfxStatErrBadHandle;
    OfxPropertySetHandle cp = NULL;
    if (g_effect->clipGetPropertySet(inst->source, &cp) != kOfxStatOK) return kOfxStatReplyDefault;
    /* The output has the source's components (alpha kept) and premultiplication state. */
    const char *comps = get_string(cp, kOfxImageEffectPropComponents, 0);
    if (!comps || str_eq(comps, kOfxImageComponentNone))
        comps = get_string(cp, kOfxImageClipPropUnmappedComponents, 0);
    if (comps && !str_eq(comps, kOfxImageComponentNone))
        g_prop->propSetString(out_args, "OfxImageClipPropComponents_Output", 0, comps);
    const char *premult = get_string(cp, kOfxImageEffectPropPreMultiplication, 0);
    if (premult) g_prop->propSetString(out_args, kOfxImageEffectPropPreMultiplication, 0, premult);
    return kOfxStatOK;
}

static OfxStatus is_identity(int task, OfxImageEffectHandle effect, OfxPropertySetHandle in_args,
                             OfxPropertySetHandle out_args) {
    /* An Alpha-only image has nothing to restore and alpha is never changed: pass it through
     * (not for SR, whose output is larger). */
    Instance *inst = instance_of(effect);
    if (task == TASK_SR4 || !inst || !source_is_alpha(inst)) return kOfxStatReplyDefault;
    g_prop->propSetString(out_args, kOfxPropName, 0, kOfxImageEffectSimpleSourceClipName);
    g_prop->propSetDouble(out_args, kOfxPropTime, 0, get_double(in_args, kOfxPropTime, 0, 0.0));
    return kOfxStatOK;
}

static OfxStatus instance_changed(OfxImageEffectHandle effect, OfxPropertySetHandle in_args) {
    /* A new model, device or precision may cure the last error: clear its persistent message. */
    const char *name = get_string(in_args, kOfxPropName, 0);
    if (str_eq(name, P_MODEL) || str_eq(name, P_DEVICE) || str_eq(name, P_PRECISION))
        clear_persistent(effect);
    return kOfxStatReplyDefault;
}

/* ---------------------------------------------------------------------------------------
 * Render
 * ------------------------------------------------------------------------------------- */

typedef struct Image {
    OfxPropertySetHandle handle;
    unsigned char *data;
    OfxRectI bounds;
    ptrdiff_t row_bytes;
    int channels;      /* 4, 3 or 1 */
    int sample_bytes;  /* 1, 2 or 4 */
    uint32_t sample_type;
} Image;

/* Read an image's properties; 0 (with a message) if the host gave something unusable. */
static int image_info(OfxImageEffectHandle effect, OfxPropertySetHandle h, Image *img,
                      const char *what) {
    memset(img, 0, sizeof *img);
    img->handle = h;
    img->data = get_pointer(h, kOfxImagePropData, 0);
    int row_bytes = get_int(h, kOfxImagePropRowBytes, 0, 0);
    const char *depth = get_string(h, kOfxImageEffectPropPixelDepth, 0);
    const char *comps = get_string(h, kOfxImageEffectPropComponents, 0);
    if (!img->data || !get_rect_i(h, kOfxImagePropBounds, &img->bounds)) {
        post(effect, kOfxMessageError, "DAVI: the host's %s image has no data or bounds.", what);
        return 0;
    }
    img->row_bytes = row_bytes;
    if (str_eq(depth, kOfxBitDepthByte)) {
        img->sample_bytes = 1, img->sample_type = DAVI_SAMPLE_TYPE_U8;
    } else if (str_eq(depth, kOfxBitDepthShort)) {
        img->sample_bytes = 2, img->sample_type = DAVI_SAMPLE_TYPE_U16;
    } else if (str_eq(depth, kOfxBitDepthFloat)) {
        img->sample_bytes = 4, img->sample_type = DAVI_SAMPLE_TYPE_F32;
    } else {
        post(effect, kOfxMessageError,
             "DAVI: the %s image has bit depth %s; DAVI takes 8-bit, 16-bit and float images.",
             what, depth ? depth : "(none)");
        return 0;
    }
    if (str_eq(comps, kOfxImageComponentRGBA)) img->channels = 4;
    else if (str_eq(comps, kOfxImageComponentRGB)) img->channels = 3;
    else if (str_eq(comps, kOfxImageComponentAlpha)) img->channels = 1;
    else {
        post(effect, kOfxMessageError,
             "DAVI: the %s image has components %s; DAVI takes RGBA, RGB and Alpha images.",
             what, comps ? comps : "(none)");
        return 0;
    }
    long width = (long)img->bounds.x2 - img->bounds.x1;
    long height = (long)img->bounds.y2 - img->bounds.y1;
    long min_row = width * img->channels * img->sample_bytes;
    long mag = labs((long)row_bytes);
    if (width <= 0 || height <= 0 || mag < min_row || mag % img->sample_bytes != 0) {
        post(effect, kOfxMessageError,
             "DAVI: the host's %s image is malformed (bounds %d,%d-%d,%d, %d row bytes).", what,
             img->bounds.x1, img->bounds.y1, img->bounds.x2, img->bounds.y2, row_bytes);
        return 0;
    }
    return 1;
}

/* Address of pixel (x, y) in OFX pixel coordinates (y up; rows at data + (y - y1) * rowBytes,
 * whatever the sign of rowBytes). */
static unsigned char *pixel(const Image *img, int x, int y) {
    return img->data + (ptrdiff_t)(y - img->bounds.y1) * img->row_bytes +
           (ptrdiff_t)(x - img->bounds.x1) * img->channels * img->sample_bytes;
}

/* A DaviImage over `rect` (inside img's bounds): libdavi wants the top row first. */
static DaviImage davi_view(const Image *img, OfxRectI rect) {
    DaviImage d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.width = (uint32_t)(rect.x2 - rect.x1);
    d.height = (uint32_t)(rect.y2 - rect.y1);
    d.sample_type = img->sample_type;
    d.layout = img->channels == 4 ? DAVI_CHANNEL_LAYOUT_RGBA : DAVI_CHANNEL_LAYOUT_RGB;
    d.row_stride = -img->row_bytes;
    d.data = pixel(img, rect.x1, rect.y2 - 1);
    return d;
}

static int rect_contains(OfxRectI outer, OfxRectI inner) {
    return inner.x1 >= outer.x1 && inner.y1 >= outer.y1 && inner.x2 <= outer.x2 &&
           inner.y2 <= outer.y2;
}

static OfxRectI rect_intersect(OfxRectI a, OfxRectI b) {
    OfxRectI r = {a.x1 > b.x1 ? a.x1 : b.x1, a.y1 > b.y1 ? a.y1 : b.y1,
                  a.x2 < b.x2 ? a.x2 : b.x2, a.y2 < b.y2 ? a.y2 : b.y2};
    if (r.x2 < r.x1) r.x2 = r.x1;
    if (r.y2 < r.y1) r.y2 = r.y1;
    return r;
}

/* Write `window` of dst from `src` where src covers it (src may be larger), zero elsewhere. */
static void copy_window(const Image *src, const Image *dst, OfxRectI window, int scale) {
    size_t px = (size_t)dst->channels * dst->sample_bytes;
    for (int y = window.y1; y < window.y2; y++) {
        unsigned char *out = pixel(dst, window.x1, y);
        for (int x = window.x1; x < window.x2; x++, out += px) {
            int sx = scale > 1 ? (x >= 0 ? x / scale : -((-x + scale - 1) / scale)) : x;
            int sy = scale > 1 ? (y >= 0 ? y / scale : -((-y + scale - 1) / scale)) : y;
            if (sx >= src->bounds.x1 && sx < src->bounds.x2 && sy >= src->bounds.y1 &&
                sy < src->bounds.y2)
                memcpy(out, pixel(src, sx, sy), px);
            else
                memset(out, 0, px);
        }
    }
}

typedef struct Progress {
    OfxImageEffectHandle effect;
    int started;
    int aborted;
} Progress;

/* libdavi's progress callback: forward to the host's progress bar; stop when the host says so
 * (progress suite "no" or image effect abort()). Runs on the render thread. */
static int32_t on_progress(void *user_data, float fraction) {
    Progress *p = user_data;
    if (p->started && g_progress &&
        g_progress->progressUpdate(p->effect, (double)fraction) == kOfxStatReplyNo)
        p->aborted = 1;
    if (g_effect->abort(p->effect)) p->aborted = 1;
    return p->aborted;
}

/* Parameter values at `time`; a missing parameter (NULL) or a failed read keeps `*v`. */
static void param_int(OfxParamHandle h, OfxTime time, int *v) {
    int x;
    if (h && g_param->paramGetValueAtTime(h, time, &x) == kOfxStatOK) *v = x;
}

static void param_double(OfxParamHandle h, OfxTime time, double *v) {
    double x;
    if (h && g_param->paramGetValueAtTime(h, time, &x) == kOfxStatOK) *v = x;
}

static void param_double2(OfxParamHandle h, OfxTime time, double *a, double *b) {
    double x, y;
    if (h && g_param->paramGetValueAtTime(h, time, &x, &y) == kOfxStatOK) *a = x, *b = y;
}

static const char *param_string(OfxParamHandle h, OfxTime time) {
    char *x = NULL;
    if (h && g_param->paramGetValueAtTime(h, time, &x) == kOfxStatOK && x) return x;
    return "";
}

/* The model file this instance should use: the parameter, or the default for the task from
 * $DAVI_MODEL_DIR or the bundle's Resources. Empty when libdavi should search itself. */
static void resolve_model(int task, const char *param, char *buf, size_t len) {
    if (param && param[0]) {
        snprintf(buf, len, "%s", param);
        return;
    }
    char file[64];
    snprintf(file, sizeof file, "photo-%s.safetensors", TASKS[task].task);
    const char *env = getenv("DAVI_MODEL_DIR");
    if (env && env[0]) {
        snprintf(buf, len, "%s/%s", env, file);
        FILE *f = fopen(buf, "rb");
        if (f) {
            fclose(f);
            return;
        }
    }
    char dir[1024];
    own_dir(dir, sizeof dir);
    if (dir[0]) {
        snprintf(buf, len, "%s/../Resources/models/%s", dir, file);
        FILE *f = fopen(buf, "rb");
        if (f) {
            fclose(f);
            return;
        }
    }
    buf[0] = '\0';
}

/* Make sure inst->ctx is loaded from the model, device and precision the parameters name.
 * Holds the instance lock. */
static OfxStatus ensure_context(int task, OfxImageEffectHandle effect, Instance *inst,
                                OfxTime time) {
    int device = 0, precision = 0;
    param_int(inst->device, time, &device);
    if (device < 0 || device >= DEVICE_COUNT) device = 0;
    param_int(inst->precision, time, &precision);
    if (precision < 0 || precision >= PRECISION_COUNT) precision = 0;
    const char *wanted = param_string(inst->model, time);
    if (inst->ctx && str_eq(inst->ctx_model, wanted) && inst->ctx_device == device &&
        inst->ctx_precision == precision)
        return kOfxStatOK;

    davi_context_free(inst->ctx);
    inst->ctx = NULL;
    free(inst->ctx_model);
    inst->ctx_model = NULL;

    char path[2048];
    resolve_model(task, wanted, path, sizeof path);
    DaviContextOptions opt;
    davi_context_options_init(&opt, sizeof opt);
    opt.device = DEVICES[device];
    opt.precision = PRECISIONS[precision];
    if (path[0]) opt.model_path = path;
    else opt.task = TASKS[task].task;
    char err[1024] = "";
    DaviStatus st = davi_context_new(&opt, &inst->ctx, err, sizeof err);
    if (st != DAVI_STATUS_OK) {
        inst->ctx = NULL;
        post(effect, kOfxMessageError, "%s: cannot load the model %s on %s in %s: %s (%s)",
             TASKS[task].label, path[0] ? path : "(default)", DEVICES[device],
             PRECISIONS[precision], err, davi_status_string(st));
        return kOfxStatFailed;
    }
    /* The model must be one for this effect's task. */
    DaviSpec *spec = NULL;
    if (davi_context_spec(inst->ctx, &spec) == DAVI_STATUS_OK) {
        const char *kind = davi_spec_kind(spec);
        int fits = str_eq(kind, TASKS[task].kind);
        davi_spec_free(spec);
        if (!fits) {
            post(effect, kOfxMessageError,
                 "%s: the model %s was trained for %s, not %s; choose a %s model.",
                 TASKS[task].label, path[0] ? path : "(default)", kind ? kind : "?",
                 TASKS[task].kind, TASKS[task].task);
            davi_context_free(inst->ctx);
            inst->ctx = NULL;
            return kOfxStatFailed;
        }
    }
    inst->ctx_model = strdup(wanted);
    inst->ctx_device = device;
    inst->ctx_precision = precision;
    if (!inst->ctx_model) {
        davi_context_free(inst->ctx);
        inst->ctx = NULL;
        return kOfxStatErrMemory;
    }
    clear_persistent(effect);
    return kOfxStatOK;
}

/* The spec to restore under: the model's own operator (its trained noise level, blur …),
 * else the task's official one; inpainting gets the hole from the parameters. */
static OfxStatus make_spec(int task, OfxImageEffectHandle effect, Instance *inst, OfxTime time,
                           const Image *src, DaviSpec **out) {
    DaviSpec *spec = NULL;
    if (davi_context_spec(inst->ctx, &spec) != DAVI_STATUS_OK &&
        davi_spec_new_task(TASKS[task].task, &spec) != DAVI_STATUS_OK)
        return kOfxStatErrMemory;
    /* A frame being edited is not a noisy measurement: inpainting and colorization keep its
     * pixels outside the hole (its gray) exactly, without the models' whole-frame measurement
     * denoiser (docs/models.md, "Measurement denoiser"); Denoise is its own effect. */
    if ((task == TASK_INPAINT || task == TASK_COLORIZE) &&
        davi_spec_set_noise_sigma(spec, 0.0) != DAVI_STATUS_OK) {
        davi_spec_free(spec);
        return kOfxStatFailed;
    }
    if (task == TASK_INPAINT) {
        double cx = 0.5, cy = 0.5, w = 0.5, h = 0.5;
        param_double2(inst->hole_centre, time, &cx, &cy);
        param_double2(inst->hole_size, time, &w, &h);
        long iw = src->bounds.x2 - src->bounds.x1, ih = src->bounds.y2 - src->bounds.y1;
        /* Fractions from the bottom-left corner to whole pixels, top-down for libdavi. */
        long left = lround((cx - w / 2) * iw), right = lround((cx + w / 2) * iw);
        long bottom = lround((cy - h / 2) * ih), top_edge = lround((cy + h / 2) * ih);
        left = left < 0 ? 0 : left, right = right > iw ? iw : right;
        bottom = bottom < 0 ? 0 : bottom, top_edge = top_edge > ih ? ih : top_edge;
        if (right > left && top_edge > bottom) {
            DaviStatus st = davi_spec_add_box(spec, (uint32_t)(ih - top_edge), (uint32_t)left,
                                              (uint32_t)(top_edge - bottom),
                                              (uint32_t)(right - left));
            if (st != DAVI_STATUS_OK) {
                post(effect, kOfxMessageError, "%s: bad hole: %s", TASKS[task].label,
                     davi_status_string(st));
                davi_spec_free(spec);
                return kOfxStatFailed;
            }
        }
    }
    *out = spec;
    return kOfxStatOK;
}

static OfxStatus restore_frame(int task, OfxImageEffectHandle effect, Instance *inst,
                               OfxPropertySetHandle in_args, const Image *src, const Image *dst) {
    OfxTime time = get_double(in_args, kOfxPropTime, 0, 0.0);
    OfxRectI window;
    if (!get_rect_i(in_args, kOfxImageEffectPropRenderWindow, &window)) window = dst->bounds;
    window = rect_intersect(window, dst->bounds);
    int scale = task == TASK_SR4 ? 4 : 1;

    if (src->channels == 1 || dst->channels != src->channels ||
        dst->sample_type != src->sample_type) {
        if (src->channels == 1 && dst->channels == 1 && dst->sample_type == src->sample_type) {
            /* Alpha only: nothing to restore, alpha is kept (replicated 4x for SR). */
            copy_window(src, dst, window, scale);
            return kOfxStatOK;
        }
        post(effect, kOfxMessageError,
             "%s: the host gave a %d-channel %d-byte source for a %d-channel %d-byte output; "
             "DAVI needs equal formats.",
             TASKS[task].label, src->channels, src->sample_bytes, dst->channels,
             dst->sample_bytes);
        return kOfxStatFailed;
    }

    OfxStatus st = ensure_context(task, effect, inst, time);
    if (st != kOfxStatOK) return st;
    DaviSpec *spec = NULL;
    st = make_spec(task, effect, inst, time, src, &spec);
    if (st != kOfxStatOK) return st;

    OfxRectI expected = {src->bounds.x1 * scale, src->bounds.y1 * scale, src->bounds.x2 * scale,
                         src->bounds.y2 * scale};
    uint32_t ow = 0, oh = 0;
    DaviStatus ds = davi_output_size(spec, (uint32_t)(src->bounds.x2 - src->bounds.x1),
                                     (uint32_t)(src->bounds.y2 - src->bounds.y1), &ow, &oh);
    if (ds != DAVI_STATUS_OK || ow != (uint32_t)(expected.x2 - expected.x1) ||
        oh != (uint32_t)(expected.y2 - expected.y1)) {
        post(effect, kOfxMessageError, "%s: the model's operator does not fit a %dx%d frame (%s).",
             TASKS[task].label, src->bounds.x2 - src->bounds.x1,
             src->bounds.y2 - src->bounds.y1,
             ds != DAVI_STATUS_OK ? davi_status_string(ds) : "wrong output size");
        davi_spec_free(spec);
        return kOfxStatFailed;
    }

    DaviRestoreOptions opt;
    davi_restore_options_init(&opt, sizeof opt);
    int seed = 0, tile = 0, overlap = 0, model_h = 1;
    double h = 0.1;
    param_int(inst->seed, time, &seed);
    param_int(inst->tile, time, &tile);
    param_int(inst->overlap, time, &overlap);
    param_int(inst->model_variation, time, &model_h);
    param_double(inst->variation, time, &h);
    opt.seed = (uint64_t)(seed < 0 ? 0 : seed);
    if (tile > 0) tile = tile < 16 ? 16 : tile - tile % 4;
    opt.tile = (uint32_t)(tile < 0 ? 0 : tile);
    opt.overlap = (uint32_t)(overlap < 0 ? 0 : overlap);
    opt.perturb_h = model_h ? NAN : (h < 0 || !isfinite(h) ? 0.0 : h);
    Progress progress = {effect, 0, 0};
    opt.progress = on_progress;
    opt.user_data = &progress;

    /* Straight into the output image when it holds exactly the frame and the whole frame is
     * asked for; otherwise into a scratch frame, copied into the render window. */
    int direct = rect_contains(expected, dst->bounds) && rect_contains(dst->bounds, expected) &&
                 rect_contains(window, expected);
    Image scratch = *dst;
    OfxImageMemoryHandle mem = NULL;
    if (!direct) {
        size_t row = (size_t)(expected.x2 - expected.x1) * dst->channels * dst->sample_bytes;
        size_t bytes = row * (size_t)(expected.y2 - expected.y1);
        void *ptr = NULL;
        if (g_effect->imageMemoryAlloc(effect, bytes, &mem) != kOfxStatOK ||
            g_effect->imageMemoryLock(mem, &ptr) != kOfxStatOK || !ptr) {
            if (mem) g_effect->imageMemoryFree(mem);
            davi_spec_free(spec);
            post(effect, kOfxMessageError, "%s: out of memory (%zu bytes of scratch).",
                 TASKS[task].label, bytes);
            return kOfxStatErrMemory;
        }
        scratch.data = ptr;
        scratch.bounds = expected;
        scratch.row_bytes = (ptrdiff_t)row;
    }

    DaviImage in = davi_view(src, src->bounds);
    DaviImage out = davi_view(&scratch, expected);
    if (g_progress)
        progress.started = g_progress->progressStart(effect, TASKS[task].label) == kOfxStatOK;
    ds = davi_restore(inst->ctx, &in, &out, spec, &opt);
    if (progress.started) g_progress->progressEnd(effect);
    davi_spec_free(spec);

    if (ds == DAVI_STATUS_OK && !direct) copy_window(&scratch, dst, window, 1);
    if (mem) {
        g_effect->imageMemoryUnlock(mem);
        g_effect->imageMemoryFree(mem);
    }
    if (ds == DAVI_STATUS_CANCELLED) return kOfxStatFailed; /* the host asked: no message */
    if (ds != DAVI_STATUS_OK) {
        char err[1024] = "";
        davi_context_last_error(inst->ctx, err, sizeof err, NULL);
        post(effect, kOfxMessageError, "%s failed: %s (%s)", TASKS[task].label, err,
             davi_status_string(ds));
        return ds == DAVI_STATUS_OUT_OF_MEMORY ? kOfxStatErrMemory : kOfxStatFailed;
    }
    return kOfxStatOK;
}

static OfxStatus render(int task, OfxImageEffectHandle effect, OfxPropertySetHandle in_args) {
    Instance *inst = instance_of(effect);
    if (!inst) return kOfxStatErrBadHandle;
    OfxTime time = get_double(in_args, kOfxPropTime, 0, 0.0);
    OfxPropertySetHandle src_h = NULL, dst_h = NULL;
    if (g_effect->clipGetImage(inst->output, time, NULL, &dst_h) != kOfxStatOK || !dst_h) {
        post(effect, kOfxMessageError, "%s: the host has no output image at frame %g.",
             TASKS[task].label, time);
        return kOfxStatFailed;
    }
    if (g_effect->clipGetImage(inst->source, time, NULL, &src_h) != kOfxStatOK || !src_h) {
        g_effect->clipReleaseImage(dst_h);
        post(effect, kOfxMessageError, "%s: no source image at frame %g (is Source connected?).",
             TASKS[task].label, time);
        return kOfxStatFailed;
    }
    Image src, dst;
    OfxStatus st = kOfxStatFailed;
    if (image_info(effect, src_h, &src, "source") && image_info(effect, dst_h, &dst, "output")) {
        pthread_mutex_lock(&inst->lock);
        st = restore_frame(task, effect, inst, in_args, &src, &dst);
        pthread_mutex_unlock(&inst->lock);
    }
    g_effect->clipReleaseImage(src_h);
    g_effect->clipReleaseImage(dst_h);
    return st;
}

/* ---------------------------------------------------------------------------------------
 * Entry points
 * ------------------------------------------------------------------------------------- */

static OfxStatus on_load(void) {
    if (!g_host) return kOfxStatErrMissingHostFeature;
    g_prop = fetch(kOfxPropertySuite, 1);
    g_effect = fetch(kOfxImageEffectSuite, 1);
    g_param = fetch(kOfxParameterSuite, 1);
    g_message = fetch(kOfxMessageSuite, 1);
    g_message2 = fetch(kOfxMessageSuite, 2);
    g_progress = fetch(kOfxProgressSuite, 1);
    if (!g_prop || !g_effect || !g_param) {
        if (g_message)
            g_message->message(NULL, kOfxMessageError, "davi.load",
                               "DAVI: the host lacks the property, image effect or parameter "
                               "suite (version 1).");
        return kOfxStatErrMissingHostFeature;
    }
    g_host_multires = get_int(g_host->host, kOfxImageEffectPropSupportsMultiResolution, 0, 0);
    return kOfxStatOK;
}

static OfxStatus dispatch(int task, const char *action, const void *handle,
                          OfxPropertySetHandle in_args, OfxPropertySetHandle out_args) {
    if (!action) return kOfxStatErrBadHandle;
    if (strcmp(action, kOfxActionLoad) == 0) return on_load();
    if (strcmp(action, kOfxActionUnload) == 0) return kOfxStatOK;
    if (!g_prop || !g_effect || !g_param) return kOfxStatErrMissingHostFeature;
    OfxImageEffectHandle effect = (OfxImageEffectHandle)handle;
    if (!effect) return kOfxStatErrBadHandle;
    if (strcmp(action, kOfxActionDescribe) == 0) return describe(task, effect);
    if (strcmp(action, kOfxImageEffectActionDescribeInContext) == 0)
        return describe_in_context(task, effect, in_args);
    if (strcmp(action, kOfxActionCreateInstance) == 0) return create_instance(task, effect);
    if (strcmp(action, kOfxActionDestroyInstance) == 0) return destroy_instance(effect);
    if (strcmp(action, kOfxImageEffectActionRender) == 0) return render(task, effect, in_args);
    if (strcmp(action, kOfxImageEffectActionGetRegionOfDefinition) == 0)
        return region_of_definition(task, effect, in_args, out_args);
    if (strcmp(action, kOfxImageEffectActionGetRegionsOfInterest) == 0)
        return regions_of_interest(effect, in_args, out_args);
    if (strcmp(action, kOfxImageEffectActionGetClipPreferences) == 0)
        return clip_preferences(effect, out_args);
    if (strcmp(action, kOfxImageEffectActionIsIdentity) == 0)
        return is_identity(task, effect, in_args, out_args);
    if (strcmp(action, kOfxActionInstanceChanged) == 0) return instance_changed(effect, in_args);
    return kOfxStatReplyDefault;
}

static void set_host(OfxHost *host) { g_host = host; }

#define ENTRY(n)                                                                            \
    static OfxStatus entry_##n(const char *action, const void *handle, OfxPropertySetHandle in, \
                               OfxPropertySetHandle out) {                                  \
        return dispatch(n, action, handle, in, out);                                        \
    }
ENTRY(0)
ENTRY(1)
ENTRY(2)
ENTRY(3)
ENTRY(4)

static OfxPlugin PLUGINS[TASK_COUNT] = {
#define PLUGIN(n)                                                                              \
    {kOfxImageEffectPluginApi, 1, NULL, DAVI_VERSION_MAJOR, DAVI_VERSION_MINOR, set_host,     \
     entry_##n}
    PLUGIN(0), PLUGIN(1), PLUGIN(2), PLUGIN(3), PLUGIN(4),
#undef PLUGIN
};

DAVI_OFX_EXPORT int OfxGetNumberOfPlugins(void) { return TASK_COUNT; }

DAVI_OFX_EXPORT OfxPlugin *OfxGetPlugin(int nth) {
    if (nth < 0 || nth >= TASK_COUNT) return NULL;
    PLUGINS[nth].pluginIdentifier = TASKS[nth].id;
    return &PLUGINS[nth];
}

/* OpenFX 1.5 bootstrapping: a host may hand over its OfxHost before asking for plug-ins. */
DAVI_OFX_EXPORT OfxStatus OfxSetHost(const OfxHost *host) {
    if (!host) return kOfxStatFailed;
    g_host = (OfxHost *)host;
    return kOfxStatOK;
}
