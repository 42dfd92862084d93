/*
 * davi-gimp: a GIMP 2.10 filter plug-in over libdavi (one-step diffusion-prior restoration).
 *
 * Registers two PDB procedures per task. The first has a menu entry under
 * Filters → Enhance → DAVI Restore:
 *
 *   plug-in-davi-deblur    plug-in-davi-denoise    plug-in-davi-colorize
 *   plug-in-davi-inpaint   (fills the selection's bounding box; the selection shapes the result)
 *   plug-in-davi-sr4       (4x super-resolution into a new image, or scales the image in place)
 *
 * Common parameters after run-mode, image, drawable:
 *   seed         INT32  seed of DAVI's bridge perturbation (equal seeds give equal pixels)
 *   variation    FLOAT  DAVI's perturbation h: 0 = one deterministic result, larger values
 *                       draw different plausible results per seed; negative = the model's
 *   tile         INT32  tile edge in pixels; 0 = the model's own tile
 * plug-in-davi-sr4 adds  new-image INT32 (TRUE: open the result as a new image and return
 *                        it; FALSE: scale the image 4x and restore the layer in place).
 *
 * The second, plug-in-davi-<task>-ex (no menu entry), takes the same parameters followed by
 *   threads      INT32  libtorch's intra-op CPU threads, 0 to 1024; 0 = libtorch's default
 *   device       STRING "auto" (first CUDA GPU, else the CPU), "cpu", "cuda" or "cuda:N"
 *   precision    STRING "fp32", "bf16" (CUDA, CPUs with bf16 instructions) or "fp16" (CUDA)
 *   ensemble     INT32  self-ensemble: 1 (or 0) = off; 2, 4 or 8 orientations, averaged, at
 *                       that many times the time
 * (libdavi's DaviContextOptions.threads/device/precision and DaviRestoreOptions.ensemble).
 * The parameter lists of the first procedures never change, so existing scripts keep
 * working; called non-interactively they use threads 0, device "auto", precision "fp32",
 * ensemble 1. A value outside those ranges and lists is a PDB calling error naming it; a
 * device or precision libdavi cannot use here (no CUDA, fp16 on a CPU) an execution error
 * with libdavi's message. Interactively (and for RUN-WITH-LAST-VALS) both procedures of a
 * task take the dialog's values, kept per task with gimp_set_data.
 * Each model undoes the degradation it was trained for (docs/models.md: blur width, noise
 * level); its one network evaluation takes no strength setting.
 *
 * The drawable is read and written through GEGL in its own precision's family: 8-bit and
 * 16-bit integer images as u8 / u16 samples, every other precision as float, always in the
 * perceptual (gamma) encoding the models were trained on; babl converts linear images. Alpha
 * is carried through untouched. The result goes through the shadow buffer, so the selection
 * masks it and the whole filter is one undo step. Progress is GIMP's progress bar; when GIMP
 * cancels the filter nothing is written. Any failure is a PDB execution error carrying
 * libdavi's own message.
 *
 * Models: the installed default model of the task (davi_context_new with `task`), found in
 * $DAVI_MODEL_DIR or in models/ beside this executable (where host-example/gimp/install.sh
 * puts them). libdavi.so.0 is found through the rpath $ORIGIN.
 *
 * Build: see host-example/gimp/install.sh (cc ... $(pkg-config --cflags --libs gimpui-2.0
 * gegl-0.4) -ldavi -Wl,-rpath,'$ORIGIN').
 */
#include "davi.h"

#include <libgimp/gimp.h>
#include <libgimp/gimpui.h>

#include <stdio.h>
#include <string.h>

#define PLUG_IN_BINARY "davi-gimp"
#define MENU_PATH "<Image>/Filters/Enhance/DAVI Restore"
#define EX_SUFFIX "-ex"   /* plug-in-davi-<task>-ex: the parameters plus the knobs below */
#define MAX_THREADS 1024  /* DaviContextOptions.threads */

typedef enum { EXTRA_NONE, EXTRA_NEW_IMAGE } Extra;

typedef struct {
    const char *proc;   /* PDB name */
    const char *task;   /* libdavi task name */
    const char *label;  /* menu label */
    const char *blurb;
    Extra extra;
} Task;

static const Task TASKS[] = {
    {"plug-in-davi-deblur", "deblur", "_Deblur…",
     "Remove Gaussian blur with a one-step DAVI generator", EXTRA_NONE},
    {"plug-in-davi-denoise", "denoise", "De_noise…",
     "Remove Gaussian noise with a one-step DAVI generator", EXTRA_NONE},
    {"plug-in-davi-sr4", "sr4", "_Super-resolution 4×…",
     "Enlarge 4x with a one-step DAVI super-resolution generator", EXTRA_NEW_IMAGE},
    {"plug-in-davi-inpaint", "inpaint", "_Inpaint selection…",
     "Fill the selected region with a one-step DAVI inpainting generator", EXTRA_NONE},
    {"plug-in-davi-colorize", "colorize", "_Colorize…",
     "Colorize a grayscale picture with a one-step DAVI generator", EXTRA_NONE},
};
#define N_TASKS (sizeof TASKS / sizeof TASKS[0])

