/* libcublas.so.12 for faiss-cuda on a machine with CUDA 13 only (scripts/gpu/prepare_faiss_cuda.sh):
 * the eight cuBLAS 12 entry points FAISS calls, forwarded to cuBLAS 13 (same prototypes
 * and enums). For measuring on a lent GPU machine, not for production. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
typedef void *H;
static void *lib;
static void *real(const char *name) {
    if (!lib) lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_GLOBAL);
    if (!lib) { fprintf(stderr, "cublas shim: %s\n", dlerror()); abort(); }
    void *f = dlsym(lib, name);
    if (!f) { fprintf(stderr, "cublas shim: no %s\n", name); abort(); }
    return f;
}
int cublasCreate_v2(H *h) { return ((int (*)(H *))real("cublasCreate_v2"))(h); }
int cublasDestroy_v2(H h) { return ((int (*)(H))real("cublasDestroy_v2"))(h); }
int cublasGetMathMode(H h, int *m) { return ((int (*)(H, int *))real("cublasGetMathMode"))(h, m); }
int cublasSetMathMode(H h, int m) { return ((int (*)(H, int))real("cublasSetMathMode"))(h, m); }
int cublasSetStream_v2(H h, void *s) { return ((int (*)(H, void *))real("cublasSetStream_v2"))(h, s); }
int cublasSgemmEx(H h, int ta, int tb, int m, int n, int k, const float *al, const void *A, int At, int lda,
                  const void *B, int Bt, int ldb, const float *be, void *C, int Ct, int ldc) {
    return ((int (*)(H, int, int, int, int, int, const float *, const void *, int, int, const void *, int, int,
                     const float *, void *, int, int))real("cublasSgemmEx"))(h, ta, tb, m, n, k, al, A, At, lda, B, Bt, ldb, be, C, Ct, ldc);
}
int cublasGemmEx(H h, int ta, int tb, int m, int n, int k, const void *al, const void *A, int At, int lda,
                 const void *B, int Bt, int ldb, const void *be, void *C, int Ct, int ldc, int ct, int algo) {
    return ((int (*)(H, int, int, int, int, int, const void *, const void *, int, int, const void *, int, int,
                     const void *, void *, int, int, int, int))real("cublasGemmEx"))(h, ta, tb, m, n, k, al, A, At, lda, B, Bt, ldb, be, C, Ct, ldc, ct, algo);
}
int cublasGemmStridedBatchedEx(H h, int ta, int tb, int m, int n, int k, const void *al, const void *A, int At, int lda,
                               long long sA, const void *B, int Bt, int ldb, long long sB, const void *be, void *C,
                               int Ct, int ldc, long long sC, int bc, int ct, int algo) {
    return ((int (*)(H, int, int, int, int, int, const void *, const void *, int, int, long long, const void *, int, int,
                     long long, const void *, void *, int, int, long long, int, int, int))real("cublasGemmStridedBatchedEx"))(
        h, ta, tb, m, n, k, al, A, At, lda, sA, B, Bt, ldb, sB, be, C, Ct, ldc, sC, bc, ct, algo);
}
