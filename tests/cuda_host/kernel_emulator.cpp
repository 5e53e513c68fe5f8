// Any kernel of a plain CUDA source (no inline PTX, no tensor cores), unchanged, run on the
// CPU through cuda_on_host.h: a test without a GPU. tests/test_cuda_emulated.py builds it
// with the source pasted in (kernels_emulated.inc) and a table of the kernels it names
// (kernel_table.inc: `{"name", adapt(name)},` lines), then launches them the way the
// Python wrappers in minivlm/kernels_cuda/ do, through a stand-in for CuPy's RawKernel.
//
// Usage: kernel_emulator DIR KERNEL GRID_X GRID_Y BLOCK_X BLOCK_Y
// DIR/arguments.txt holds the kernel's arguments in order, one a line:
//   array float32|float64|int32|int64 NAME   a buffer: raw values in DIR/NAME.bin, written back
//   scalar float32|float64|int32|int64 VALUE
// Each argument's kind must be the kernel's parameter type (a float32 array for a float*,
// an int32 scalar for an int, ...): a wrapper that passes anything else fails here, where
// CuPy would pass the bytes on without a word.
#include <map>
#include <sstream>
#include <utility>

#include "cuda_on_host.h"

struct Argument {
    std::string kind, type, file;      // "array" or "scalar"; float32, float64, int32, int64
    std::vector<unsigned char> bytes;  // the buffer, or the scalar's value
};

// The kind and type of argument a kernel parameter takes.
template <typename T> struct ParameterKind;
template <> struct ParameterKind<float> { static constexpr const char* type = "float32"; };
template <> struct ParameterKind<double> { static constexpr const char* type = "float64"; };
template <> struct ParameterKind<int> { static constexpr const char* type = "int32"; };
template <> struct ParameterKind<long long> { static constexpr const char* type = "int64"; };

template <typename T> struct Parameter {  // a scalar parameter
    using Value = std::remove_cv_t<T>;
    static constexpr const char* kind = "scalar";
    static constexpr const char* type = ParameterKind<Value>::type;
    static T from(Argument& argument) {
        Value value;
        std::memcpy(&value, argument.bytes.data(), sizeof(Value));
        return value;
    }
};
template <typename T> struct Parameter<T*> {  // a buffer parameter
    using Value = std::remove_cv_t<T>;
    static constexpr const char* kind = "array";
    static constexpr const char* type = ParameterKind<Value>::type;
    static T* from(Argument& argument) { return reinterpret_cast<T*>(argument.bytes.data()); }
};

template <typename P> static P argument_as(std::vector<Argument>& arguments, size_t index) {
    Argument& argument = arguments[index];
    if (argument.kind != Parameter<P>::kind || argument.type != Parameter<P>::type) {
        std::fprintf(stderr, "argument %zu is a %s %s, the kernel takes a %s %s\n", index,
                     argument.type.c_str(), argument.kind.c_str(), Parameter<P>::type,
                     Parameter<P>::kind);
        std::exit(3);
    }
    return Parameter<P>::from(argument);
}

using Launcher = std::function<void(std::vector<Argument>&)>;

// A launcher that calls `kernel` with the arguments converted to its parameter types.
template <typename... Params> static Launcher adapt(void (*kernel)(Params...)) {
    return [kernel](std::vector<Argument>& arguments) {
        if (arguments.size() != sizeof...(Params)) {
            std::fprintf(stderr, "%zu arguments for a kernel of %zu parameters\n",
                         arguments.size(), sizeof...(Params));
            std::exit(3);
        }
        [&]<size_t... I>(std::index_sequence<I...>) {
            kernel(argument_as<Params>(arguments, I)...);
        }(std::index_sequence_for<Params...>{});
    };
}

#include "kernels_emulated.inc"

static const std::map<std::string, Launcher> KERNELS = {
#include "kernel_table.inc"
};

static size_t type_size(const std::string& type) {
    if (type == "float32" || type == "int32") return 4;
    if (type == "float64" || type == "int64") return 8;
    std::fprintf(stderr, "unknown argument type %s\n", type.c_str());
    std::exit(2);
}

static std::vector<Argument> read_arguments(const std::string& dir) {
    std::ifstream list(dir + "/arguments.txt");
    std::vector<Argument> arguments;
    for (std::string line; std::getline(list, line);) {
        std::istringstream words(line);
        Argument argument;
        std::string value;
        words >> argument.kind >> argument.type >> value;
        const size_t size = type_size(argument.type);
        if (argument.kind == "array") {
            argument.file = value;
            argument.bytes = read_buffer<unsigned char>(dir, value);
        } else {
            argument.bytes.resize(size);
            if (argument.type == "float32") {
                const float number = std::strtof(value.c_str(), nullptr);
                std::memcpy(argument.bytes.data(), &number, size);
            } else if (argument.type == "float64") {
                const double number = std::strtod(value.c_str(), nullptr);
                std::memcpy(argument.bytes.data(), &number, size);
            } else if (argument.type == "int32") {
                const int number = std::atoi(value.c_str());
                std::memcpy(argument.bytes.data(), &number, size);
            } else {
                const long long number = std::atoll(value.c_str());
                std::memcpy(argument.bytes.data(), &number, size);
            }
        }
        arguments.push_back(std::move(argument));
    }
    return arguments;
}

int main(int argc, char** argv) {
    if (argc != 7) {
        std::fprintf(stderr, "usage: %s DIR KERNEL GRID_X GRID_Y BLOCK_X BLOCK_Y\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1], name = argv[2];
    const auto number = [&](int at) { return static_cast<unsigned>(std::atoi(argv[at])); };
    const Dim3 grid{number(3), number(4), 1}, block{number(5), number(6), 1};
    const auto found = KERNELS.find(name);
    if (found == KERNELS.end()) {
        std::fprintf(stderr, "no kernel named %s in kernel_table.inc\n", name.c_str());
        return 2;
    }
    std::vector<Argument> arguments = read_arguments(dir);
    launch(grid, block, 0, [&] { found->second(arguments); });
    for (const Argument& argument : arguments) {
        if (argument.kind != "array") continue;
        std::ofstream file(dir + "/" + argument.file + ".bin", std::ios::binary | std::ios::trunc);
        file.write(reinterpret_cast<const char*>(argument.bytes.data()),
                   static_cast<std::streamsize>(argument.bytes.size()));
    }
    return 0;
}