/* DaviContextOptions.device values the dialog offers, in combo order ("cuda:N" is for
 * scripts); labels as in the OpenFX plug-in. */
static const char *const DEVICES[] = {"auto", "cpu", "cuda"};
static const char *const DEVICE_LABELS[] = {"Auto (CUDA if present, else CPU)", "CPU", "CUDA"};
#define DEVICE_COUNT 3

/* DaviContextOptions.precision values, in combo order. */
static const char *const PRECISIONS[] = {"fp32", "bf16", "fp16"};
static const char *const PRECISION_LABELS[] = {
    "Full (fp32)", "bfloat16 (CUDA, CPUs with bf16 instructions)", "float16 (CUDA only)"};
#define PRECISION_COUNT 3

/* DaviRestoreOptions.ensemble values the dialog offers (scripts may pass 0 for 1). */
static const gint32 ENSEMBLES[] = {1, 2, 4, 8};
static const char *const ENSEMBLE_LABELS[] = {"1 (off)", "2 (2× the time)", "4 (4× the time)",
                                              "8 (8× the time)"};
#define ENSEMBLE_COUNT 4

/* Values kept between runs (gimp_set_data under the menu procedure's name, one block per
 * task, shared by its -ex procedure). The block is read only when its size is this struct's
 * (load_values): a layout change must change the size, or the key. */
typedef struct {
    gint32 seed;
    gdouble variation;  /* perturbation h; < 0: the model's */
    gint32 tile;
    gint32 new_image;
    gint32 threads;      /* 0 = libtorch's default */
    gchar device[16];    /* "auto", "cpu", "cuda", "cuda:N" */
    gchar precision[8];  /* "fp32", "bf16", "fp16" */
    gint32 ensemble;     /* 1, 2, 4 or 8 */
} Values;

/* The block earlier versions of the plug-in stored: its values are kept on upgrade. */
typedef struct {
    gint32 seed;
    gdouble variation;
    gint32 tile;
    gint32 new_image;
} ValuesV1;

static const Values DEFAULTS = {0, -1.0, 0, TRUE, 0, "auto", "fp32", 1};

static void query(void);
static void run(const gchar *name, gint nparams, const GimpParam *param, gint *nreturn_vals,
                GimpParam **return_vals);

const GimpPlugInInfo PLUG_IN_INFO = {NULL, NULL, query, run};

MAIN()

/* The task of PDB procedure `name`; *ex tells whether it is the task's -ex procedure. */
static const Task *find_task(const gchar *name, gboolean *ex)
{
    for (size_t i = 0; i < N_TASKS; i++) {
        const size_t n = strlen(TASKS[i].proc);
        if (strncmp(TASKS[i].proc, name, n) != 0) continue;
        if (name[n] == '\0' || strcmp(name + n, EX_SUFFIX) == 0) {
            *ex = name[n] != '\0';
            return &TASKS[i];
        }
    }
    return NULL;
}

/* --- the knobs: checks of -ex parameters and of stored values ---------------------------- */

/* The exact device names libdavi takes: "auto", "cpu", "cuda", "cuda:N" (1 to 4 digits). */
static gboolean device_ok(const char *d)
{
    if (strcmp(d, "auto") == 0 || strcmp(d, "cpu") == 0 || strcmp(d, "cuda") == 0) return TRUE;
    if (strncmp(d, "cuda:", 5) != 0) return FALSE;
    const size_t n = strlen(d + 5);
    if (n < 1 || n > 4) return FALSE;
    for (size_t i = 0; i < n; i++)
        if (!g_ascii_isdigit(d[5 + i])) return FALSE;
    return TRUE;
}

static int index_of(const char *const *names, int count, const char *name)
{
    for (int i = 0; i < count; i++)
        if (strcmp(names[i], name) == 0) return i;
    return -1;
}

/* Checks the knobs of an -ex call and sets them in `v`; NULL strings mean the defaults (as
 * in libdavi), ensemble 0 means 1. Returns NULL, or the reason to refuse them (g_free it),
 * leaving `v` as it was. */
