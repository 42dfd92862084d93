// restore_cpp: restore a binary PPM/PGM photograph with libdavi, from C++17.
//
//   restore_cpp [--task T | --model FILE] [--device D] [--tile N] IN.pnm OUT.pnm
//
// Shows a small RAII wrapper over the C API (namespace `davi` below): handles live in
// std::unique_ptr with custom deleters, failures become exceptions carrying the status and the
// context's message, and the progress callback is any callable, trampolined through
// `user_data` (an exception thrown by it cancels the restore and is rethrown after libdavi has
// returned: exceptions never cross the C boundary). It hands libdavi 32-bit float pixels in a
// bottom-up buffer (negative row stride), as many image libraries store them.
//
// Build:
//   c++ -std=c++17 -Wall -Wextra -Wpedantic -Werror restore.cpp $(pkg-config --cflags --libs davi) -o restore_cpp
#include "davi.h"

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace davi {

class Error : public std::runtime_error {
public:
    Error(DaviStatus status, const std::string& what)
        : std::runtime_error(what + ": " + davi_status_string(status)), status_(status) {}
    DaviStatus status() const noexcept { return status_; }

private:
    DaviStatus status_;
};

struct ContextDeleter {
    void operator()(DaviContext* ctx) const noexcept { davi_context_free(ctx); }
};
struct SpecDeleter {
    void operator()(DaviSpec* spec) const noexcept { davi_spec_free(spec); }
};

class Spec {
public:
    static Spec for_task(const std::string& task) {
        DaviSpec* raw = nullptr;
        DaviStatus st = davi_spec_new_task(task.c_str(), &raw);
        if (st != DAVI_STATUS_OK) throw Error(st, "spec for task '" + task + "'");
        return Spec(raw);
    }
    static Spec parse(const std::string& text) {
        DaviSpec* raw = nullptr;
        char err[512] = "";
        DaviStatus st = davi_spec_parse(text.c_str(), &raw, err, sizeof err);
        if (st != DAVI_STATUS_OK) throw Error(st, std::string("spec: ") + err);
        return Spec(raw);
    }
    explicit Spec(DaviSpec* raw) : spec_(raw) {}
    const DaviSpec* get() const noexcept { return spec_.get(); }
    std::string kind() const { return davi_spec_kind(spec_.get()); }
    std::pair<uint32_t, uint32_t> output_size(uint32_t width, uint32_t height) const {
        uint32_t w = 0, h = 0;
        DaviStatus st = davi_output_size(spec_.get(), width, height, &w, &h);
        if (st != DAVI_STATUS_OK) throw Error(st, "output size");
        return {w, h};
    }

private:
    std::unique_ptr<DaviSpec, SpecDeleter> spec_;
};

class Context {
public:
    // The installed default model of a task, or a model file if `model` is not empty.
    Context(const std::string& task, const std::string& model, const std::string& device) {
        DaviContextOptions options;
        davi_context_options_init(&options, sizeof options);
        if (model.empty()) options.task = task.c_str();
        else options.model_path = model.c_str();
        options.device = device.c_str();
        DaviContext* raw = nullptr;
        char err[1024] = "";
        DaviStatus st = davi_context_new(&options, &raw, err, sizeof err);
        if (st != DAVI_STATUS_OK) throw Error(st, std::string("loading the model: ") + err);
        ctx_.reset(raw);
    }

    // The operator the model was trained for, if the model file says.
    std::optional<Spec> trained_spec() const {
        DaviSpec* raw = nullptr;
        DaviStatus st = davi_context_spec(ctx_.get(), &raw);
        if (st == DAVI_STATUS_NOT_FOUND) return std::nullopt;
        if (st != DAVI_STATUS_OK) throw Error(st, last_error());
        return Spec(raw);
    }

    std::string last_error() const {
        size_t n = 0;
        davi_context_last_error(ctx_.get(), nullptr, 0, &n);
        std::string text(n + 1, '\0');
        davi_context_last_error(ctx_.get(), text.data(), text.size(), &n);
        text.resize(n);
        return text;
    }

    // Restore `input` into `output`. `progress(fraction)` runs on this thread between tiles;
    // return false to cancel.
    void restore(const DaviImage& input, DaviImage& output, const Spec& spec, uint32_t tile,
                 const std::function<bool(float)>& progress) {
        struct Call {
            const std::function<bool(float)>* progress;
            std::exception_ptr error;
        } call{&progress, nullptr};
        DaviRestoreOptions options;
        davi_restore_options_init(&options, sizeof options);
        if (tile != 0) options.tile = tile;
        options.user_data = &call;
        options.progress = [](void* user_data, float fraction) -> int32_t {
            auto* c = static_cast<Call*>(user_data);
            try {
                return (*c->progress)(fraction) ? 0 : 1;
            } catch (...) {
                c->error = std::current_exception();
                return 1;
            }
        };
        DaviStatus st = davi_restore(ctx_.get(), &input, &output, spec.get(), &options);
        if (call.error) std::rethrow_exception(call.error);
        if (st != DAVI_STATUS_OK) throw Error(st, "restoring: " + last_error());
    }

private:
    std::unique_ptr<DaviContext, ContextDeleter> ctx_;
};

// Interleaved float pixels stored bottom-up: the top row is the last one in memory.
struct FloatImage {
    uint32_t width = 0, height = 0, channels = 0;
    std::vector<float> samples;

    FloatImage(uint32_t w, uint32_t h, uint32_t c)
        : width(w), height(h), channels(c), samples(size_t(w) * h * c) {}
    size_t row_len() const { return size_t(width) * channels; }
    float* row(uint32_t y) { return samples.data() + size_t(height - 1 - y) * row_len(); }
    DaviImage describe() {
        DaviImage d{};
        d.struct_size = sizeof d;
        d.width = width;
        d.height = height;
        d.sample_type = DAVI_SAMPLE_TYPE_F32;
        d.layout = channels == 1 ? DAVI_CHANNEL_LAYOUT_GRAY : DAVI_CHANNEL_LAYOUT_RGB;
        d.row_stride = -static_cast<ptrdiff_t>(row_len() * sizeof(float));
        d.data = row(0);
        return d;
    }
};

}  // namespace davi

