/* A stand-in CUDA driver for the GPU runtime's error paths (tests/gpu_fixtures.rs):
 * the entry points reformc-gpu-runtime resolves, answering as a driver would
 * for a machine whose behaviour the environment chooses. It runs no kernel.
 *   FAKE_CUDA_DEVICES  device count (default 1)
 *   FAKE_CUDA_CC       compute capability as major*10+minor (default 90)
 *   FAKE_CUDA_OOM      when set, every managed allocation is out of memory
 *   FAKE_CUDA_BAD_PTX  when set, loading a module fails as invalid PTX
 *   FAKE_CUDA_LOG      a file each kernel name looked up is appended to, a line each
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int env_int(const char *name, int dflt) {
  const char *v = getenv(name);
  return v ? atoi(v) : dflt;
}

int cuInit(unsigned flags) { (void)flags; return 0; }
int cuDeviceGetCount(int *n) { *n = env_int("FAKE_CUDA_DEVICES", 1); return 0; }
int cuDeviceGet(int *d, int i) { *d = i; return 0; }
int cuDeviceGetAttribute(int *v, int attr, int dev) {
  (void)dev;
  int cc = env_int("FAKE_CUDA_CC", 90);
  *v = attr == 75 ? cc / 10 : attr == 76 ? cc % 10 : 0;
  return 0;
}
int cuDeviceGetName(char *name, int len, int dev) {
  (void)dev;
  strncpy(name, "Fake GPU", (size_t)len);
  return 0;
}
static int context;
int cuDevicePrimaryCtxRetain(void **ctx, int dev) { (void)dev; *ctx = &context; return 0; }
int cuCtxSetCurrent(void *ctx) { (void)ctx; return 0; }
static int module;
int cuModuleLoadData(void **m, const void *image) {
  (void)image;
  if (getenv("FAKE_CUDA_BAD_PTX")) return 218;
  *m = &module;
  return 0;
}
int cuModuleUnload(void *m) { (void)m; return 0; }
static int function;
int cuModuleGetFunction(void **f, void *m, const char *name) {
  (void)m;
  const char *log = getenv("FAKE_CUDA_LOG");
  FILE *out = log ? fopen(log, "a") : NULL;
  if (out) {
    fprintf(out, "%s\n", name);
    fclose(out);
  }
  *f = &function;
  return 0;
}
int cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                   unsigned bz, unsigned smem, void *stream, void **params, void **extra) {
  (void)f; (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)smem;
  (void)stream; (void)params; (void)extra;
  return 0;
}
static int stream;
int cuStreamCreate(void **s, unsigned flags) { (void)flags; *s = &stream; return 0; }
int cuStreamSynchronize(void *s) { (void)s; return 0; }
int cuStreamDestroy_v2(void *s) { (void)s; return 0; }
int cuMemAllocManaged(unsigned long long *p, size_t size, unsigned flags) {
  (void)flags;
  if (getenv("FAKE_CUDA_OOM")) return 2;
  *p = (unsigned long long)(size_t)malloc(size);
  return 0;
}
int cuMemFree_v2(unsigned long long p) { free((void *)(size_t)p); return 0; }
int cuGetErrorName(int e, const char **s) {
  *s = e == 2 ? "CUDA_ERROR_OUT_OF_MEMORY" : e == 218 ? "CUDA_ERROR_INVALID_PTX" : "CUDA_ERROR_UNKNOWN";
  return 0;
}
int cuGetErrorString(int e, const char **s) {
  *s = e == 2 ? "out of memory" : e == 218 ? "a PTX JIT compilation failed" : "unknown error";
  return 0;
}