static gchar *set_knobs(Values *v, gint32 threads, const gchar *device, const gchar *precision,
                        gint32 ensemble)
{
    if (!device) device = DEFAULTS.device;
    if (!precision) precision = DEFAULTS.precision;
    if (threads < 0 || threads > MAX_THREADS)
        return g_strdup_printf("threads is %d: use 0 (libtorch's default) to %d", threads,
                               MAX_THREADS);
    if (!device_ok(device))
        return g_strdup_printf("device \"%s\" is not one of \"auto\", \"cpu\", \"cuda\", "
                               "\"cuda:N\" (lower case, no spaces)",
                               device);
    if (index_of(PRECISIONS, PRECISION_COUNT, precision) < 0)
        return g_strdup_printf("precision \"%s\" is not one of \"fp32\", \"bf16\", \"fp16\" "
                               "(lower case, no spaces)",
                               precision);
    if (!(ensemble == 0 || ensemble == 1 || ensemble == 2 || ensemble == 4 || ensemble == 8))
        return g_strdup_printf("ensemble is %d: use 1 (off), 2, 4 or 8", ensemble);
    v->threads = threads;
    g_strlcpy(v->device, device, sizeof v->device);
    g_strlcpy(v->precision, precision, sizeof v->precision);
    v->ensemble = ensemble == 0 ? 1 : ensemble;
    return NULL;
}

/* The task's stored values: this version's block, or an earlier version's (the knobs it
 * lacks take their defaults), or the defaults. Stored knobs out of range take their
 * defaults. */
static Values load_values(const Task *t)
{
    Values v = DEFAULTS;
    const gint size = gimp_get_data_size(t->proc);
    if (size == (gint)sizeof(Values)) {
        Values stored;
        gimp_get_data(t->proc, &stored);
        stored.device[sizeof stored.device - 1] = '\0';
        stored.precision[sizeof stored.precision - 1] = '\0';
        v = stored;
        v.threads = DEFAULTS.threads;
        memcpy(v.device, DEFAULTS.device, sizeof v.device);
        memcpy(v.precision, DEFAULTS.precision, sizeof v.precision);
        v.ensemble = DEFAULTS.ensemble;
        g_free(set_knobs(&v, stored.threads, stored.device, stored.precision, stored.ensemble));
    } else if (size == (gint)sizeof(ValuesV1)) {
        ValuesV1 old;
        gimp_get_data(t->proc, &old);
        v.seed = old.seed;
        v.variation = old.variation;
        v.tile = old.tile;
        v.new_image = old.new_image;
    }
    return v;
}

static void query(void)
{
    static const GimpParamDef common[] = {
        {GIMP_PDB_INT32, "run-mode", "The run mode { RUN-INTERACTIVE (0), RUN-NONINTERACTIVE (1) }"},
        {GIMP_PDB_IMAGE, "image", "Input image"},
        {GIMP_PDB_DRAWABLE, "drawable", "Input drawable"},
        {GIMP_PDB_INT32, "seed", "Seed of the bridge perturbation noise"},
        {GIMP_PDB_FLOAT, "variation",
         "DAVI's perturbation h: 0 = deterministic, larger = more varied results; negative = "
         "the model's"},
        {GIMP_PDB_INT32, "tile", "Tile edge in pixels; 0 = the model's tile"},
    };
    static const GimpParamDef new_image = {
        GIMP_PDB_INT32, "new-image",
        "TRUE: open the 4x result as a new image; FALSE: scale the image 4x in place"};
    /* The -ex procedures' parameters after the menu procedure's. */
    static const GimpParamDef knobs[] = {
        {GIMP_PDB_INT32, "threads",
         "libtorch's intra-op CPU threads, 0 to 1024; 0 = libtorch's default"},
        {GIMP_PDB_STRING, "device",
         "\"auto\" (first CUDA GPU, else the CPU), \"cpu\", \"cuda\" or \"cuda:N\""},
        {GIMP_PDB_STRING, "precision",
         "\"fp32\", \"bf16\" (CUDA, CPUs with bf16 instructions) or \"fp16\" (CUDA only)"},
        {GIMP_PDB_INT32, "ensemble",
         "Self-ensemble: 1 = off; 2, 4 or 8 = restore in that many orientations and average, "
         "at that many times the time"},
    };
    static const GimpParamDef sr_return[] = {
        {GIMP_PDB_IMAGE, "new-image", "The 4x image (the input image when scaled in place)"},
    };
    const gint n_common = (gint)(sizeof common / sizeof common[0]);
    const gint n_knobs = (gint)(sizeof knobs / sizeof knobs[0]);

    for (size_t i = 0; i < N_TASKS; i++) {
        const Task *t = &TASKS[i];
        GimpParamDef params[12];
        gint n = n_common;
        memcpy(params, common, sizeof common);
        if (t->extra == EXTRA_NEW_IMAGE) params[n++] = new_image;
        memcpy(params + n, knobs, sizeof knobs);
        const gint n_returns = t->extra == EXTRA_NEW_IMAGE ? 1 : 0;
        gchar *help = g_strdup_printf(
            "%s. One network evaluation of a DAVI generator (libdavi %s), run in overlapping "
            "tiles on the CPU or a CUDA GPU. Works on RGB and grayscale drawables at 8-bit, "
            "16-bit and floating-point precision; alpha is kept. The selection masks the "
            "result%s.",
            t->blurb, davi_version(),
            strcmp(t->task, "inpaint") == 0 ? " and its bounding box is the region filled" : "");
        gimp_install_procedure(t->proc, t->blurb, help, "libdavi developers",
                               "libdavi developers", "2026", t->label,
                               "RGB*, GRAY*",
                               GIMP_PLUGIN, n, n_returns, params,
                               t->extra == EXTRA_NEW_IMAGE ? sr_return : NULL);
        gimp_plugin_menu_register(t->proc, MENU_PATH);

        /* The same filter with the knobs as parameters, for scripts: no menu entry. */
        gchar *ex = g_strconcat(t->proc, EX_SUFFIX, NULL);
        gchar *ex_blurb = g_strdup_printf("%s, with threads, device, precision and ensemble",
                                          t->blurb);
        gchar *ex_help = g_strdup_printf(
            "%s with four more parameters: CPU threads, device, numeric precision and "
            "self-ensemble size (%s uses 0, \"auto\", \"fp32\" and 1). %s",
            t->proc, t->proc, help);
        gimp_install_procedure(ex, ex_blurb, ex_help, "libdavi developers", "libdavi developers",
                               "2026", NULL, "RGB*, GRAY*", GIMP_PLUGIN, n + n_knobs, n_returns,
                               params, t->extra == EXTRA_NEW_IMAGE ? sr_return : NULL);
        g_free(ex_help);
        g_free(ex_blurb);
        g_free(ex);
        g_free(help);
    }
}

