/*
 * davi-gimp: a GIMP 2.10 filter plug-in over libdavi (one-step diffusion-prior restoration).
 *
 * Registers one PDB procedure per task, each with a menu entry under
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

/* Values kept between runs (gimp_set_data), one block per procedure. */
typedef struct {
    gint32 seed;
    gdouble variation;  /* perturbation h; < 0: the model's */
    gint32 tile;
    gint32 new_image;
} Values;

static const Values DEFAULTS = {0, -1.0, 0, TRUE};

static void query(void);
static void run(const gchar *name, gint nparams, const GimpParam *param, gint *nreturn_vals,
                GimpParam **return_vals);

const GimpPlugInInfo PLUG_IN_INFO = {NULL, NULL, query, run};

MAIN()

static const Task *find_task(const gchar *name)
{
    for (size_t i = 0; i < N_TASKS; i++)
        if (strcmp(TASKS[i].proc, name) == 0) return &TASKS[i];
    return NULL;
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
    static const GimpParamDef sr_return[] = {
        {GIMP_PDB_IMAGE, "new-image", "The 4x image (the input image when scaled in place)"},
    };
    const gint n_common = (gint)(sizeof common / sizeof common[0]);

    for (size_t i = 0; i < N_TASKS; i++) {
        const Task *t = &TASKS[i];
        GimpParamDef params[8];
        gint n = n_common;
        memcpy(params, common, sizeof common);
        if (t->extra == EXTRA_NEW_IMAGE) params[n++] = new_image;
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
                               GIMP_PLUGIN, n, t->extra == EXTRA_NEW_IMAGE ? 1 : 0, params,
                               t->extra == EXTRA_NEW_IMAGE ? sr_return : NULL);
        g_free(help);
        gimp_plugin_menu_register(t->proc, MENU_PATH);
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

static gboolean dialog(const Task *t, Values *v)
{
    gimp_ui_init(PLUG_IN_BINARY, FALSE);
    gchar *title = g_strdup_printf("DAVI Restore: %s", t->task);
    GtkWidget *dlg = gimp_dialog_new(title, PLUG_IN_BINARY, NULL, 0, gimp_standard_help_func,
                                     t->proc, "_Cancel", GTK_RESPONSE_CANCEL, "_OK",
                                     GTK_RESPONSE_OK, NULL);
    g_free(title);
    GtkWidget *table = gtk_table_new(4, 2, FALSE);
    gtk_table_set_row_spacings(GTK_TABLE(table), 6);
    gtk_table_set_col_spacings(GTK_TABLE(table), 6);
    gtk_container_set_border_width(GTK_CONTAINER(table), 12);
    gtk_box_pack_start(GTK_BOX(gtk_dialog_get_content_area(GTK_DIALOG(dlg))), table, TRUE, TRUE, 0);
    int row = 0;
    GtkWidget *seed = spin_row(table, row++, "_Seed:", 0, G_MAXINT32, 1, 0, v->seed);
    GtkWidget *variation = spin_row(table, row++, "_Variation (-1 = model's):", -1, 1, 0.01, 2,
                                    v->variation);
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
    DaviContext *ctx = NULL;
    char why[1024] = "";
    DaviStatus s = davi_context_new(&co, &ctx, why, sizeof why);
    if (s != DAVI_STATUS_OK) {
        gchar *text = g_strdup_printf(
            "no %s model could be loaded: %s: %s (host-example/gimp/install.sh puts the default "
            "models beside the plug-in; DAVI_MODEL_DIR names another folder)",
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
        ro.progress = on_progress;
        DaviImage din = describe(&f, w, h, in), dout = describe(&f, ow, oh, out);
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

static void run(const gchar *name, gint nparams, const GimpParam *param, gint *nreturn_vals,
                GimpParam **return_vals)
{
    static GimpParam values[2];
    *nreturn_vals = 1;
    *return_vals = values;
    values[0].type = GIMP_PDB_STATUS;
    values[0].data.d_status = GIMP_PDB_SUCCESS;

    gegl_init(NULL, NULL);
    const Task *t = find_task(name);
    if (!t || nparams < 3) {
        values[0].data.d_status = GIMP_PDB_CALLING_ERROR;
        return;
    }
    const GimpRunMode mode = (GimpRunMode)param[0].data.d_int32;
    const gint32 image = param[1].data.d_image;
    const gint32 drawable = param[2].data.d_drawable;
    Values v = DEFAULTS;
    gimp_get_data(t->proc, &v);

    switch (mode) {
    case GIMP_RUN_INTERACTIVE:
        if (!dialog(t, &v)) {
            values[0].data.d_status = GIMP_PDB_CANCEL;
            return;
        }
        break;
    case GIMP_RUN_NONINTERACTIVE: {
        const gint want = 6 + (t->extra != EXTRA_NONE ? 1 : 0);
        if (nparams != want) {
            values[0].data.d_status = GIMP_PDB_CALLING_ERROR;
            return;
        }
        v.seed = param[3].data.d_int32;
        v.variation = param[4].data.d_float;
        v.tile = param[5].data.d_int32;
        if (t->extra == EXTRA_NEW_IMAGE) v.new_image = param[6].data.d_int32 != 0;
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
        *nreturn_vals = 2;
        values[0].data.d_status = GIMP_PDB_EXECUTION_ERROR;
        values[1].type = GIMP_PDB_STRING;
        values[1].data.d_string = error_message;
    }
}
