// Minimal CPython module so that setup.py's extension is importable as achilles_fast._C. Importing it runs the
// static TORCH_LIBRARY_IMPL registrations of the CPU (and, when built, CUDA) kernels; it exposes no functions.
#include <Python.h>

static struct PyModuleDef achilles_fast_C_module = {PyModuleDef_HEAD_INIT, "_C",
                                                    "achilles_fast compiled ops (registered with torch.library)",
                                                    -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&achilles_fast_C_module); }