/* --- the dialog (interactive runs) ----------------------------------------------------- */

static GtkWidget *spin_row(GtkWidget *table, int row, const char *label, double lo, double hi,
                           double step, int digits, double value)
{
    GtkWidget *l = gtk_label_new_with_mnemonic(label);
    gtk_misc_set_alignment(GTK_MISC(l), 0.0, 0.5);
    GtkWidget *s = gtk_spin_button_new_with_range(lo, hi, step);
    gtk_spin_button_set_digits(GTK_SPIN_BUTTON(s), (guint)digits);
    gtk_spin_button_set_value(GTK_SPIN_BUTTON(s), value);
    gtk_label_set_mnemonic_widget(GTK_LABEL(l), s);
    gtk_table_attach(GTK_TABLE(table), l, 0, 1, (guint)row, (guint)row + 1, GTK_FILL, GTK_FILL, 0, 0);
    gtk_table_attach(GTK_TABLE(table), s, 1, 2, (guint)row, (guint)row + 1, GTK_FILL, GTK_FILL, 0, 0);
    return s;
}

/* A combo of `labels` (values 0 .. count-1) in `row`, `active` chosen. */
static GtkWidget *combo_row(GtkWidget *table, int row, const char *label,
                            const char *const *labels, int count, int active,
                            const char *tooltip)
{
    GtkWidget *l = gtk_label_new_with_mnemonic(label);
    gtk_misc_set_alignment(GTK_MISC(l), 0.0, 0.5);
    GtkWidget *c = gimp_int_combo_box_new_array(count, (const gchar **)labels);
    gimp_int_combo_box_set_active(GIMP_INT_COMBO_BOX(c), active);
    gimp_help_set_help_data(c, tooltip, NULL);
    gtk_label_set_mnemonic_widget(GTK_LABEL(l), c);
    gtk_table_attach(GTK_TABLE(table), l, 0, 1, (guint)row, (guint)row + 1, GTK_FILL, GTK_FILL, 0, 0);
    gtk_table_attach(GTK_TABLE(table), c, 1, 2, (guint)row, (guint)row + 1, GTK_FILL, GTK_FILL, 0, 0);
    return c;
}

/* The chosen value of a combo_row (0 if none). */
static int combo_value(GtkWidget *combo, int count)
{
    gint i = 0;
    gimp_int_combo_box_get_active(GIMP_INT_COMBO_BOX(combo), &i);
    return i >= 0 && i < count ? i : 0;
}