namespace {

struct Pnm {
    uint32_t width = 0, height = 0, channels = 0;
    std::vector<unsigned char> data;  // 8-bit samples, top-down
};

unsigned long read_number(std::istream& in) {
    int c = in.get();
    while (c == '#' || std::isspace(c)) {
        if (c == '#')
            while (c != '\n' && c != EOF) c = in.get();
        c = in.get();
    }
    unsigned long v = 0;
    if (!std::isdigit(c)) throw std::runtime_error("bad PNM header");
    while (std::isdigit(c)) {
        v = v * 10 + static_cast<unsigned long>(c - '0');
        if (v > 1000000ul) throw std::runtime_error("PNM dimension too large");
        c = in.get();
    }
    return v;
}

Pnm read_pnm(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open " + path);
    char magic[2];
    in.read(magic, 2);
    if (!in || magic[0] != 'P' || (magic[1] != '5' && magic[1] != '6'))
        throw std::runtime_error(path + ": not a binary PGM/PPM");
    Pnm p;
    p.channels = magic[1] == '5' ? 1 : 3;
    p.width = static_cast<uint32_t>(read_number(in));
    p.height = static_cast<uint32_t>(read_number(in));
    if (read_number(in) != 255) throw std::runtime_error(path + ": only 8-bit PNM is supported");
    p.data.resize(size_t(p.width) * p.height * p.channels);
    in.read(reinterpret_cast<char*>(p.data.data()), static_cast<std::streamsize>(p.data.size()));
    if (!in) throw std::runtime_error(path + ": truncated");
    return p;
}

void write_pnm(const std::string& path, const Pnm& p) {
    std::ofstream out(path, std::ios::binary);
    out << (p.channels == 1 ? "P5" : "P6") << "\n" << p.width << " " << p.height << "\n255\n";
    out.write(reinterpret_cast<const char*>(p.data.data()), static_cast<std::streamsize>(p.data.size()));
    if (!out) throw std::runtime_error("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
    std::string task = "denoise", model, device = "auto", in_path, out_path;
    uint32_t tile = 0;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        bool value = i + 1 < argc;
        if (a == "--task" && value) task = argv[++i];
        else if (a == "--model" && value) model = argv[++i];
        else if (a == "--device" && value) device = argv[++i];
        else if (a == "--tile" && value) tile = static_cast<uint32_t>(std::stoul(argv[++i]));
        else if (in_path.empty() && a.rfind("--", 0) != 0) in_path = a;
        else if (out_path.empty() && a.rfind("--", 0) != 0) out_path = a;
        else {
            std::cerr << "usage: restore_cpp [--task T | --model FILE] [--device D] [--tile N] IN.pnm OUT.pnm\n";
            return 2;
        }
    }
    if (out_path.empty()) {
        std::cerr << "usage: restore_cpp [--task T | --model FILE] [--device D] [--tile N] IN.pnm OUT.pnm\n";
        return 2;
    }
    try {
        Pnm in = read_pnm(in_path);
        davi::Context ctx(task, model, device);
        std::optional<davi::Spec> trained = ctx.trained_spec();
        davi::Spec spec = trained ? std::move(*trained) : davi::Spec::for_task(task);
        auto [ow, oh] = spec.output_size(in.width, in.height);
        uint32_t out_channels = spec.kind() == "colorization" ? 3 : in.channels;

        davi::FloatImage src(in.width, in.height, in.channels), dst(ow, oh, out_channels);
        for (uint32_t y = 0; y < in.height; ++y)
            for (size_t i = 0; i < src.row_len(); ++i)
                src.row(y)[i] = in.data[y * src.row_len() + i] / 255.0f;
        DaviImage input = src.describe(), output = dst.describe();

        unsigned calls = 0;
        float last = 0.0f;
        ctx.restore(input, output, spec, tile, [&](float fraction) {
            ++calls;
            last = fraction;
            return true;
        });

        Pnm out;
        out.width = ow;
        out.height = oh;
        out.channels = out_channels;
        out.data.resize(size_t(ow) * oh * out_channels);
        for (uint32_t y = 0; y < oh; ++y)
            for (size_t i = 0; i < dst.row_len(); ++i)
                out.data[y * dst.row_len() + i] =
                    static_cast<unsigned char>(std::lround(dst.row(y)[i] * 255.0f));
        write_pnm(out_path, out);
        std::printf("restored %s: %ux%u -> %ux%u, %u progress calls, last %.3f\n", spec.kind().c_str(),
                    unsigned(in.width), unsigned(in.height), unsigned(ow), unsigned(oh), calls,
                    double(last));
        return 0;
    } catch (const davi::Error& e) {
        std::cerr << "restore_cpp: " << e.what() << "\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "restore_cpp: " << e.what() << "\n";
        return 1;
    }
}
