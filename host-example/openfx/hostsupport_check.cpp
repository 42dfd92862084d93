// hostsupport_check: DAVI.ofx loaded by the OpenFX reference host library.
//
// A cross-check of the bundle against an implementation of the OFX host side that is not
// ours: HostSupport (BSD-3, from the openfx-sys 0.1.0 sources fetch-sdk.sh unpacks) with its
// example host classes (hostDemo*: a PAL 720x576 RGBA 8-bit clip, API 1.4, tiles, no
// multi-resolution). Neither is part of this repository; sdk/capi/tests/openfx.rs compiles
// them with this file in its opt-in test (cargo test -p davi-capi --test openfx -- --ignored).
//
// What it checks: HostSupport's scan of OFX_PLUGIN_PATH finds the DAVI effects; the denoiser
// goes through create instance, clip preferences, begin render, regions of interest, a
// full-frame render, end render and destruction, and its output keeps alpha and the picture.
// Prints "ok …" / "FAIL …" lines; exits 1 if anything failed.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

// HostSupport's headers depend on each other in this order.
#include "ofxCore.h"
#include "ofxImageEffect.h"
#include "ofxPixels.h"
#include "ofxhBinary.h"
#include "ofxhPropertySuite.h"
#include "ofxhClip.h"
#include "ofxhParam.h"
#include "ofxhMemory.h"
#include "ofxhImageEffect.h"
#include "ofxhPluginAPICache.h"
#include "ofxhPluginCache.h"
#include "ofxhHost.h"
#include "ofxhImageEffectAPI.h"

#include "hostDemoHostDescriptor.h"
#include "hostDemoEffectInstance.h"
#include "hostDemoClipInstance.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string &what) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    std::fflush(stdout);
    if (!ok) failures++;
}

std::string status(OfxStatus st) { return " (status " + std::to_string(st) + ")"; }

}  // namespace

int main() {
    OFX::Host::PluginCache *cache = OFX::Host::PluginCache::getPluginCache();
    cache->setCacheVersion("daviHostSupportCheckV1");
    MyHost::Host host;
    OFX::Host::ImageEffect::PluginCache effects(host);
    effects.registerInCache(*cache);
    cache->scanPluginFiles(); // OFX_PLUGIN_PATH, no cache file read or written

    const char *ids[] = {"org.libdavi.davi.denoise", "org.libdavi.davi.deblur",
                         "org.libdavi.davi.inpaint", "org.libdavi.davi.colorize"};
    for (const char *id : ids)
        expect(effects.getPluginById(id) != nullptr, std::string("HostSupport found ") + id);

    OFX::Host::ImageEffect::ImageEffectPlugin *plugin =
        effects.getPluginById("org.libdavi.davi.denoise");
    if (plugin) {
        std::unique_ptr<OFX::Host::ImageEffect::Instance> instance(
            plugin->createInstance(kOfxImageEffectContextFilter, nullptr));
        expect(instance != nullptr, "denoise: instance in the Filter context");
        if (instance) {
            OfxStatus st = instance->createInstanceAction();
            expect(st == kOfxStatOK || st == kOfxStatReplyDefault, "denoise: createInstance" + status(st));
            expect(instance->getClipPreferences(), "denoise: clip preferences");
            OfxPointD scale = {1.0, 1.0};
            OfxRectI window = {0, 0, 720, 576};
            OfxRectD roi = {0, 0, 768, 576};
            st = instance->beginRenderAction(0, 0, 1, false, scale, true, false);
            expect(st == kOfxStatOK || st == kOfxStatReplyDefault, "denoise: begin render" + status(st));
            std::map<OFX::Host::ImageEffect::ClipInstance *, OfxRectD> rois;
            st = instance->getRegionOfInterestAction(0, scale, roi, rois);
            expect(st == kOfxStatOK || st == kOfxStatReplyDefault, "denoise: regions of interest" + status(st));
            st = instance->renderAction(0, kOfxImageFieldNone, window, scale, true, false, false);
            expect(st == kOfxStatOK, "denoise: render 720x576 RGBA 8-bit" + status(st));

            auto *out = dynamic_cast<MyHost::MyClipInstance *>(instance->getClip("Output"));
            MyHost::MyImage *image = out ? out->getOutputImage() : nullptr;
            if (st == kOfxStatOK && image) {
                // The source at frame 0 is black with light digits, alpha 255.
                int alpha_ok = 1;
                double sum = 0;
                for (int y = 0; y < 576; y++)
                    for (int x = 0; x < 720; x++) {
                        OfxRGBAColourB *p = image->pixel(x, y);
                        alpha_ok &= p && p->a == 255;
                        if (p) sum += p->r + p->g + p->b;
                    }
                double mean = sum / (720.0 * 576.0 * 3.0);
                expect(alpha_ok, "denoise: alpha untouched");
                expect(mean < 40.0, "denoise: the dark frame stays dark (mean " + std::to_string(mean) + ")");
            }
            st = instance->endRenderAction(0, 0, 1, false, scale, true, false);
            expect(st == kOfxStatOK || st == kOfxStatReplyDefault, "denoise: end render" + status(st));
        }
    }
    OFX::Host::PluginCache::clearPluginCache();
    std::printf("hostsupport: %d failed\n", failures);
    return failures ? 1 : 0;
}