static gboolean dialog(const Task *t, Values *v)
{
    gimp_ui_init(PLUG_IN_BINARY, FALSE);
    gchar *title = g_strdup_printf("DAVI Restore: %s", t->task);
    GtkWidget *dlg = gimp_dialog_new(title, PLUG_IN_BINARY, NULL, 0, gimp_standard_help_func,
                                     t->proc, "_Cancel", GTK_RESPONSE_CANCEL, "_OK",
                                     GTK_RESPONSE_OK, NULL);
    g_free(title);
    GtkWidget *table = gtk_table_new(8, 2, FALSE);
    gtk_table_set_row_spacings(GTK_TABLE(table), 6);
    gtk_table_set_col_spacings(GTK_TABLE(table), 6);
    gtk_container_set_border_width(GTK_CONTAINER(table), 12);
    gtk_box_pack_start(GTK_BOX(gtk_dialog_get_content_area(GTK_DIALOG(dlg))), table, TRUE, TRUE, 0);
    int row = 0;
    GtkWidget *seed = spin_row(table, row++, "_Seed:", 0, G_MAXINT32, 1, 0, v->seed);
    GtkWidget *variation = spin_row(table, row++, "_Variation (-1 = model's):", -1, 1, 0.01, 2,
                                    v->variation);
    GtkWidget *threads = spin_row(table, row++, "CPU _threads (0 = default):", 0, MAX_THREADS, 1,
                                  0, v->threads);
    gimp_help_set_help_data(threads,
                            "libtorch's intra-op threads on the CPU; 0 lets libtorch choose", NULL);
    const int dev = index_of(DEVICES, DEVICE_COUNT, v->device);
    GtkWidget *device = combo_row(table, row++, "_Device:", DEVICE_LABELS, DEVICE_COUNT,
                                  dev < 0 ? 0 : dev,
                                  "Where the network runs. Auto takes the first CUDA GPU, else "
                                  "the CPU.");
    const int prec = index_of(PRECISIONS, PRECISION_COUNT, v->precision);
    GtkWidget *precision = combo_row(
        table, row++, "_Precision:", PRECISION_LABELS, PRECISION_COUNT, prec < 0 ? 0 : prec,
        "Numeric precision of the network. bfloat16 (CUDA GPUs, CPUs with bf16 instructions) "
        "is faster on GPUs and on CPUs with AMX, with results slightly different from full "
        "precision; float16 needs CUDA.");
    int ens = 0;
    for (int i = 0; i < ENSEMBLE_COUNT; i++)
        if (ENSEMBLES[i] == v->ensemble) ens = i;
    GtkWidget *ensemble = combo_row(
        table, row++, "Self-_ensemble:", ENSEMBLE_LABELS, ENSEMBLE_COUNT, ens,
        "Restore the image in that many orientations (mirrored, turned) and average the "
        "results.");
    GtkWidget *note = gtk_label_new(
        "A self-ensemble of N takes N times as long. At 8 it gains about 0.2 dB for denoise, "
        "deblur and 4× super-resolution; inpaint and colorize get worse.");
    gtk_label_set_line_wrap(GTK_LABEL(note), TRUE);
    gtk_misc_set_alignment(GTK_MISC(note), 0.0, 0.5);
    gimp_label_set_attributes(GTK_LABEL(note), PANGO_ATTR_SCALE, PANGO_SCALE_SMALL, -1);
    gtk_table_attach(GTK_TABLE(table), note, 0, 2, (guint)row, (guint)row + 1, GTK_FILL, GTK_FILL,
                     0, 0);
    row++;
    GtkWidget *toggle = NULL;
    if (t->extra == EXTRA_NEW_IMAGE) {
        toggle = gtk_check_button_new_with_mnemonic("Open the result as a new _image");
        gtk_toggle_button_set_active(GTK_TOGGLE_BUTTON(toggle), v->new_image);
        gtk_table_attach(GTK_TABLE(table), toggle, 0, 2, (guint)row, (guint)row + 1, GTK_FILL,
                         GTK_FILL, 0, 0);
    }
    gtk_widget_show_all(dlg);
    gboolean ok = gimp_dialog_run(GIMP_DIALOG(dlg)) == GTK_RESPONSE_OK;
    if (ok) {
        v->seed = gtk_spin_button_get_value_as_int(GTK_SPIN_BUTTON(seed));
        v->variation = gtk_spin_button_get_value(GTK_SPIN_BUTTON(variation));
        v->threads = gtk_spin_button_get_value_as_int(GTK_SPIN_BUTTON(threads));
        g_strlcpy(v->device, DEVICES[combo_value(device, DEVICE_COUNT)], sizeof v->device);
        g_strlcpy(v->precision, PRECISIONS[combo_value(precision, PRECISION_COUNT)],
                  sizeof v->precision);
        v->ensemble = ENSEMBLES[combo_value(ensemble, ENSEMBLE_COUNT)];
        if (toggle) v->new_image = gtk_toggle_button_get_active(GTK_TOGGLE_BUTTON(toggle));
    }
    gtk_widget_destroy(dlg);
    return ok;
}

/* --- pixels ------------------------------------------------------------------------------ */

typedef struct {
    const Babl *format;
    uint32_t sample_type;  /* DaviSampleType */
    uint32_t layout;       /* DaviChannelLayout */
    size_t bytes_per_pixel;
} PixelFormat;

/* The babl format to read/write `drawable` in, and its libdavi description. */
static PixelFormat pixel_format(gint32 image, gint32 drawable)
{
    PixelFormat f;
    const gboolean rgb = gimp_drawable_is_rgb(drawable);
    const gboolean alpha = gimp_drawable_has_alpha(drawable);
    const char *type;
    size_t sample;
    switch (gimp_image_get_precision(image)) {
    case GIMP_PRECISION_U8_LINEAR:
    case GIMP_PRECISION_U8_GAMMA:
        type = "u8", sample = 1, f.sample_type = DAVI_SAMPLE_TYPE_U8;
        break;
    case GIMP_PRECISION_U16_LINEAR:
    case GIMP_PRECISION_U16_GAMMA:
        type = "u16", sample = 2, f.sample_type = DAVI_SAMPLE_TYPE_U16;
        break;
    default:
        type = "float", sample = 4, f.sample_type = DAVI_SAMPLE_TYPE_F32;
        break;
    }
    const size_t channels = (rgb ? 3 : 1) + (alpha ? 1 : 0);
    f.layout = rgb ? (alpha ? DAVI_CHANNEL_LAYOUT_RGBA : DAVI_CHANNEL_LAYOUT_RGB)
                   : (alpha ? DAVI_CHANNEL_LAYOUT_GRAY_ALPHA : DAVI_CHANNEL_LAYOUT_GRAY);
    char name[32];
    snprintf(name, sizeof name, "%s %s", rgb ? (alpha ? "R'G'B'A" : "R'G'B'") : (alpha ? "Y'A" : "Y'"),
             type);
    f.format = babl_format(name);
    f.bytes_per_pixel = channels * sample;
    return f;
}

static DaviImage describe(const PixelFormat *f, uint32_t w, uint32_t h, void *data)
{
    DaviImage img;
    memset(&img, 0, sizeof img);
    img.struct_size = sizeof img;
    img.width = w;
    img.height = h;
    img.sample_type = f->sample_type;
    img.layout = f->layout;
    img.row_stride = (ptrdiff_t)(w * f->bytes_per_pixel);
    img.data = data;
    return img;
}

static int32_t on_progress(void *user_data, float fraction)
{
    (void)user_data;
    /* The update fails once GIMP has given up on this call (cancelled): stop then. */
    return gimp_progress_update(fraction) ? 0 : 1;
}

/* --- run ----------------------------------------------------------------------------------- */

static gchar *error_message;  /* set by fail(), returned as the PDB error string */

static gboolean fail(const char *what, DaviStatus s, const DaviContext *ctx)
{
    char detail[1024] = "";
    if (ctx) davi_context_last_error(ctx, detail, sizeof detail, NULL);
    g_free(error_message);
    error_message = g_strdup_printf("DAVI Restore: %s: %s%s%s", what, davi_status_string(s),
                                    detail[0] ? ": " : "", detail);
    return FALSE;
}

static gboolean fail_text(const char *text)
{
    g_free(error_message);
    error_message = g_strdup_printf("DAVI Restore: %s", text);
    return FALSE;
}

/* Restores `drawable` of `image` (per task and values). For sr4 with new_image, *out_image is
 * the new image; otherwise the input image. */
static gboolean restore(const Task *t, const Values *v, gint32 image, gint32 drawable,
                        gint32 *out_image, gboolean interactive)
{
    *out_image = image;
    const gboolean is_sr = strcmp(t->task, "sr4") == 0;
    const gboolean is_inpaint = strcmp(t->task, "inpaint") == 0;
    const gboolean is_colorize = strcmp(t->task, "colorize") == 0;
    if (gimp_drawable_is_indexed(drawable))
        return fail_text("indexed images are not supported: use Image → Mode → RGB first");
    if (is_colorize && !gimp_drawable_is_rgb(drawable)) {
        if (gimp_item_is_layer(drawable) && gimp_image_convert_rgb(image))
            ; /* the gray image is now RGB (gray pixels); colorize fills in the colour */
        else
            return fail_text("colorize needs an RGB drawable: use Image → Mode → RGB first");
    }
    gint sel_x = 0, sel_y = 0, sel_w = 0, sel_h = 0;
    if (is_inpaint) {
        gboolean empty = gimp_selection_is_empty(image);
        if (empty || !gimp_drawable_mask_intersect(drawable, &sel_x, &sel_y, &sel_w, &sel_h) ||
            sel_w <= 0 || sel_h <= 0)
            return fail_text("select the region to fill first (its bounding box is inpainted)");
    }

    DaviContextOptions co;
    davi_context_options_init(&co, sizeof co);
    co.task = t->task;
    co.threads = (uint32_t)v->threads;
    co.device = v->device;
    co.precision = v->precision;
    DaviContext *ctx = NULL;
    char why[1024] = "";
    DaviStatus s = davi_context_new(&co, &ctx, why, sizeof why);
    if (s != DAVI_STATUS_OK) {
        gchar *text =
            s == DAVI_STATUS_DEVICE_ERROR
                ? g_strdup_printf("the %s model cannot run on device \"%s\" in precision "
                                  "\"%s\": %s: %s",
                                  t->task, v->device, v->precision, davi_status_string(s), why)
                : g_strdup_printf(
                      "no %s model could be loaded: %s: %s (host-example/gimp/install.sh puts "
                      "the default models beside the plug-in; DAVI_MODEL_DIR names another "
                      "folder)",
                      t->task, davi_status_string(s), why);
        fail_text(text);
        g_free(text);
        return FALSE;
    }
    DaviSpec *spec = NULL;
    gboolean ok = TRUE;
    if ((s = davi_context_spec(ctx, &spec)) != DAVI_STATUS_OK) ok = fail("model operator", s, ctx);
    if (ok && is_inpaint &&
        (s = davi_spec_add_box(spec, (uint32_t)sel_y, (uint32_t)sel_x, (uint32_t)sel_h,
                               (uint32_t)sel_w)) != DAVI_STATUS_OK)
        ok = fail("selection box", s, NULL);
    /* A photograph being edited is not a noisy measurement: inpainting and colorization keep
     * its pixels (its gray) exactly instead of running the models' measurement denoiser over
     * the whole image (docs/models.md, "Measurement denoiser"). Inpainting changes only the
     * selection anyway, and the denoiser would cost the time of a full denoise. */
    if (ok && (is_inpaint || strcmp(t->task, "colorize") == 0) &&
        (s = davi_spec_set_noise_sigma(spec, 0.0)) != DAVI_STATUS_OK)
        ok = fail("noise level", s, NULL);

    const uint32_t w = (uint32_t)gimp_drawable_width(drawable);
    const uint32_t h = (uint32_t)gimp_drawable_height(drawable);
    uint32_t ow = 0, oh = 0;
    if (ok && (s = davi_output_size(spec, w, h, &ow, &oh)) != DAVI_STATUS_OK)
        ok = fail("output size", s, ctx);

    const PixelFormat f = pixel_format(image, drawable);
    guchar *in = NULL, *out = NULL;
    if (ok) {
        in = g_try_malloc((gsize)w * h * f.bytes_per_pixel);
        out = g_try_malloc((gsize)ow * oh * f.bytes_per_pixel);
        if (!in || !out) ok = fail_text("not enough memory for the image buffers");
    }
    if (ok) {
        GeglBuffer *src = gimp_drawable_get_buffer(drawable);
        gegl_buffer_get(src, GEGL_RECTANGLE(0, 0, (gint)w, (gint)h), 1.0, f.format, in,
                        GEGL_AUTO_ROWSTRIDE, GEGL_ABYSS_NONE);
        g_object_unref(src);

        DaviRestoreOptions ro;
        davi_restore_options_init(&ro, sizeof ro);
        ro.seed = (uint64_t)(uint32_t)v->seed;
        ro.tile = (uint32_t)(v->tile > 0 ? v->tile : 0);
        if (v->variation >= 0) ro.perturb_h = v->variation;
        ro.ensemble = (uint32_t)v->ensemble;
        ro.progress = on_progress;
        DaviImage din = describe(&f, w, h, in), dout = describe(&f, ow, oh, out);
        if (v->ensemble > 1)
            gimp_progress_init_printf("DAVI %s (ensemble of %d)", t->task, v->ensemble);
        else
            gimp_progress_init_printf("DAVI %s", t->task);
        s = davi_restore(ctx, &din, &dout, spec, &ro);
        if (s != DAVI_STATUS_OK) ok = fail("restore", s, ctx);
        gimp_progress_update(1.0);
    }

    if (ok && is_sr && v->new_image) {
        const GimpImageBaseType base = gimp_drawable_is_rgb(drawable) ? GIMP_RGB : GIMP_GRAY;
        const GimpImageType ltype =
            base == GIMP_RGB ? (gimp_drawable_has_alpha(drawable) ? GIMP_RGBA_IMAGE : GIMP_RGB_IMAGE)
                             : (gimp_drawable_has_alpha(drawable) ? GIMP_GRAYA_IMAGE : GIMP_GRAY_IMAGE);
        gint32 img = gimp_image_new_with_precision((gint)ow, (gint)oh, base,
                                                   gimp_image_get_precision(image));
        gimp_image_undo_disable(img);
        gint32 layer = gimp_layer_new(img, gimp_item_get_name(drawable), (gint)ow, (gint)oh, ltype,
                                      100.0, GIMP_LAYER_MODE_NORMAL);
        gimp_image_insert_layer(img, layer, 0, 0);
        GeglBuffer *dst = gimp_drawable_get_buffer(layer);
        gegl_buffer_set(dst, GEGL_RECTANGLE(0, 0, (gint)ow, (gint)oh), 0, f.format, out,
                        GEGL_AUTO_ROWSTRIDE);
        g_object_unref(dst);
        gimp_image_undo_enable(img);
        if (interactive) gimp_display_new(img);
        *out_image = img;
    } else if (ok) {
        gimp_image_undo_group_start(image);
        if (is_sr) {
            /* Scale the whole image (other layers by interpolation), then replace this one. */
            const gint iw = gimp_image_width(image), ih = gimp_image_height(image);
            if (!gimp_image_scale(image, iw * (gint)(ow / w), ih * (gint)(oh / h)) ||
                (uint32_t)gimp_drawable_width(drawable) != ow ||
                (uint32_t)gimp_drawable_height(drawable) != oh)
                ok = fail_text("the image could not be scaled to the restored size");
        }
        if (ok) {
            GeglBuffer *dst = gimp_drawable_get_shadow_buffer(drawable);
            gegl_buffer_set(dst, GEGL_RECTANGLE(0, 0, (gint)ow, (gint)oh), 0, f.format, out,
                            GEGL_AUTO_ROWSTRIDE);
            gegl_buffer_flush(dst);
            g_object_unref(dst);
            gimp_drawable_merge_shadow(drawable, TRUE);
            gimp_drawable_update(drawable, 0, 0, (gint)ow, (gint)oh);
        }
        gimp_image_undo_group_end(image);
    }
    g_free(in);
    g_free(out);
    davi_spec_free(spec);
    davi_context_free(ctx);
    return ok;
}

/* Fails the call with `status` and the message fail()/fail_text() set. */
static void return_error(GimpPDBStatusType status, gint *nreturn_vals, GimpParam *values)
{
    *nreturn_vals = 2;
    values[0].data.d_status = status;
    values[1].type = GIMP_PDB_STRING;
    values[1].data.d_string = error_message;
}

static void run(const gchar *name, gint nparams, const GimpParam *param, gint *nreturn_vals,
                GimpParam **return_vals)
{
    static GimpParam values[2];
    *nreturn_vals = 1;
    *return_vals = values;
    values[0].type = GIMP_PDB_STATUS;
    values[0].data.d_status = GIMP_PDB_SUCCESS;

    gegl_init(NULL, NULL);
    gboolean ex = FALSE;
    const Task *t = find_task(name, &ex);
    if (!t || nparams < 3) {
        fail_text(t ? "run-mode, image and drawable are missing" : "unknown procedure");
        return_error(GIMP_PDB_CALLING_ERROR, nreturn_vals, values);
        return;
    }
    const GimpRunMode mode = (GimpRunMode)param[0].data.d_int32;
    const gint32 image = param[1].data.d_image;
    const gint32 drawable = param[2].data.d_drawable;
    Values v = load_values(t);

    switch (mode) {
    case GIMP_RUN_INTERACTIVE:
        if (!dialog(t, &v)) {
            values[0].data.d_status = GIMP_PDB_CANCEL;
            return;
        }
        break;
    case GIMP_RUN_NONINTERACTIVE: {
        /* The menu procedure's parameters, then (-ex) the knobs; the menu procedure leaves
         * the knobs at their defaults whatever the dialog last used. */
        const gint base = 6 + (t->extra != EXTRA_NONE ? 1 : 0);
        const gint want = base + (ex ? 4 : 0);
        if (nparams != want) {
            gchar *text = g_strdup_printf("%s%s takes %d parameters, not %d", t->proc,
                                          ex ? EX_SUFFIX : "", want, nparams);
            fail_text(text);
            g_free(text);
            return_error(GIMP_PDB_CALLING_ERROR, nreturn_vals, values);
            return;
        }
        v = DEFAULTS;
        v.seed = param[3].data.d_int32;
        v.variation = param[4].data.d_float;
        v.tile = param[5].data.d_int32;
        if (t->extra == EXTRA_NEW_IMAGE) v.new_image = param[6].data.d_int32 != 0;
        if (ex) {
            gchar *why = set_knobs(&v, param[base].data.d_int32, param[base + 1].data.d_string,
                                   param[base + 2].data.d_string, param[base + 3].data.d_int32);
            if (why) {
                fail_text(why);
                g_free(why);
                return_error(GIMP_PDB_CALLING_ERROR, nreturn_vals, values);
                return;
            }
        }
        break;
    }
    case GIMP_RUN_WITH_LAST_VALS:
    default:
        break;
    }

    gint32 out_image = image;
    if (restore(t, &v, image, drawable, &out_image, mode == GIMP_RUN_INTERACTIVE)) {
        if (mode == GIMP_RUN_INTERACTIVE) gimp_set_data(t->proc, &v, sizeof v);
        if (mode != GIMP_RUN_NONINTERACTIVE) gimp_displays_flush();
        if (t->extra == EXTRA_NEW_IMAGE) {
            *nreturn_vals = 2;
            values[1].type = GIMP_PDB_IMAGE;
            values[1].data.d_image = out_image;
        }
    } else {
        return_error(GIMP_PDB_EXECUTION_ERROR, nreturn_vals, values);
    }
}
